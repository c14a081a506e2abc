//! The backup's walk of the workspace: every directory is read through a descriptor opened from
//! its parent's (see `volume/dir.rs`), every entry is `lstat`ed where it was listed, and what is
//! opened is checked to be what was listed. An entry that turns into something else while it is
//! read (a file swapped for a symlink, a directory renamed away) counts as "changed while being
//! read": it is looked at again, and left out with a warning if it keeps changing, never stored
//! as the content of whatever took its place. Nothing is followed, nothing on another mount is
//! entered, and special files are never opened.
//!
//! Two modes. Live (the volume is read as it is): each directory's tree is encoded as soon as its
//! entries are done, and a file that keeps changing while it is read keeps its version from the
//! previous backup (or, with none, is stored as last read), with a warning, never left out.
//! Capture (the file system is frozen, `freeze.rs`): a changed file's bytes are copied to the
//! staging directory instead of read into the pipeline, and the trees above it wait as
//! [`Pending`] until [`Session::complete`] chunks the staged copies after the thaw.
//!
//! Before a capture, a live pre-pass reads what changed since the last checkpoint (an agent
//! session's output, a first checkpoint's everything) into the pipeline, file by file as in live
//! mode, and records each file it read whole in the stat cache. The frozen walk then finds a file
//! whose `lstat` is still that one in the stat cache, like any unchanged file, and copies only
//! what changed since (a running database's files). The pre-pass starts with a `syncfs`, and its
//! reads are trusted as of the clock before it: after a sync every page of a shared mapping is
//! write-protected, so a store through one stamps the file's ctime again, which a store to a page
//! already dirty does not ([`Session::remember`] has the rest of the argument). The pre-pass
//! stores no tree (but for an idle workspace, see [`Session::capture`]), and a file that changes
//! while it reads it, or was stamped too shortly before, is left to the frozen walk without a
//! second look.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_formats::{BlobId, Entry, Extent, Meta, Node, PackKind, Tree};
use rayon::prelude::*;
use rustix::fs::FileType;

use super::{inc, Consistency, Freezable, FreezeMode, FreezeOptions, Frozen, Session, READ_ATTEMPTS};
use crate::chunker::{chunk_reader, chunk_slice, ChunkReadError};
use crate::index::StatEntry;
use crate::meta::{now_ns, read_meta, XattrsOf};
use crate::progress::Progress;
use crate::volume::dir::{fstat, is_mount, is_not_dir, same_entry, Dir, OpenedFile, Stat};
use crate::volume::is_volume_file;
use crate::{Error, Result};
use std::fs::File;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// Margin for the file system's timestamp tick (jiffies: 1-10 ms) when deciding whether a file
/// was written while it was read.
const HOT_NS: i128 = 50_000_000;
/// How much older than the capture of its content (read on the kernel's stamp clock, which needs
/// no margin for the tick) a file's ctime must be for the stat cache to trust it: room for a clock
/// adjustment, and less than [`HOT_NS`], so a file read again after its stamp cooled is trusted.
const TRUST_NS: i128 = 10_000_000;
/// Directories nested deeper than this are left out with a warning. Walking by descriptors has no
/// `PATH_MAX` to stop a hostile tree; this bounds the walk's stack and its open descriptors.
pub const MAX_DEPTH: usize = 400;

/// How one look at an entry ended (a return value that lives for one call: its size does not
/// matter).
#[allow(clippy::large_enum_variant)]
enum Step {
    Done(Walked),
    /// Not there any more, or left out with a warning already given.
    Gone,
    /// It changed while being read (the reason, for the warning if it keeps changing).
    Changed(String),
    /// It was read whole, but it had been written so shortly before that a write during the read
    /// might not show in its times: to be read again, now that its clock has moved on.
    Recent,
}

