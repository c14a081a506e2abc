//! Verifying a restored directory against its snapshot, entry by entry, byte by byte.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cairn_formats::{Entry, Extent, Manifest, Meta, Node};
use rayon::prelude::*;

use crate::meta::{is_root, read_meta, XattrsOf};
use crate::progress::Progress;
use crate::tree::SnapshotTrees;
use crate::volume::dir::Stat;
use crate::volume::is_volume_file;
use crate::Result;

/// What a verification found.
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    /// Entries compared.
    pub entries: u64,
    /// File bytes read and hashed.
    pub bytes: u64,
    /// Differences, one line each.
    pub mismatches: Vec<String>,
}

/// Compares `dir` with the snapshot: every entry's type, content (each chunk re-hashed), symlink
/// target, permission bits, mtime, extended attributes, owner (when `owners`), hard-link groups,
/// and that nothing extra is there.
///
/// # Errors
/// Only failures to load the snapshot's trees; differences and unreadable local entries are
/// reported as mismatches.
pub fn verify_dir(
    trees: &SnapshotTrees,
    manifest: &Manifest,
    dir: &Path,
    owners: Option<bool>,
    progress: &Progress,
) -> Result<VerifyReport> {
    let owners = owners.unwrap_or_else(is_root);
    let mut report = VerifyReport::default();
    let mut files: Vec<(PathBuf, Entry)> = Vec::new();
    let mut expected: HashSet<Vec<u8>> = HashSet::new();
    let mut groups: HashMap<u64, (PathBuf, u64)> = HashMap::new();
    let mut mismatches = Vec::new();
    compare_meta(dir, &manifest.root_meta, false, owners, &mut mismatches);
    trees.walk(&manifest.root, &mut |rel, e| {
        report.entries += 1;
        expected.insert(rel.to_vec());
        let path = dir.join(OsStr::from_bytes(rel));
        let md = match fs::symlink_metadata(&path) {
            Ok(md) => md,
            Err(err) => {
                mismatches.push(format!("{}: {err}", show(rel)));
                return Ok(());
            }
        };
        let ft = md.file_type();
        let type_ok = match &e.node {
            Node::File { .. } => ft.is_file(),
            Node::Dir { .. } => ft.is_dir(),
            Node::Symlink { .. } => ft.is_symlink(),
            Node::Fifo => ft.is_fifo(),
            Node::CharDevice { rdev } => ft.is_char_device() && md.rdev() == *rdev,
            Node::BlockDevice { rdev } => ft.is_block_device() && md.rdev() == *rdev,
        };
        if !type_ok {
            mismatches.push(format!("{}: wrong type", show(rel)));
            return Ok(());
        }
        match &e.node {
            Node::Symlink { target } => match fs::read_link(&path) {
                Ok(t) if t.as_os_str().as_bytes() == target.as_slice() => {}
                _ => mismatches.push(format!("{}: symlink target differs", show(rel))),
            },
            Node::File { size, link_group, .. } => {
                if md.len() != *size {
                    mismatches.push(format!("{}: size {} expected {size}", show(rel), md.len()));
                    return Ok(());
                }
                if let Some(g) = link_group {
                    let key = (md.dev(), md.ino());
                    match groups.get(g) {
                        Some((first, ino)) if *ino != key.1 => {
                            mismatches.push(format!("{}: not hard-linked to {}", show(rel), first.display()))
                        }
                        Some(_) => {}
                        None => {
                            groups.insert(*g, (path.clone(), key.1));
                        }
                    }
                }
                files.push((path.clone(), e.clone()));
            }
            _ => {}
        }
        compare_meta(&path, &e.meta, ft.is_symlink(), owners, &mut mismatches);
        Ok(())
    })?;

    // Content, in parallel.
    let found = Mutex::new(Vec::new());
    let bytes: u64 = files
        .par_iter()
        .map(
            |(path, e)| match check_content(trees.crypt(), path, e, progress) {
                Ok(n) => n,
                Err(m) => {
                    found.lock().expect("invariant: lock not poisoned").push(m);
                    0
                }
            },
        )
        .sum();
    mismatches.extend(found.into_inner().expect("invariant: lock not poisoned"));
    report.bytes = bytes;

    // Nothing extra.
    let mut stack = vec![(dir.to_path_buf(), Vec::new())];
    while let Some((d, rel)) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for ent in rd.flatten() {
            let name = ent.file_name();
            let mut r = rel.clone();
            if !r.is_empty() {
                r.push(b'/');
            }
            r.extend_from_slice(name.as_bytes());
            if rel.is_empty() && is_volume_file(name.as_bytes()) {
                continue;
            }
            if !expected.contains(&r) {
                mismatches.push(format!("{}: not in the snapshot", show(&r)));
            } else if ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push((ent.path(), r));
            }
        }
    }
    mismatches.sort();
    report.mismatches = mismatches;
    Ok(report)
}

