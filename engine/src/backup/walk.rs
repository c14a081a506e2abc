//! The backup's walk of the workspace: every directory is read through a descriptor opened from
//! its parent's (see `volume/dir.rs`), every entry is `lstat`ed where it was listed, and what is
//! opened is checked to be what was listed. An entry that turns into something else while it is
//! read (a file swapped for a symlink, a directory renamed away) counts as "changed while being
//! read": it is looked at again, and left out with a warning if it keeps changing, never stored
//! as the content of whatever took its place. Nothing is followed, nothing on another mount is
//! entered, and special files are never opened.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_formats::{BlobId, Entry, Extent, Meta, Node, PackKind, Tree};
use rayon::prelude::*;
use rustix::fs::FileType;

use super::{inc, Session, READ_ATTEMPTS};
use crate::chunker::{chunk_reader, chunk_slice, ChunkReadError};
use crate::index::StatEntry;
use crate::meta::{now_ns, read_meta, XattrsOf};
use crate::progress::Progress;
use crate::volume::dir::{fstat, is_mount, is_not_dir, same_entry, Dir, OpenedFile, Stat};
use crate::volume::is_volume_file;
use crate::{Error, Result};

/// Margin for the file system's timestamp tick (jiffies: 1-10 ms) when deciding whether a file
/// was written while it was read.
const HOT_NS: i128 = 50_000_000;
/// Directories nested deeper than this are left out with a warning. Walking by descriptors has no
/// `PATH_MAX` to stop a hostile tree; this bounds the walk's stack and its open descriptors.
pub const MAX_DEPTH: usize = 400;

/// How one look at an entry ended.
enum Step {
    Done(Entry),
    /// Not there any more, or left out with a warning already given.
    Gone,
    /// It changed while being read (the reason, for the warning if it keeps changing).
    Changed(String),
}