/// A walked entry: finished, or waiting for staged content (capture mode).
pub(super) enum Walked {
    Ready(Entry),
    /// A file whose bytes at the instant are in the staging directory: `entry` has no extents
    /// yet; `stat` is the file's own, for the stat cache.
    Staged {
        entry: Entry,
        staged: u32,
        stat: Stat,
        rel: Vec<u8>,
        /// Its extended attributes were all read (else the stat cache does not vouch for them).
        whole_meta: bool,
    },
    /// A directory with staged content below it.
    Dir {
        name: Vec<u8>,
        meta: Meta,
        below: Pending,
    },
}

/// A directory's entries, some of them waiting for staged content.
pub(super) struct Pending(Vec<Walked>);

/// A directory's tree: encoded, or pending.
pub(super) enum TreeOf {
    Done(BlobId),
    Pending(Pending),
}

/// Capture mode's staging: changed files' bytes copied off the frozen file system.
pub(super) struct Staging {
    pub dir: Dir,
    pub next: AtomicU32,
    /// The clock before the freeze began: every staged copy is of the file as it was after it.
    pub instant_ns: i128,
}

/// In the cache directory: the workspace, source path and root tree of the last checkpoint, if it
/// was point in time and read nothing (see [`Session::capture`]).
pub const IDLE_HINT: &str = "idle-checkpoint";

impl Session {
    /// Walks the workspace into its root tree: frozen, so at one instant, where `freezable`
    /// allows (see `freeze.rs`), else live. Returns the tree, the root's metadata and how the
    /// instant was fixed.
    ///
    /// A workspace whose last checkpoint was point in time and read nothing (an idle one: the
    /// cache directory's [`IDLE_HINT`] names that checkpoint's root tree) is not frozen if the
    /// pre-pass finds it unchanged: the pre-pass then builds the trees too, and if the root is
    /// the same tree, every entry was, when the walk looked at it, as it was at that checkpoint's
    /// instant, so this snapshot holds the workspace as it was then, a state it really had.
    pub(super) fn capture(
        &self,
        root: &Dir,
        freezable: std::result::Result<Freezable, String>,
        opts: FreezeOptions,
        cache_dir: &Path,
    ) -> Result<(BlobId, Meta, Consistency)> {
        let fs = match freezable {
            Ok(fs) => fs,
            Err(why) => return self.live(root, Some(why)),
        };
        let hint = cache_dir.join(IDLE_HINT);
        // The hint is this workspace's, at this path: another's tree says nothing of this one's.
        let key = format!("{}\n{}\n", self.workspace, self.source.display());
        let idle_root = std::fs::read_to_string(&hint)
            .ok()
            .and_then(|s| s.strip_prefix(&key).and_then(|r| r.trim().parse::<BlobId>().ok()))
            .filter(|_| opts.prepass);
        let mut prepass_seconds = 0.0;
        if opts.prepass {
            let (walked, seconds) = self.prepass(root, idle_root.is_some())?;
            prepass_seconds = seconds;
            if let (Some(want), (TreeOf::Done(got), meta)) = (idle_root, walked) {
                if got == want {
                    tracing::info!("unchanged since the last point-in-time checkpoint: not frozen");
                    return Ok((
                        got,
                        meta,
                        Consistency {
                            point_in_time: true,
                            prepass_seconds,
                            ..Consistency::default()
                        },
                    ));
                }
            }
            self.counters.reset_walk(true);
            self.warnings
                .lock()
                .expect("invariant: lock not poisoned")
                .clear();
        }
        let (id, meta, c) = self.frozen(root, &fs, opts, cache_dir)?;
        if c.point_in_time && opts.prepass {
            // The hint only saves a freeze: failing to write or remove it costs that, no more.
            if self.counters.files_read.load(Ordering::Relaxed) == 0 {
                let _ = std::fs::write(&hint, format!("{key}{}\n", id.to_hex()));
            } else {
                let _ = std::fs::remove_file(&hint);
            }
        }
        Ok((
            id,
            meta,
            Consistency {
                prepass_seconds,
                freezes: u32::from(c.point_in_time),
                ..c
            },
        ))
    }

