//! Restore: rebuild a snapshot in a target directory, verified, metadata exact, marker last.
//!
//! Plan, then fetch. The trees are walked once to create directories, links and special files and
//! to list, per pack, which blob goes to which file offset. Then ranges of each pack are fetched
//! (adjacent blobs coalesced into one read, several reads in flight), every blob is decompressed
//! and checked against its BLAKE3 id on a blocking thread, and written at its offsets. Metadata is
//! applied after content (directories deepest first, so their times stick), the file system is
//! synced, and the completion marker is written last.
//!
//! Invariant 8: names come from validated trees (one component each, no `..`, no `/`), every
//! directory on the way is checked to be a real directory (a planted symlink is replaced, never
//! followed), and files are created fresh with `O_EXCL | O_NOFOLLOW` after removing whatever was
//! there, so no write goes through a link to outside the target.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_formats::{
    pack_key, Entry, Extent, Manifest, Meta, Node, PackEntry, PackId, PackKind, SnapshotId, Timestamp,
};
use futures::stream::{self, StreamExt, TryStreamExt};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::compress::decode_blob;
use crate::error::IoContext;
use crate::meta::{apply_meta, is_root, Target};
use crate::progress::Progress;
use crate::repo::Repo;
use crate::tree::SnapshotTrees;
use crate::{Error, Result, RESTORE_MARKER};

/// Pack reads in flight at once.
const FETCH_CONCURRENCY: usize = 8;
/// Blobs closer than this in a pack are fetched in one read (the gap is read and discarded).
const COALESCE_GAP: u64 = 256 << 10;
// The largest single read comes from the store (`Store::read_size`): 1 MiB locally, where a
// request costs nothing and smaller runs spread decoding across threads; 4 MiB on S3 and GCS,
// where each request has a price and a first-byte latency.

/// Where and how to restore.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// The directory to restore into (created if missing).
    pub target: PathBuf,
    /// Restore owners and groups (default: when running as root).
    pub owners: Option<bool>,
}

/// What a restore did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RestoreReport {
    /// Regular files written.
    pub files: u64,
    /// Directories created.
    pub dirs: u64,
    /// Symlinks, FIFOs, devices and hard links.
    pub others: u64,
    /// File bytes written (holes excluded).
    pub bytes: u64,
    /// Bytes fetched from the store.
    pub fetched: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// The completion marker written at the root of a restored directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreMarker {
    /// The workspace.
    pub workspace: String,
    /// The snapshot restored.
    pub snapshot: SnapshotId,
    /// That snapshot's time.
    pub snapshot_time: String,
    /// When the restore finished.
    pub restored_at: String,
}

