//! The end of a restore: hard links and metadata (through descriptors), then the check that what
//! was restored is what is there before the marker may say so.
//!
//! Each entry's inode and ctime right after the restore's last operation on it are recorded
//! ([`Touched`]). The check walks the whole target by descriptor: an entry the restore touched
//! must still be that inode with that ctime, and any other entry must be older than the restore
//! (every create, write, rename, chmod and unlink sets a ctime, and nothing sets one back). So a
//! swap, a write or a new entry made while the restore ran fails the restore, which leaves no
//! marker; a change after the check's start instant is a local change to the next `initctl
//! restore`, because that instant becomes the marker's `synced_ns`.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::plan::{open_parent, split, Plan};
use crate::meta::{apply_meta_at, apply_meta_fd};
use crate::volume::dir::{is_mount, Dir, Stat};
use crate::volume::is_volume_file;
use crate::{Error, Result};

/// What the restore left at each path it touched (relative to the target): inode and ctime (ns)
/// right after its last operation there.
pub(super) type Touched = HashMap<PathBuf, (u64, i128)>;

/// Creates the plan's hard links and applies the metadata of symlinks, special files and
/// directories (in parallel, directories deepest first; files got theirs when their content was
/// complete, `done`). Returns what each touched entry is now.
pub(super) fn links_and_metadata(
    root: &Dir,
    target: &Path,
    plan: &Plan,
    done: Vec<(usize, Stat)>,
    as_root: bool,
) -> Result<Touched> {
    let io = |rel: &Path| {
        let path = target.join(rel);
        move |e: std::io::Error| Error::io(path, e)
    };
    let in_parent = |rel: &Path, op: &dyn Fn(&Dir) -> std::io::Result<Stat>| -> Result<Stat> {
        match open_parent(root, rel).map_err(io(rel))? {
            Some(d) => op(&d),
            None => op(root),
        }
        .map_err(io(rel))
    };
    if done.len() != plan.files.iter().filter(|f| f.link_to.is_none()).count() {
        return Err(Error::Invalid(
            "restore: a file's content was not completed (a chunk write went missing)".into(),
        ));
    }
    let mut touched: Vec<(PathBuf, Stat)> = done
        .into_iter()
        .map(|(i, st)| (plan.files[i].rel.clone(), st))
        .collect();
    // Hard links last among files: linking moves the inode's ctime, so the inode is recorded as
    // the last link left it, under every one of its names.
    let mut linked: HashMap<usize, Stat> = HashMap::new();
    for f in plan.files.iter().filter(|f| f.link_to.is_some()) {
        let first_idx = f.link_to.expect("invariant: filtered on link_to");
        let first = &plan.files[first_idx].rel;
        let (_, first_name) = split(first);
        let from = open_parent(root, first).map_err(io(first))?;
        let from = from.as_ref().unwrap_or(root);
        let (_, name) = split(&f.rel);
        let st = in_parent(&f.rel, &|d| {
            d.remove(name)?;
            d.link_from(from, first_name, name)?;
            d.stat_at(name)
        })?;
        linked.insert(first_idx, st);
    }
    let others: Vec<(PathBuf, Stat)> = plan
        .others
        .par_iter()
        .map(|(rel, meta, kind)| {
            let (_, name) = split(rel);
            let st = in_parent(rel, &|d| {
                apply_meta_at(d, name, meta, *kind, as_root)?;
                d.stat_at(name)
            })?;
            Ok((rel.clone(), st))
        })
        .collect::<Result<_>>()?;
    touched.extend(others);
    for (rel, meta) in plan.dirs.iter().rev() {
        let d = root.open_dir(rel).map_err(io(rel))?;
        apply_meta_fd(d.fd(), meta, as_root).map_err(io(rel))?;
        touched.push((rel.clone(), d.stat().map_err(io(rel))?));
    }
    let mut touched: Touched = touched
        .into_iter()
        .map(|(rel, st)| (rel, (st.ino, st.ctime_ns())))
        .collect();
    // A hard-linked inode as its last link left it, under every name.
    for (i, f) in plan.files.iter().enumerate() {
        let first = f.link_to.unwrap_or(i);
        if let Some(st) = linked.get(&first) {
            touched.insert(f.rel.clone(), (st.ino, st.ctime_ns()));
        }
    }
    Ok(touched)
}