    /// One freeze: the frozen walk (copying changed files to staging), the thaw, and the
    /// chunking of the copies; or the live walk where freezing fails or lapses.
    fn frozen(
        &self,
        root: &Dir,
        fs: &Freezable,
        opts: FreezeOptions,
        cache_dir: &Path,
    ) -> Result<(BlobId, Meta, Consistency)> {
        let path = cache_dir.join(format!(
            "staging-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        let staged = (|| {
            let staging = Arc::new(Staging {
                dir: Dir::open(&path).map_err(|e| Error::io(&path, e))?,
                next: AtomicU32::new(0),
                instant_ns: stamp_clock_ns(),
            });
            let frozen = match Frozen::freeze(fs, cache_dir, opts.deadline) {
                Ok(f) => f,
                Err(why) if opts.mode == FreezeMode::Always => {
                    return Err(Error::Invalid(format!("{}: {why}", self.source.display())))
                }
                Err(why) => return self.live(root, Some(why)),
            };
            self.set_staging(Some(staging.clone()));
            let walked = self.root(root);
            self.set_staging(None);
            if !opts.hold.is_zero() {
                std::thread::sleep(opts.hold);
            }
            let thawed = frozen.thaw();
            let held = thawed.held;
            let (tree, meta) = walked?;
            if thawed.lapsed {
                // The guard (at its deadline, counted from before the freeze) may have thawed the
                // file system before the capture ended: what was copied after that is not of the
                // instant, and may be torn. Read it all again, live.
                let why = format!(
                    "the freeze lapsed before the capture ended (frozen {held:.2?}, deadline {:?}: \
                     CAIRN_FREEZE_DEADLINE)",
                    opts.deadline
                );
                if opts.mode == FreezeMode::Always {
                    return Err(Error::Invalid(format!("{}: {why}", self.source.display())));
                }
                self.counters.reset_walk(opts.prepass);
                self.warnings
                    .lock()
                    .expect("invariant: lock not poisoned")
                    .clear();
                return self.live(root, Some(why));
            }
            let id = match tree {
                TreeOf::Done(id) => id,
                TreeOf::Pending(p) => self.complete(&staging, p)?,
            };
            tracing::info!(frozen_ms = held.as_secs_f64() * 1e3, fs = %fs.fstype, "point-in-time checkpoint");
            Ok((
                id,
                meta,
                Consistency {
                    point_in_time: true,
                    frozen_seconds: held.as_secs_f64(),
                    ..Consistency::default()
                },
            ))
        })();
        let _ = std::fs::remove_dir_all(&path);
        staged
    }

    /// The live pre-pass before a freeze (see the module docs): reads what changed into the
    /// pipeline and the stat cache, and with `trees` stores the trees too (else its tree is a
    /// placeholder). Returns its walk and seconds; what it counted and warned of is the caller's
    /// to keep or forget.
    fn prepass(&self, root: &Dir, trees: bool) -> Result<((TreeOf, Meta), f64)> {
        let started = std::time::Instant::now();
        let floor = stamp_clock_ns();
        root.syncfs().map_err(|e| Error::io(&self.source, e))?;
        self.prepass_floor.store(floor as i64, Ordering::Relaxed);
        self.prepass_trees.store(trees, Ordering::Relaxed);
        self.prepass.store(true, Ordering::Relaxed);
        let walked = self.root(root);
        self.prepass.store(false, Ordering::Relaxed);
        let walked = walked?;
        let seconds = started.elapsed().as_secs_f64();
        let files = self.counters.files_read.load(Ordering::Relaxed);
        tracing::debug!(seconds, files, "pre-pass read what changed");
        Ok((walked, seconds))
    }

    fn in_prepass(&self) -> bool {
        self.prepass.load(Ordering::Relaxed)
    }

    /// The walk of the live volume (no freeze), with why it is not point in time.
    fn live(&self, root: &Dir, why: Option<String>) -> Result<(BlobId, Meta, Consistency)> {
        if let Some(why) = &why {
            tracing::warn!(source = %self.source.display(), "not a point-in-time checkpoint: {why}");
        }
        let (tree, meta) = self.root(root)?;
        let id = match tree {
            TreeOf::Done(id) => id,
            TreeOf::Pending(_) => unreachable!("nothing is staged without a freeze"),
        };
        Ok((
            id,
            meta,
            Consistency {
                point_in_time: false,
                frozen_seconds: 0.0,
                prepass_seconds: 0.0,
                freezes: 0,
                fallback: why,
            },
        ))
    }