impl Session {
    /// The path of `rel` for messages.
    fn show(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.source.clone()
        } else {
            self.source.join(OsStr::from_bytes(rel))
        }
    }

    /// Backs up the root directory `root` (opened at the source path) and returns its tree id
    /// and metadata.
    pub(super) fn root(&self, root: &Dir) -> Result<(BlobId, Meta)> {
        let st = root.stat().map_err(|e| Error::io(&self.source, e))?;
        let tree = self.dir(root, &st, b"", 0)?;
        let mut warn = |w: String| self.warn(w);
        let meta = read_meta(&st, XattrsOf::Fd(root.fd()), &self.source, &mut warn);
        Ok((tree, meta))
    }

    /// Backs up the directory `dir` (`rel` from the root, `st` its `fstat`) and returns its tree
    /// id.
    fn dir(&self, dir: &Dir, st: &Stat, rel: &[u8], depth: usize) -> Result<BlobId> {
        let mut names = dir.names().map_err(|e| Error::io(self.show(rel), e))?;
        if rel.is_empty() {
            names.retain(|n| !is_volume_file(n.as_bytes()));
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        inc(&self.counters.dirs, 1);
        Progress::add(&self.progress.entries, 1);
        let entries: Vec<Result<Option<Entry>>> = names
            .par_iter()
            .map(|name| {
                let mut child = Vec::with_capacity(rel.len() + 1 + name.len());
                if !rel.is_empty() {
                    child.extend_from_slice(rel);
                    child.push(b'/');
                }
                child.extend_from_slice(name.as_bytes());
                self.entry(dir, st.dev, name, &child, depth)
            })
            .collect();
        let mut tree = Tree::default();
        for e in entries {
            if let Some(e) = e? {
                tree.entries.push(e);
            }
        }
        let bytes = tree.encode();
        let id = BlobId::of(&bytes);
        self.put_blob(PackKind::Meta, id, &bytes)?;
        Ok(id)
    }

    /// Backs up the entry `name` of `parent` (on device `dev`). `Ok(None)`: left out (with a
    /// warning where that loses something).
    fn entry(
        &self,
        parent: &Dir,
        dev: u64,
        name: &OsString,
        rel: &[u8],
        depth: usize,
    ) -> Result<Option<Entry>> {
        let mut why = String::new();
        for _ in 0..READ_ATTEMPTS {
            let st = match parent.stat_at(name) {
                Ok(st) => st,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => {
                    self.skip(format!("{}: {e}; left out", self.show(rel).display()));
                    return Ok(None);
                }
            };
            if st.dev != dev {
                self.note_mount(rel);
                return Ok(None);
            }
            let step = match st.kind() {
                FileType::Directory => self.subdir(parent, name, rel, &st, depth)?,
                FileType::RegularFile => self.file(parent, name, rel, &st)?,
                FileType::Symlink => self.symlink(parent, name, rel, &st),
                FileType::Fifo => self.special(parent, name, rel, &st, Node::Fifo),
                FileType::CharacterDevice => {
                    self.special(parent, name, rel, &st, Node::CharDevice { rdev: st.rdev })
                }
                FileType::BlockDevice => {
                    self.special(parent, name, rel, &st, Node::BlockDevice { rdev: st.rdev })
                }
                _ => {
                    // A socket belongs to a running process; it cannot be restored meaningfully.
                    tracing::info!(path = %self.show(rel).display(), "socket skipped");
                    return Ok(None);
                }
            };
            match step {
                Step::Done(e) => {
                    Progress::add(&self.progress.entries, 1);
                    return Ok(Some(e));
                }
                Step::Gone => return Ok(None),
                Step::Changed(w) => why = w,
            }
        }
        self.skip(format!(
            "{}: changed while being read ({why}), {READ_ATTEMPTS} times; left out",
            self.show(rel).display()
        ));
        Ok(None)
    }

    fn note_mount(&self, rel: &[u8]) {
        self.warn(format!(
            "{}: another file system is mounted here; not crossed, left out",
            self.show(rel).display()
        ));
    }

    fn subdir(&self, parent: &Dir, name: &OsStr, rel: &[u8], st: &Stat, depth: usize) -> Result<Step> {
        if depth >= MAX_DEPTH {
            self.skip(format!(
                "{}: nested deeper than {MAX_DEPTH} directories; left out",
                self.show(rel).display()
            ));
            return Ok(Step::Gone);
        }
        let sub = match parent.open_dir(Path::new(name)) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound || is_not_dir(&e) => {
                return Ok(Step::Changed("no longer a directory".into()))
            }
            Err(e) if is_mount(&e) => {
                self.note_mount(rel);
                return Ok(Step::Gone);
            }
            Err(e) => {
                self.skip(format!("{}: {e}; directory left out", self.show(rel).display()));
                return Ok(Step::Gone);
            }
        };
        let opened = fstat(sub.fd()).map_err(|e| Error::io(self.show(rel), e))?;
        if let Err(m) = same_entry(st, &opened) {
            return Ok(Step::Changed(m.to_string()));
        }
        let tree = match self.dir(&sub, &opened, rel, depth + 1) {
            Ok(tree) => tree,
            Err(Error::Io { path, source }) => {
                self.skip(format!("{}: {source}; directory left out", path.display()));
                return Ok(Step::Gone);
            }
            Err(e) => return Err(e),
        };
        let mut warn = |w: String| self.warn(w);
        let meta = read_meta(&opened, XattrsOf::Fd(sub.fd()), &self.show(rel), &mut warn);
        Ok(Step::Done(Entry {
            name: name.as_bytes().to_vec(),
            node: Node::Dir { tree },
            meta,
        }))
    }

    fn symlink(&self, parent: &Dir, name: &OsStr, rel: &[u8], st: &Stat) -> Step {
        // The link itself, held by an O_PATH handle: its target is read from exactly the inode
        // that was listed.
        let read = parent.open_path(name).and_then(|h| {
            let opened = fstat(&h)?;
            Ok(match same_entry(st, &opened) {
                Ok(()) => Ok((rustix::fs::readlinkat(&h, c"", Vec::new())?.into_bytes(), opened)),
                Err(m) => Err(m),
            })
        });
        match read {
            Ok(Ok((target, opened))) => {
                inc(&self.counters.others, 1);
                let meta = self.meta_at(parent, name, rel, &opened);
                Step::Done(Entry {
                    name: name.as_bytes().to_vec(),
                    node: Node::Symlink { target },
                    meta,
                })
            }
            Ok(Err(m)) => Step::Changed(m.to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Step::Gone,
            Err(e) => {
                self.skip(format!("{}: {e}; symlink left out", self.show(rel).display()));
                Step::Gone
            }
        }
    }

    /// A FIFO or device node: recorded from its `lstat`, never opened.
    fn special(&self, parent: &Dir, name: &OsStr, rel: &[u8], st: &Stat, node: Node) -> Step {
        inc(&self.counters.others, 1);
        Step::Done(Entry {
            name: name.as_bytes().to_vec(),
            node,
            meta: self.meta_at(parent, name, rel, st),
        })
    }

    /// Metadata of an entry that is not open: extended attributes through the directory's
    /// descriptor, the last component never followed.
    fn meta_at(&self, parent: &Dir, name: &OsStr, rel: &[u8], st: &Stat) -> Meta {
        let mut warn = |w: String| self.warn(w);
        read_meta(
            st,
            XattrsOf::Path(&parent.entry_path(name)),
            &self.show(rel),
            &mut warn,
        )
    }

    fn file(&self, parent: &Dir, name: &OsStr, rel: &[u8], st: &Stat) -> Result<Step> {
        let link_group = (st.nlink > 1).then_some(st.ino);
        let done = |node: Node, meta: Meta| {
            Step::Done(Entry {
                name: name.as_bytes().to_vec(),
                node,
                meta,
            })
        };
        if let Some(c) = self.index.stat(&self.workspace, rel)? {
            if stat_matches(&c, st) && self.all_known(&c.extents)? {
                inc(&self.counters.files, 1);
                inc(&self.counters.bytes, st.size);
                let node = Node::File {
                    size: st.size,
                    extents: c.extents,
                    link_group,
                };
                return Ok(done(node, self.meta_at(parent, name, rel, st)));
            }
        }
        let opened = match parent.open_file(name) {
            Ok(Ok(f)) => f,
            Ok(Err(now)) => {
                return Ok(Step::Changed(
                    same_entry(st, &now)
                        .err()
                        .map_or("changed".into(), |m| m.to_string()),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Step::Changed("removed".into())),
            Err(e) => {
                self.skip(format!("{}: {e}; file left out", self.show(rel).display()));
                return Ok(Step::Gone);
            }
        };
        if let Err(m) = same_entry(st, &opened.stat) {
            return Ok(Step::Changed(m.to_string()));
        }
        match self.read_file(opened, rel) {
            Ok(Attempt::Done(extents, md, meta)) => {
                inc(&self.counters.files, 1);
                inc(&self.counters.files_read, 1);
                inc(&self.counters.bytes, md.size);
                let entry = StatEntry::of(&md, extents);
                if entry.mtime_ns < self.racy_after_ns {
                    self.index.put_stat(&self.workspace, rel, &entry)?;
                } else {
                    self.index.drop_stat(&self.workspace, rel)?;
                }
                let node = Node::File {
                    size: md.size,
                    extents: entry.extents,
                    link_group: (md.nlink > 1).then_some(md.ino),
                };
                Ok(done(node, meta))
            }
            Ok(Attempt::Changed(stamp)) => {
                // Wait until the file's latest stamp is a tick behind the clock.
                let wait = (stamp + HOT_NS - now_ns()).clamp(0, HOT_NS);
                std::thread::sleep(Duration::from_nanos(wait as u64));
                Ok(Step::Changed("written while being read".into()))
            }
            Err(Error::Io { path, source }) => {
                self.skip(format!("{}: {source}; file left out", path.display()));
                Ok(Step::Gone)
            }
            Err(e) => Err(e),
        }
    }

    fn all_known(&self, extents: &[Extent]) -> Result<bool> {
        for x in extents {
            if let Extent::Chunk { id, .. } = x {
                if !self.known(id)? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Reads an opened file: chunks, hashes and stores its data regions, and checks that it did
    /// not change meanwhile.
    fn read_file(&self, opened: OpenedFile, rel: &[u8]) -> Result<Attempt> {
        let started = now_ns();
        let OpenedFile {
            file: mut f,
            stat: before,
        } = opened;
        let io = |e: std::io::Error| Error::io(self.show(rel), e);
        let size = before.size;
        let regions = data_regions(&f, &before).map_err(io)?;
        let mut extents = Vec::new();
        let mut pos = 0u64;
        for (start, len) in regions {
            if start > pos {
                extents.push(Extent::Hole { len: start - pos });
            }
            f.seek(SeekFrom::Start(start)).map_err(io)?;
            let mut got = 0u64;
            let mut sink = |c: &[u8]| -> Result<()> {
                got += c.len() as u64;
                let id = BlobId::of(c);
                self.put_blob(PackKind::Data, id, c)?;
                extents.push(Extent::Chunk {
                    id,
                    len: c.len() as u32,
                });
                Progress::add(&self.progress.bytes, c.len() as u64);
                Ok(())
            };
            if len <= u64::from(self.chunker.max) {
                let mut buf = Vec::with_capacity(len as usize);
                (&mut f).take(len).read_to_end(&mut buf).map_err(io)?;
                chunk_slice(&self.chunker, &buf, &mut sink)?;
            } else {
                chunk_reader(&self.chunker, (&mut f).take(len), &mut sink).map_err(|e| match e {
                    ChunkReadError::Read(source) => io(source),
                    ChunkReadError::Sink(e) => e,
                })?;
            }
            inc(&self.counters.bytes_read, got);
            if got != len {
                return Ok(Attempt::Changed(latest_stamp(&before)));
            }
            pos = start + len;
        }
        if size > pos {
            extents.push(Extent::Hole { len: size - pos });
        }
        let mut warn = |w: String| self.warn(w);
        let meta = read_meta(&before, XattrsOf::Fd(f.as_fd()), &self.show(rel), &mut warn);
        let after = fstat(&f).map_err(io)?;
        if !same_version(&before, &after) {
            return Ok(Attempt::Changed(latest_stamp(&after)));
        }
        // The kernel stamps writes with a coarse clock, so writes during the read can leave the
        // times unchanged if the file was already stamped in the current tick. A file whose mtime
        // or ctime falls inside the read (with a margin for the tick) may have been written
        // while it was read: read it again once its clock has moved on.
        let window = started - HOT_NS..=now_ns() + HOT_NS;
        if window.contains(&after.mtime_ns()) || window.contains(&after.ctime_ns()) {
            return Ok(Attempt::Changed(latest_stamp(&after)));
        }
        Ok(Attempt::Done(extents, before, meta))
    }
}

/// How one attempt at reading a file ended.
enum Attempt {
    Done(Vec<Extent>, Stat, Meta),
    /// Changed while read; the latest of its mtime and ctime.
    Changed(i128),
}

fn latest_stamp(st: &Stat) -> i128 {
    st.mtime_ns().max(st.ctime_ns())
}

fn same_version(a: &Stat, b: &Stat) -> bool {
    a.size == b.size && a.ino == b.ino && a.mtime == b.mtime && a.ctime == b.ctime
}

fn stat_matches(c: &StatEntry, st: &Stat) -> bool {
    c.size == st.size && c.ino == st.ino && c.mtime_ns == st.mtime_ns() && c.ctime_ns == st.ctime_ns()
}

/// The `(offset, length)` runs of a file that hold data. A file using fewer blocks than its size
/// may have holes: ask the file system where the data is. Otherwise it is one run.
fn data_regions(f: &std::fs::File, st: &Stat) -> std::io::Result<Vec<(u64, u64)>> {
    let size = st.size;
    if size == 0 {
        return Ok(Vec::new());
    }
    if st.blocks * 512 >= size {
        return Ok(vec![(0, size)]);
    }
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let data = match rustix::fs::seek(f, rustix::fs::SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(rustix::io::Errno::INVAL) => return Ok(vec![(0, size)]),
            Err(e) => return Err(e.into()),
        };
        if data >= size {
            break;
        }
        let hole = match rustix::fs::seek(f, rustix::fs::SeekFrom::Hole(data)) {
            Ok(h) => h.min(size),
            Err(e) => return Err(e.into()),
        };
        out.push((data, hole - data));
        pos = hole;
    }
    Ok(out)
}