/// Reads the completion marker of `target`, if there is a valid one.
pub fn read_marker(target: &Path) -> Option<RestoreMarker> {
    let bytes = fs::read(target.join(RESTORE_MARKER)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

struct FilePlan {
    path: PathBuf,
    meta: Meta,
    size: u64,
    /// Another file of the same link group created first; this one becomes a hard link to it.
    link_to: Option<usize>,
}

struct Need {
    entry: PackEntry,
    file: usize,
    offset: u64,
}

#[derive(Default)]
struct Plan {
    dirs: Vec<(PathBuf, Meta)>,
    files: Vec<FilePlan>,
    others: Vec<(PathBuf, Meta, Target)>,
    needs: HashMap<PackId, Vec<Need>>,
}

/// Restores snapshot `id` (with `manifest`) into `opts.target`.
///
/// # Errors
/// Store errors and [`Error::Corrupt`] for data that fails verification (nothing unverified is
/// written, and no marker is written); [`Error::Io`] naming the local path that failed.
pub async fn restore(
    repo: &Repo,
    id: SnapshotId,
    manifest: &Manifest,
    opts: &RestoreOptions,
    progress: Arc<Progress>,
) -> Result<RestoreReport> {
    let trees = Arc::new(SnapshotTrees::load(repo, manifest).await?);
    restore_with_trees(repo, id, manifest, trees, opts, progress).await
}

/// [`restore`] with the snapshot's trees already loaded (a drill reuses them to verify).
///
/// # Errors
/// As [`restore`].
pub async fn restore_with_trees(
    repo: &Repo,
    id: SnapshotId,
    manifest: &Manifest,
    trees: Arc<SnapshotTrees>,
    opts: &RestoreOptions,
    progress: Arc<Progress>,
) -> Result<RestoreReport> {
    let started = Instant::now();
    let target = opts.target.clone();
    let as_root = opts.owners.unwrap_or_else(is_root);
    fs::create_dir_all(&target).at(&target)?;
    if !fs::metadata(&target).at(&target)?.is_dir() {
        return Err(Error::Invalid(format!(
            "{}: restore target is not a directory",
            target.display()
        )));
    }
    // A restore in progress must never look finished.
    match fs::remove_file(target.join(RESTORE_MARKER)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(target.join(RESTORE_MARKER), e)),
    }
    progress
        .total_bytes
        .store(manifest.stats.bytes, std::sync::atomic::Ordering::Relaxed);

    let (t, root) = (target.clone(), manifest.root);
    let trees2 = trees.clone();
    let plan = tokio::task::spawn_blocking(move || plan(&trees2, &root, &t))
        .await
        .map_err(|e| Error::Invalid(format!("restore planner panicked: {e}")))??;
    let plan = Arc::new(plan);
    let mut report = RestoreReport {
        files: plan.files.len() as u64,
        dirs: plan.dirs.len() as u64,
        others: plan.others.len() as u64,
        ..RestoreReport::default()
    };

    // Create every file at its final size (holes stay holes).
    let p = plan.clone();
    tokio::task::spawn_blocking(move || {
        p.files
            .par_iter()
            .filter(|f| f.link_to.is_none())
            .try_for_each(|f| create_file(&f.path, f.size))
    })
    .await
    .map_err(|e| Error::Invalid(format!("restore worker panicked: {e}")))??;

    // Fetch, verify and write content.
    let max_read = repo.store().read_size();
    let mut jobs = Vec::new();
    for (pack, needs) in &plan.needs {
        let kind = trees.locations().get(&needs[0].entry.id)?.kind;
        for run in coalesce(needs, max_read) {
            jobs.push((*pack, kind, run));
        }
    }
    let fetched: Vec<(u64, u64)> = stream::iter(jobs)
        .map(|(pack, kind, run)| {
            let (repo, plan, progress) = (repo.clone(), plan.clone(), progress.clone());
            async move {
                let key = pack_key(kind, &pack);
                let data = repo.store().get_range(&key, run.range.clone()).await?;
                Progress::add(&progress.transferred, data.len() as u64);
                let fetched = data.len() as u64;
                // Decode and write on the rayon pool: as many threads as cores, so buffers are
                // reused by few allocator arenas while many reads stay in flight.
                let (tx, rx) = tokio::sync::oneshot::channel();
                rayon::spawn(move || {
                    let _ = tx.send(write_run(&plan, &key, &run, &data, &progress));
                });
                let written = rx
                    .await
                    .map_err(|_| Error::Invalid("restore worker panicked".into()))??;
                Ok::<_, Error>((fetched, written))
            }
        })
        .buffer_unordered(FETCH_CONCURRENCY)
        .try_collect()
        .await?;
    for (f, w) in fetched {
        report.fetched += f;
        report.bytes += w;
    }

    // Hard links, metadata (deepest directories last), sync, marker, then the root's own metadata.
    let p = plan.clone();
    let (t, root_meta) = (target.clone(), manifest.root_meta.clone());
    tokio::task::spawn_blocking(move || -> Result<()> {
        for f in p.files.iter().filter(|f| f.link_to.is_some()) {
            let first = &p.files[f.link_to.expect("invariant: filtered on link_to")].path;
            clear(&f.path)?;
            fs::hard_link(first, &f.path).at(&f.path)?;
        }
        p.files
            .par_iter()
            .filter(|f| f.link_to.is_none())
            .try_for_each(|f| apply_meta(&f.path, &f.meta, Target::Other, as_root))?;
        p.others
            .par_iter()
            .try_for_each(|(path, meta, kind)| apply_meta(path, meta, *kind, as_root))?;
        for (path, meta) in p.dirs.iter().rev() {
            apply_meta(path, meta, Target::Other, as_root)?;
        }
        let dir = File::open(&t).at(&t)?;
        rustix::fs::syncfs(&dir).map_err(|e| Error::io(&t, e.into()))?;
        Ok(())
    })
    .await
    .map_err(|e| Error::Invalid(format!("restore worker panicked: {e}")))??;

    let marker = RestoreMarker {
        workspace: manifest.workspace.clone(),
        snapshot: id,
        snapshot_time: manifest.time.to_rfc3339(),
        restored_at: Timestamp::now().to_rfc3339(),
    };
    write_marker(&target, &marker)?;
    apply_meta(&target, &root_meta, Target::Other, as_root)?;
    report.elapsed = started.elapsed();
    Ok(report)
}

fn write_marker(target: &Path, marker: &RestoreMarker) -> Result<()> {
    let path = target.join(RESTORE_MARKER);
    let mut tmp = tempfile::Builder::new()
        .prefix(".cairn-marker-")
        .tempfile_in(target)
        .at(target)?;
    serde_json::to_writer_pretty(&mut tmp, marker).map_err(|e| Error::io(&path, e.into()))?;
    tmp.as_file().sync_all().at(&path)?;
    tmp.persist(&path).map_err(|e| Error::io(&path, e.error))?;
    File::open(target).and_then(|d| d.sync_all()).at(target)?;
    Ok(())
}

/// Walks the trees, creating directories, symlinks and special files, and lists the content work.
fn plan(trees: &SnapshotTrees, root: &cairn_formats::BlobId, target: &Path) -> Result<Plan> {
    let mut plan = Plan::default();
    let mut groups: HashMap<u64, usize> = HashMap::new();
    trees.walk(root, &mut |rel, e: &Entry| {
        let path = target.join(OsStr::from_bytes(rel));
        match &e.node {
            Node::Dir { .. } => {
                ensure_dir(&path)?;
                plan.dirs.push((path, e.meta.clone()));
            }
            Node::File {
                size,
                extents,
                link_group,
            } => {
                let idx = plan.files.len();
                let link_to = match link_group {
                    Some(g) => match groups.get(g) {
                        Some(first) => Some(*first),
                        None => {
                            groups.insert(*g, idx);
                            None
                        }
                    },
                    None => None,
                };
                if link_to.is_none() {
                    let mut offset = 0u64;
                    for x in extents {
                        if let Extent::Chunk { id, .. } = x {
                            let loc = trees.locations().get(id)?;
                            if loc.kind != PackKind::Data {
                                return Err(Error::Corrupt {
                                    object: format!("blob {id}"),
                                    detail: "file content located in a metadata pack".into(),
                                });
                            }
                            plan.needs.entry(loc.pack).or_default().push(Need {
                                entry: loc.entry,
                                file: idx,
                                offset,
                            });
                        }
                        offset += x.len();
                    }
                }
                plan.files.push(FilePlan {
                    path,
                    meta: e.meta.clone(),
                    size: *size,
                    link_to,
                });
            }
            Node::Symlink { target: to } => {
                clear(&path)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(to), &path).at(&path)?;
                plan.others.push((path, e.meta.clone(), Target::Symlink));
            }
            Node::Fifo | Node::CharDevice { .. } | Node::BlockDevice { .. } => {
                clear(&path)?;
                let (ft, dev) = match e.node {
                    Node::Fifo => (rustix::fs::FileType::Fifo, 0),
                    Node::CharDevice { rdev } => (rustix::fs::FileType::CharacterDevice, rdev),
                    Node::BlockDevice { rdev } => (rustix::fs::FileType::BlockDevice, rdev),
                    _ => unreachable!("matched above"),
                };
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &path,
                    ft,
                    rustix::fs::Mode::from_raw_mode(0o600),
                    dev,
                )
                .map_err(|err| Error::io(&path, err.into()))?;
                plan.others.push((path, e.meta.clone(), Target::Other));
            }
        }
        Ok(())
    })?;
    Ok(plan)
}