    fn set_staging(&self, s: Option<Arc<Staging>>) {
        *self.staging.write().unwrap_or_else(|p| p.into_inner()) = s;
    }

    fn staging_on(&self) -> bool {
        self.staging.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// The path of `rel` for messages.
    fn show(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.source.clone()
        } else {
            self.source.join(OsStr::from_bytes(rel))
        }
    }

    /// Backs up the root directory `root` (opened at the source path) and returns its tree and
    /// metadata.
    pub(super) fn root(&self, root: &Dir) -> Result<(TreeOf, Meta)> {
        let st = root.stat().map_err(|e| Error::io(&self.source, e))?;
        let tree = self.dir(root, &st, b"", 0)?;
        let mut warn = |w: String| self.warn(w);
        let meta = read_meta(&st, XattrsOf::Fd(root.fd()), &self.source, &mut warn);
        Ok((tree, meta))
    }

    /// Backs up the directory `dir` (`rel` from the root, `st` its `fstat`) and returns its tree.
    fn dir(&self, dir: &Dir, st: &Stat, rel: &[u8], depth: usize) -> Result<TreeOf> {
        let mut names = dir.names().map_err(|e| Error::io(self.show(rel), e))?;
        if rel.is_empty() {
            names.retain(|n| !is_volume_file(n.as_bytes()));
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        inc(&self.counters.dirs, 1);
        Progress::add(&self.progress.entries, 1);
        let entries: Vec<Result<Option<Walked>>> = names
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
        let mut walked = Vec::with_capacity(entries.len());
        for e in entries {
            if let Some(e) = e? {
                walked.push(e);
            }
        }
        if self.in_prepass() && !self.prepass_trees.load(Ordering::Relaxed) {
            // Only the files it read matter; its trees are not used (the frozen walk makes the
            // snapshot's), so none is stored.
            return Ok(TreeOf::Done(BlobId::of(b"")));
        }
        if walked.iter().all(|w| matches!(w, Walked::Ready(_))) {
            let entries = walked
                .into_iter()
                .map(|w| match w {
                    Walked::Ready(e) => e,
                    _ => unreachable!("all ready"),
                })
                .collect();
            return Ok(TreeOf::Done(self.put_tree(entries)?));
        }
        Ok(TreeOf::Pending(Pending(walked)))
    }

    /// Encodes and stores a directory's tree.
    fn put_tree(&self, entries: Vec<Entry>) -> Result<BlobId> {
        let bytes = Tree { entries }.encode();
        let id = self.crypt.blob_id(&bytes);
        self.put_blob(PackKind::Meta, id, &bytes)?;
        Ok(id)
    }

    /// Finishes a pending tree after the thaw: chunks the staged copies (recording each file's
    /// own `stat` in the stat cache) and encodes the trees bottom up.
    pub(super) fn complete(&self, staging: &Staging, pending: Pending) -> Result<BlobId> {
        let entries: Vec<Entry> = pending
            .0
            .into_par_iter()
            .map(|w| -> Result<Entry> {
                match w {
                    Walked::Ready(e) => Ok(e),
                    Walked::Dir { name, meta, below } => Ok(Entry {
                        name,
                        node: Node::Dir {
                            tree: self.complete(staging, below)?,
                        },
                        meta,
                    }),
                    Walked::Staged {
                        mut entry,
                        staged,
                        stat,
                        rel,
                        whole_meta,
                    } => {
                        let name = OsString::from(staged.to_string());
                        let io = |e: std::io::Error| Error::io(self.show(&rel), e);
                        let copy = match staging.dir.open_file(&name).map_err(io)? {
                            Ok(f) => f,
                            Err(_) => return Err(io(std::io::Error::other("the staged copy is gone"))),
                        };
                        let mut f = copy.file;
                        let extents = self.chunk(&mut f, &copy.stat, &rel)?;
                        let _ = staging.dir.remove_file(&name);
                        inc(&self.counters.files_read, 1);
                        self.remember(
                            &rel,
                            &stat,
                            &extents,
                            &entry.meta,
                            whole_meta.then_some(staging.instant_ns),
                        )?;
                        if let Node::File { extents: e, .. } = &mut entry.node {
                            *e = extents;
                        }
                        Ok(entry)
                    }
                }
            })
            .collect::<Result<_>>()?;
        self.put_tree(entries)
    }

    /// Records a file's identity and content in the stat cache; `captured_ns` is the stamp clock
    /// ([`stamp_clock_ns`]) before its content was taken (the read's start, the pre-pass's sync,
    /// or the freeze), `None` if its metadata could not all be read (never trusted then).
    ///
    /// The entry lets a later backup skip reading the file only if any write after the capture
    /// must have changed its ctime: the ctime is older than the capture (by [`TRUST_NS`], for
    /// clock adjustments), and a later write is stamped with the kernel's coarse clock at or after the
    /// capture's reading of it, so with a later ctime. That holds where the local kernel stamps
    /// nanoseconds ([`fine_stamps`]); a whole-second ctime, or a file system stamped by a server
    /// (NFS, SMB, FUSE), needs [`super::RACY_WINDOW_NS`] from the backup's start instead.
    /// Otherwise the entry records the last good version only, never trusted to skip a read (its
    /// ctime is [`StatEntry::UNTRUSTED`]).
    fn remember(
        &self,
        rel: &[u8],
        st: &Stat,
        extents: &[Extent],
        meta: &Meta,
        captured_ns: Option<i128>,
    ) -> Result<()> {
        let mut entry = StatEntry::of(st, extents.to_vec(), meta.xattrs.clone());
        if !captured_ns.is_some_and(|c| self.trusted(st, c)) {
            entry.ctime_ns = StatEntry::UNTRUSTED;
        }
        self.index.put_stat(&self.workspace, rel, &entry)
    }

    /// How close to a read a stamp makes the read suspect (see [`Session::read_file`]): a tick,
    /// or a second where stamps are whole seconds or made by another clock.
    fn margin(&self, st: &Stat) -> i128 {
        if self.fine(st) {
            HOT_NS
        } else {
            1_000_000_000 + HOT_NS
        }
    }

    /// Whether `st` has nanosecond stamps from this kernel (see [`Session::remember`]).
    fn fine(&self, st: &Stat) -> bool {
        self.fine_stamps && st.ctime.1 != 0
    }

    /// Whether a file whose content was taken after `captured_ns`, with `st` its `lstat` then, is
    /// known to be unchanged for as long as its `lstat` is (see [`Session::remember`]).
    fn trusted(&self, st: &Stat, captured_ns: i128) -> bool {
        if self.fine(st) {
            st.ctime_ns() < captured_ns - TRUST_NS
        } else {
            st.ctime_ns() < self.racy_after_ns.min(captured_ns - super::RACY_WINDOW_NS)
        }
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
    ) -> Result<Option<Walked>> {
        let mut why = String::new();
        let mut last: Option<Stat> = None;
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
                // The frozen walk copies it at the instant.
                Step::Changed(_) if self.in_prepass() => return Ok(None),
                Step::Changed(w) => {
                    why = w;
                    last = Some(st);
                }
                Step::Recent => {
                    why = "written just before it was read".into();
                    last = Some(st);
                }
            }
        }
        // A file that keeps changing keeps its version from the previous backup (the stat
        // cache's), with a warning counted in `skipped`; never a mix of two versions. Only a file
        // that no backup ever read whole is left out.
        let shown = self.show(rel);
        if let Some(st) = last.filter(|st| st.is_file()) {
            if let Some(prev) = self.index.stat(&self.workspace, rel)? {
                if self.all_known(&prev.extents)? {
                    self.skip(format!(
                        "{}: changed while being read ({why}), {READ_ATTEMPTS} times; the snapshot keeps its version \
                         from the previous backup",
                        shown.display()
                    ));
                    let mut meta = self.meta_at(parent, name, rel, &st);
                    meta.mtime = cairn_formats::Timestamp {
                        secs: prev.mtime_ns.div_euclid(1_000_000_000) as i64,
                        nanos: prev.mtime_ns.rem_euclid(1_000_000_000) as u32,
                    };
                    inc(&self.counters.files, 1);
                    inc(&self.counters.bytes, prev.size);
                    return Ok(Some(Walked::Ready(Entry {
                        name: name.as_bytes().to_vec(),
                        node: Node::File {
                            size: prev.size,
                            extents: prev.extents,
                            link_group: None,
                        },
                        meta,
                    })));
                }
            }
        }
        self.skip(format!(
            "{}: changed while being read ({why}), {READ_ATTEMPTS} times; left out",
            shown.display()
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
        let name = name.as_bytes().to_vec();
        Ok(Step::Done(match tree {
            TreeOf::Done(tree) => Walked::Ready(Entry {
                name,
                node: Node::Dir { tree },
                meta,
            }),
            TreeOf::Pending(below) => Walked::Dir { name, meta, below },
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
                Step::Done(Walked::Ready(Entry {
                    name: name.as_bytes().to_vec(),
                    node: Node::Symlink { target },
                    meta,
                }))
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
        Step::Done(Walked::Ready(Entry {
            name: name.as_bytes().to_vec(),
            node,
            meta: self.meta_at(parent, name, rel, st),
        }))
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
        let entry = |size: u64, extents: Vec<Extent>, link_group: Option<u64>, meta: Meta| Entry {
            name: name.as_bytes().to_vec(),
            node: Node::File {
                size,
                extents,
                link_group,
            },
            meta,
        };
        // Unchanged since a previous backup or the pre-pass read it (the stat cache).
        let cached = match self.index.stat(&self.workspace, rel)? {
            Some(c) if stat_matches(&c, st) && self.all_known(&c.extents)? => Some(c),
            _ => None,
        };
        if let Some(c) = cached {
            inc(&self.counters.files, 1);
            inc(&self.counters.bytes, st.size);
            // The entry vouches for the xattrs too (changing them moves the ctime): none is
            // read for an unchanged file.
            let meta = Meta {
                mode: st.mode & 0o7777,
                uid: st.uid,
                gid: st.gid,
                mtime: cairn_formats::Timestamp {
                    secs: st.mtime.0,
                    nanos: st.mtime.1,
                },
                xattrs: c.xattrs,
            };
            return Ok(Step::Done(Walked::Ready(entry(
                st.size, c.extents, link_group, meta,
            ))));
        }
        let opened = match parent.open_file(name) {
            Ok(Ok(f)) => f,
            Ok(Err(now)) => {
                let why = same_entry(st, &now)
                    .err()
                    .map_or("changed".into(), |m| m.to_string());
                return Ok(Step::Changed(why));
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
        let staging = self.staging.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(staging) = &staging {
            // Frozen: copy the bytes off the file system now, chunk them after the thaw.
            let stat = opened.stat;
            let (meta, whole_meta) = self.meta_of(&stat, opened.file.as_fd(), rel);
            let staged = self.stage(staging, opened, rel)?;
            inc(&self.counters.files, 1);
            inc(&self.counters.bytes, stat.size);
            let link_group = (stat.nlink > 1).then_some(stat.ino);
            return Ok(Step::Done(Walked::Staged {
                entry: entry(stat.size, Vec::new(), link_group, meta),
                staged,
                stat,
                rel: rel.to_vec(),
                whole_meta,
            }));
        }
        match self.read_file(opened, rel) {
            Ok(Attempt::Done(extents, md, meta, captured)) => {
                inc(&self.counters.files, 1);
                inc(&self.counters.files_read, 1);
                inc(&self.counters.bytes, md.size);
                let captured = match captured {
                    Some(c) if self.in_prepass() => {
                        Some(c.min(i128::from(self.prepass_floor.load(Ordering::Relaxed))))
                    }
                    c => c,
                };
                self.remember(rel, &md, &extents, &meta, captured)?;
                let link_group = (md.nlink > 1).then_some(md.ino);
                Ok(Step::Done(Walked::Ready(entry(
                    md.size, extents, link_group, meta,
                ))))
            }
            // The pre-pass leaves a file that changes while it is read, or was stamped too
            // shortly before, to the frozen walk.
            Ok(Attempt::Changed(_) | Attempt::Recent(_)) if self.in_prepass() => {
                Ok(Step::Changed("written while being read".into()))
            }
            Ok(Attempt::Changed(stamp)) => {
                wait_past(stamp, self.margin(st));
                Ok(Step::Changed("written while being read".into()))
            }
            Ok(Attempt::Recent(stamp)) => {
                wait_past(stamp, self.margin(st));
                Ok(Step::Recent)
            }
            Err(Error::Io { path, source }) => {
                self.skip(format!("{}: {source}; file left out", path.display()));
                Ok(Step::Gone)
            }
            Err(e) => Err(e),
        }
    }

    /// Copies an opened file's data regions to a new file in the staging directory (holes stay
    /// holes) and returns its number.
    fn stage(&self, staging: &Staging, opened: OpenedFile, rel: &[u8]) -> Result<u32> {
        let io = |e: std::io::Error| Error::io(self.show(rel), e);
        let n = staging.next.fetch_add(1, Ordering::Relaxed);
        let name = OsString::from(n.to_string());
        let mut to = staging.dir.create_file(&name, 0o600).map_err(io)?;
        let OpenedFile { file: mut from, stat } = opened;
        for (start, len) in data_regions(&from, &stat).map_err(io)? {
            from.seek(SeekFrom::Start(start)).map_err(io)?;
            to.seek(SeekFrom::Start(start)).map_err(io)?;
            let got = std::io::copy(&mut (&mut from).take(len), &mut to).map_err(io)?;
            inc(&self.counters.bytes_read, got);
            Progress::add(&self.progress.bytes, got);
        }
        to.set_len(stat.size).map_err(io)?;
        Ok(n)
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

    /// Chunks, hashes and stores the data regions of `f` (whose `fstat` is `st`). Returns its
    /// extents, or `None` if fewer bytes than expected could be read (it shrank meanwhile).
    fn chunk(&self, f: &mut File, st: &Stat, rel: &[u8]) -> Result<Vec<Extent>> {
        self.chunk_regions(f, st, rel)?
            .ok_or_else(|| Error::io(self.show(rel), std::io::Error::other("the staged copy is short")))
    }

    fn chunk_regions(&self, f: &mut File, st: &Stat, rel: &[u8]) -> Result<Option<Vec<Extent>>> {
        let io = |e: std::io::Error| Error::io(self.show(rel), e);
        let size = st.size;
        let mut extents = Vec::new();
        let mut pos = 0u64;
        for (start, len) in data_regions(f, st).map_err(io)? {
            if start > pos {
                extents.push(Extent::Hole { len: start - pos });
            }
            f.seek(SeekFrom::Start(start)).map_err(io)?;
            let mut got = 0u64;
            let mut sink = |c: &[u8]| -> Result<()> {
                got += c.len() as u64;
                let id = self.crypt.blob_id(c);
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
                (&mut *f).take(len).read_to_end(&mut buf).map_err(io)?;
                chunk_slice(&self.chunker, self.crypt.chunker_seed(), &buf, &mut sink)?;
            } else {
                chunk_reader(
                    &self.chunker,
                    self.crypt.chunker_seed(),
                    (&mut *f).take(len),
                    &mut sink,
                )
                .map_err(|e| match e {
                    ChunkReadError::Read(source) => io(source),
                    ChunkReadError::Sink(e) => e,
                })?;
            }
            if !self.staging_on() {
                inc(&self.counters.bytes_read, got);
            }
            if got != len {
                return Ok(None);
            }
            pos = start + len;
        }
        if size > pos {
            extents.push(Extent::Hole { len: size - pos });
        }
        Ok(Some(extents))
    }

    /// The metadata of the open file `fd` (`st` its `fstat`), and whether all its extended
    /// attributes could be read (a warning says which could not).
    fn meta_of(&self, st: &Stat, fd: std::os::fd::BorrowedFd<'_>, rel: &[u8]) -> (Meta, bool) {
        let mut whole = true;
        let mut warn = |w: String| {
            whole = false;
            self.warn(w)
        };
        let meta = read_meta(st, XattrsOf::Fd(fd), &self.show(rel), &mut warn);
        (meta, whole)
    }

    /// Reads an opened file: chunks, hashes and stores its data regions, and checks that it did
    /// not change meanwhile.
    fn read_file(&self, opened: OpenedFile, rel: &[u8]) -> Result<Attempt> {
        let captured = stamp_clock_ns();
        let started = now_ns();
        let OpenedFile {
            file: mut f,
            stat: before,
        } = opened;
        let io = |e: std::io::Error| Error::io(self.show(rel), e);
        let extents = self.chunk_regions(&mut f, &before, rel)?;
        let (meta, whole_meta) = self.meta_of(&before, f.as_fd(), rel);
        let after = fstat(&f).map_err(io)?;
        let Some(extents) = extents else {
            return Ok(Attempt::Changed(latest_stamp(&after)));
        };
        if !same_version(&before, &after) {
            return Ok(Attempt::Changed(latest_stamp(&after)));
        }
        // The kernel stamps writes with a coarse clock, so writes during the read can leave the
        // times unchanged if the file was already stamped in the current tick. A file whose mtime
        // or ctime falls inside the read (with a margin for the tick) may have been written
        // while it was read: read it again once its clock has moved on.
        // The margin is a second where stamps are whole seconds or made by another clock.
        let margin = self.margin(&after);
        let window = started - margin..=now_ns() + margin;
        if window.contains(&after.mtime_ns()) || window.contains(&after.ctime_ns()) {
            return Ok(Attempt::Recent(latest_stamp(&after)));
        }
        Ok(Attempt::Done(
            extents,
            before,
            meta,
            whole_meta.then_some(captured),
        ))
    }
}

/// How one attempt at reading a file ended.
enum Attempt {
    /// Read whole: its extents, `lstat` and metadata, and the stamp clock when the read started
    /// (`None` if some of its metadata could not be read).
    Done(Vec<Extent>, Stat, Meta, Option<i128>),
    /// Changed while read; the latest of its mtime and ctime.
    Changed(i128),
    /// Unchanged while read, but stamped within a tick of it (see [`Step::Recent`]); the latest
    /// of its mtime and ctime.
    Recent(i128),
}

/// Waits until a file's latest stamp is `margin` behind the clock.
fn wait_past(stamp: i128, margin: i128) {
    let wait = (stamp + margin - now_ns()).clamp(0, margin);
    std::thread::sleep(Duration::from_nanos(wait as u64));
}

/// The clock the kernel stamps file times with (`CLOCK_REALTIME_COARSE`), in nanoseconds: a
/// stamp made after this reading is at least this.
pub(super) fn stamp_clock_ns() -> i128 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    crate::meta::ns(t.tv_sec, t.tv_nsec)
}

/// Whether the file system of `root` is one whose times the local kernel stamps, in nanoseconds
/// (ext4, XFS, btrfs, f2fs, tmpfs), so the stat cache's tick-sized margins hold.
pub(super) fn fine_stamps(root: &Dir) -> bool {
    const LOCAL: [i64; 5] = [0xEF53, 0x5846_5342, 0x9123_683E, 0xF2F5_2010, 0x0102_1994];
    // `f_type`'s integer type differs between architectures.
    #[allow(clippy::useless_conversion)]
    rustix::fs::fstatfs(root.fd()).is_ok_and(|s| LOCAL.contains(&i64::from(s.f_type)))
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
        if hole <= data {
            // Holes punched and filled while we look: read it whole (the read's checks see the
            // change) rather than go round forever.
            return Ok(vec![(0, size)]);
        }
        out.push((data, hole - data));
        pos = hole;
    }
    Ok(out)
}