/// Walks the target and checks that every entry is what the restore left (see the module docs):
/// touched entries unchanged since, the others older than `before_ns`. Returns the `lstat` of
/// every regular file when `files` (for the stat cache).
///
/// # Errors
/// [`Error::Invalid`] naming the first entry that changed while the restore ran.
pub(super) fn check_target(
    root: &Dir,
    target: &Path,
    touched: &Touched,
    before_ns: i128,
    files: bool,
) -> Result<HashMap<PathBuf, Stat>> {
    let dev = root.stat().map_err(|e| Error::io(target, e))?.dev;
    let names: Vec<OsString> = root
        .names()
        .map_err(|e| Error::io(target, e))?
        .into_iter()
        .filter(|n| !is_volume_file(n.as_bytes()))
        .collect();
    let c = Check {
        target,
        touched,
        before_ns,
        dev,
        files,
        seen: std::sync::atomic::AtomicUsize::new(0),
    };
    let found: Vec<Vec<(PathBuf, Stat)>> = names
        .par_iter()
        .map(|n| c.entry(root, n, PathBuf::from(n), 0))
        .collect::<Result<_>>()?;
    // Every entry the restore left must still be there (a removal inside a directory whose
    // metadata came later moves no ctime the check would see).
    let seen = c.seen.load(std::sync::atomic::Ordering::Relaxed);
    if seen != touched.len() {
        return Err(Error::Invalid(format!(
            "{}: {} restored entries were removed while it was being restored; the restore is not marked \
             complete (run it again once nothing else writes the target)",
            target.display(),
            touched.len() - seen.min(touched.len())
        )));
    }
    Ok(found.into_iter().flatten().collect())
}

struct Check<'a> {
    target: &'a Path,
    touched: &'a Touched,
    before_ns: i128,
    dev: u64,
    files: bool,
    /// Touched entries found.
    seen: std::sync::atomic::AtomicUsize,
}

impl Check<'_> {
    fn changed(&self, rel: &Path, why: &str) -> Error {
        Error::Invalid(format!(
            "{}: {why} while it was being restored; the restore is not marked complete (run it \
             again once nothing else writes the target)",
            self.target.join(rel).display()
        ))
    }

    fn entry(
        &self,
        parent: &Dir,
        name: &OsString,
        rel: PathBuf,
        depth: usize,
    ) -> Result<Vec<(PathBuf, Stat)>> {
        let st = match parent.stat_at(name) {
            Ok(st) => st,
            Err(_) => return Err(self.changed(&rel, "removed")),
        };
        match self.touched.get(&rel) {
            Some(&(ino, _)) if ino != st.ino => return Err(self.changed(&rel, "replaced")),
            Some(&(_, ctime)) if ctime != st.ctime_ns() => return Err(self.changed(&rel, "changed")),
            Some(_) => {
                self.seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            None if st.ctime_ns() >= self.before_ns => return Err(self.changed(&rel, "created or changed")),
            None => {}
        }
        let mut out = Vec::new();
        if st.is_file() && self.files {
            out.push((rel.clone(), st));
        }
        // Nothing a restore writes is on another mount or deeper than a backup walks.
        if st.is_dir() && st.dev == self.dev && depth < crate::backup::MAX_DEPTH {
            let sub = match parent.open_dir(Path::new(name)) {
                Ok(d) => d,
                Err(e) if is_mount(&e) => return Ok(out),
                Err(_) => return Err(self.changed(&rel, "replaced")),
            };
            let names = sub.names().map_err(|e| Error::io(self.target.join(&rel), e))?;
            let below: Vec<Vec<(PathBuf, Stat)>> = names
                .par_iter()
                .map(|n| self.entry(&sub, n, rel.join(n), depth + 1))
                .collect::<Result<_>>()?;
            out.extend(below.into_iter().flatten());
        }
        Ok(out)
    }
}