/// Makes `path` a real directory: keeps one, replaces anything else (a symlink is never followed).
fn ensure_dir(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => return Ok(()),
        Ok(_) => fs::remove_file(path).at(path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(path, e)),
    }
    fs::create_dir(path).at(path)
}

/// Removes whatever is at `path` (a file, a link, a directory tree) so a new entry can be created.
fn clear(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(path).at(path),
        Ok(_) => fs::remove_file(path).at(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn create_file(path: &Path, size: u64) -> Result<()> {
    clear(path)?;
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .mode(0o600)
        .open(path)
        .at(path)?;
    if size > 0 {
        f.set_len(size).at(path)?;
    }
    Ok(())
}

/// A range of one pack to read, and the blobs in it.
struct Run {
    range: std::ops::Range<u64>,
    needs: Vec<(PackEntry, Vec<(usize, u64)>)>,
}

/// Groups the needs of one pack into read runs: blobs sorted by offset, neighbours closer than
/// [`COALESCE_GAP`] merged, runs capped at `max_read` bytes. A blob needed at several offsets is
/// fetched and verified once.
fn coalesce(needs: &[Need], max_read: u64) -> Vec<Run> {
    let mut by_blob: HashMap<u64, (PackEntry, Vec<(usize, u64)>)> = HashMap::new();
    for n in needs {
        by_blob
            .entry(n.entry.offset)
            .or_insert_with(|| (n.entry, Vec::new()))
            .1
            .push((n.file, n.offset));
    }
    let mut blobs: Vec<_> = by_blob.into_values().collect();
    blobs.sort_by_key(|(e, _)| e.offset);
    let mut runs: Vec<Run> = Vec::new();
    for (e, targets) in blobs {
        let r = e.range();
        match runs.last_mut() {
            Some(run) if r.start <= run.range.end + COALESCE_GAP && r.end - run.range.start <= max_read => {
                run.range.end = run.range.end.max(r.end);
                run.needs.push((e, targets));
            }
            _ => runs.push(Run {
                range: r,
                needs: vec![(e, targets)],
            }),
        }
    }
    runs
}

/// Verifies and writes the blobs of one fetched run. Returns the bytes written.
fn write_run(plan: &Plan, key: &str, run: &Run, data: &[u8], progress: &Progress) -> Result<u64> {
    let mut open: HashMap<usize, File> = HashMap::new();
    let mut written = 0u64;
    for (e, targets) in &run.needs {
        let start = (e.offset - run.range.start) as usize;
        let stored = &data[start..start + e.stored_len as usize];
        let raw = decode_blob(
            &format!("blob {} in {key}", e.id.short()),
            &e.id,
            stored,
            e.raw_len,
            e.codec,
        )?;
        for (file, offset) in targets {
            let path = &plan.files[*file].path;
            let f = match open.entry(*file) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => v.insert(
                    OpenOptions::new()
                        .write(true)
                        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                        .open(path)
                        .at(path)?,
                ),
            };
            f.write_all_at(&raw, *offset).at(path)?;
            written += raw.len() as u64;
            Progress::add(&progress.bytes, raw.len() as u64);
        }
    }
    Ok(written)
}