fn show(rel: &[u8]) -> String {
    String::from_utf8_lossy(rel).into_owned()
}

fn compare_meta(path: &Path, want: &Meta, symlink: bool, owners: bool, out: &mut Vec<String>) {
    let Ok(md) = fs::symlink_metadata(path) else {
        return;
    };
    let mut ignore = |_: String| {};
    // A drill's scratch directory, which nothing else writes: paths are fine here.
    let got = read_meta(&Stat::from(&md), XattrsOf::Path(path), path, &mut ignore);
    let p = path.display();
    if !symlink && got.mode != want.mode {
        out.push(format!("{p}: mode {:o} expected {:o}", got.mode, want.mode));
    }
    if got.mtime != want.mtime {
        out.push(format!(
            "{p}: mtime {}.{:09} expected {}.{:09}",
            got.mtime.secs, got.mtime.nanos, want.mtime.secs, want.mtime.nanos
        ));
    }
    if owners && (got.uid, got.gid) != (want.uid, want.gid) {
        out.push(format!(
            "{p}: owner {}:{} expected {}:{}",
            got.uid, got.gid, want.uid, want.gid
        ));
    }
    if !symlink {
        let user = |m: &Meta| -> Vec<(Vec<u8>, Vec<u8>)> {
            m.xattrs
                .iter()
                .filter(|x| owners || x.name.starts_with(b"user."))
                .map(|x| (x.name.clone(), x.value.clone()))
                .collect()
        };
        if user(&got) != user(want) {
            out.push(format!("{p}: extended attributes differ"));
        }
    }
}

/// Re-hashes a file's content extent by extent.
fn check_content(
    crypt: &crate::keys::Crypt,
    path: &Path,
    e: &Entry,
    progress: &Progress,
) -> std::result::Result<u64, String> {
    let Node::File { extents, .. } = &e.node else {
        return Ok(0);
    };
    let p = path.display();
    let mut f = File::open(path).map_err(|err| format!("{p}: {err}"))?;
    let mut buf = Vec::new();
    let mut pos = 0u64;
    let mut read = 0u64;
    for x in extents {
        f.seek(SeekFrom::Start(pos))
            .map_err(|err| format!("{p}: {err}"))?;
        buf.clear();
        (&mut f)
            .take(x.len())
            .read_to_end(&mut buf)
            .map_err(|err| format!("{p}: {err}"))?;
        if buf.len() as u64 != x.len() {
            return Err(format!("{p}: short read at {pos}"));
        }
        match x {
            Extent::Chunk { id, .. } => {
                if crypt.blob_id(&buf) != *id {
                    return Err(format!("{p}: content differs at bytes {pos}..{}", pos + x.len()));
                }
            }
            Extent::Hole { .. } => {
                if buf.iter().any(|b| *b != 0) {
                    return Err(format!("{p}: hole at {pos} holds data"));
                }
            }
        }
        read += x.len();
        Progress::add(&progress.bytes, x.len());
        pos += x.len();
    }
    Ok(read)
}
