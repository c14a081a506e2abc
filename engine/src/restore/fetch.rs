//! Fetching, verifying and writing content: needs coalesced into ranged pack reads, a bounded
//! number and volume of reads in flight, each run decoded and verified on the rayon pool and
//! written with `pwrite` into files opened beneath the target's descriptor; chunks already on
//! disk (staged by an update restore) copied, verified, instead.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cairn_formats::{pack_key, PackEntry, PackId, PackKind};
use futures::stream::{self, StreamExt, TryStreamExt};
use rustix::fs::OFlags;

use super::plan::{LocalNeed, Need, Plan};
use crate::compress::decode_blob;
use crate::meta::apply_meta_fd;
use crate::progress::Progress;
use crate::repo::Repo;
use crate::tree::SnapshotTrees;
use crate::volume::dir::Dir;
use crate::volume::dir::{fstat, Stat};
use crate::{Error, Result};

/// Pack reads in flight at once, at most.
const FETCH_CONCURRENCY: usize = 8;
/// Fetched bytes not yet written, at most (in MiB): with 8 MiB reads from S3 or GCS, four reads
/// in flight keep a restore CPU-bound at 20 ms per request while holding 32 MiB.
const FETCH_BUDGET_MIB: u32 = 32;
/// Blobs closer than this in a pack are fetched in one read (the gap is read and discarded).
const COALESCE_GAP: u64 = 256 << 10;
// The largest single read comes from the store (`Store::read_size`): 1 MiB locally, where a
// request costs nothing and smaller runs spread decoding across threads; 8 MiB (a whole data
// pack) on S3 and GCS, where each request has a price and a first-byte latency.

/// Where content is written: the plan and the target's root descriptor. A file gets its metadata
/// through the descriptor that wrote its last chunk (or created it, if it has none), so no second
/// open is needed; what that left (inode, ctime) goes into `done` for the check before the marker.
pub(super) struct Sink {
    pub plan: Arc<Plan>,
    pub root: Arc<Dir>,
    pub target: std::path::PathBuf,
    pub as_root: bool,
    /// Chunk writes still to come, per file of the plan.
    pub remaining: Vec<AtomicU32>,
    /// The inode each file was created as: every later open must find that very inode (an entry
    /// swapped for another file, a link or a device node while the restore runs is refused).
    pub inodes: Vec<AtomicU64>,
    /// Files finished (content and metadata), with their `fstat` after it.
    pub done: Mutex<Vec<(usize, Stat)>>,
    /// How the repository's blobs are named and sealed.
    pub crypt: crate::keys::Crypt,
}

impl Sink {
    /// Counts each file's chunk writes (fetched and copied from disk).
    pub fn new(
        plan: Arc<Plan>,
        local: &[(OsString, Vec<LocalNeed>)],
        root: Arc<Dir>,
        target: PathBuf,
        as_root: bool,
        crypt: crate::keys::Crypt,
    ) -> Sink {
        let remaining: Vec<AtomicU32> = (0..plan.files.len()).map(|_| AtomicU32::new(0)).collect();
        for needs in plan.needs.values() {
            for n in needs {
                remaining[n.file].fetch_add(1, Ordering::Relaxed);
            }
        }
        for (_, needs) in local {
            for n in needs {
                remaining[n.file].fetch_add(1, Ordering::Relaxed);
            }
        }
        let inodes = (0..plan.files.len()).map(|_| AtomicU64::new(0)).collect();
        Sink {
            crypt,
            plan,
            root,
            target,
            as_root,
            remaining,
            inodes,
            done: Mutex::new(Vec::new()),
        }
    }

    /// Applies file `file`'s metadata through `f` (its content is complete) and records it.
    fn finish(&self, file: usize, f: &File) -> Result<()> {
        let io = |e: std::io::Error| Error::io(self.target.join(&self.plan.files[file].rel), e);
        apply_meta_fd(f.as_fd(), &self.plan.files[file].meta, self.as_root).map_err(io)?;
        let st = fstat(f).map_err(io)?;
        self.done
            .lock()
            .expect("invariant: lock not poisoned")
            .push((file, st));
        Ok(())
    }

    /// Counts one chunk of `file` written; the last one finishes the file.
    fn wrote(&self, open: &mut HashMap<usize, File>, file: usize) -> Result<()> {
        if self.remaining[file].fetch_sub(1, Ordering::AcqRel) == 1 {
            let f = self.open(open, file)?;
            self.finish(file, f)?;
        }
        Ok(())
    }
    /// The file `file` of the plan opened for writing (beneath the root, never through a
    /// symlink, and checked to be the regular file the restore created), once per caller.
    fn open<'a>(&self, open: &'a mut HashMap<usize, File>, file: usize) -> Result<&'a mut File> {
        Ok(match open.entry(file) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let rel = &self.plan.files[file].rel;
                let (f, _) = self
                    .root
                    .open_file_beneath(
                        rel,
                        OFlags::WRONLY,
                        Some(self.inodes[file].load(Ordering::Acquire)),
                    )
                    .map_err(|e| Error::io(self.target.join(rel), e))?;
                v.insert(f)
            }
        })
    }

    fn write(&self, open: &mut HashMap<usize, File>, file: usize, data: &[u8], offset: u64) -> Result<()> {
        self.open(open, file)?
            .write_all_at(data, offset)
            .map_err(|e| Error::io(self.target.join(&self.plan.files[file].rel), e))
    }
}

/// Copies chunks from a staged file, each verified against its id. Returns the needs whose bytes
/// did not verify (to fetch instead) and the bytes copied.
pub(super) fn copy_local(
    sink: &Sink,
    staging: &Dir,
    src: &OsString,
    needs: Vec<LocalNeed>,
) -> Result<(Vec<LocalNeed>, u64)> {
    let Ok(Ok(f)) = staging.open_file(src) else {
        return Ok((needs, 0));
    };
    let mut open: HashMap<usize, File> = HashMap::new();
    let mut failed = Vec::new();
    let mut copied = 0u64;
    let mut buf = Vec::new();
    for n in needs {
        buf.resize(n.len as usize, 0);
        if f.file.read_exact_at(&mut buf, n.from).is_err() || sink.crypt.blob_id(&buf) != n.id {
            failed.push(n);
            continue;
        }
        sink.write(&mut open, n.file, &buf, n.offset)?;
        sink.wrote(&mut open, n.file)?;
        copied += buf.len() as u64;
    }
    Ok((failed, copied))
}

/// A range of one pack to read, and the blobs in it.
pub(super) struct Run {
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
fn write_run(sink: &Sink, key: &str, run: &Run, data: &[u8], progress: &Progress) -> Result<u64> {
    let mut open: HashMap<usize, File> = HashMap::new();
    let mut written = 0u64;
    for (e, targets) in &run.needs {
        let start = (e.offset - run.range.start) as usize;
        let stored = &data[start..start + e.stored_len as usize];
        let raw = decode_blob(
            &sink.crypt,
            || format!("blob {} in {key}", e.id.short()),
            &e.id,
            stored,
            e.raw_len,
            e.codec,
        )?;
        for (file, offset) in targets {
            sink.write(&mut open, *file, &raw, *offset)?;
            sink.wrote(&mut open, *file)?;
            written += raw.len() as u64;
            Progress::add(&progress.bytes, raw.len() as u64);
        }
    }
    Ok(written)
}

/// One read of a pack: its key's kind and the run of blobs it covers.
pub(super) type Job = (PackId, PackKind, Run);

/// The reads that fetch `needs` (per pack), each at most `max_read` bytes.
pub(super) fn fetch_jobs<'a>(
    trees: &SnapshotTrees,
    needs: impl Iterator<Item = (&'a PackId, &'a Vec<Need>)>,
    max_read: u64,
) -> Result<Vec<Job>> {
    let mut jobs = Vec::new();
    for (pack, needs) in needs {
        let kind = trees.locations().get(&needs[0].entry.id)?.kind;
        for run in coalesce(needs, max_read) {
            jobs.push((*pack, kind, run));
        }
    }
    Ok(jobs)
}

/// Fetched-but-unwritten data allowed at once, in MiB ([`FETCH_BUDGET_MIB`]).
pub(super) struct Budget {
    mib: tokio::sync::Semaphore,
}

impl Budget {
    pub fn new() -> Self {
        Budget {
            mib: tokio::sync::Semaphore::new(FETCH_BUDGET_MIB as usize),
        }
    }

    /// Waits until `bytes` more may be in flight (a read larger than the whole budget waits for
    /// all of it).
    async fn hold(&self, bytes: u64) -> Result<tokio::sync::SemaphorePermit<'_>> {
        let mib = u32::try_from(bytes.div_ceil(1 << 20))
            .unwrap_or(u32::MAX)
            .clamp(1, FETCH_BUDGET_MIB);
        self.mib
            .acquire_many(mib)
            .await
            .map_err(|_| Error::Invalid("restore fetch budget closed".into()))
    }
}

/// Fetches `jobs` (up to [`FETCH_CONCURRENCY`] reads and the budget's bytes in flight), and once
/// `created` says the files exist, verifies and writes each on the rayon pool. Returns the bytes
/// fetched and written.
pub(super) async fn fetch(
    repo: Repo,
    sink: Arc<Sink>,
    progress: Arc<Progress>,
    budget: Arc<Budget>,
    jobs: Vec<Job>,
    created: tokio::sync::watch::Receiver<bool>,
) -> Result<(u64, u64)> {
    let done: Vec<(u64, u64)> = stream::iter(jobs)
        .map(|(pack, kind, run)| {
            let (repo, sink, progress, budget) =
                (repo.clone(), sink.clone(), progress.clone(), budget.clone());
            let mut created = created.clone();
            async move {
                let _held = budget.hold(run.range.end - run.range.start).await?;
                let key = pack_key(kind, &pack);
                let data = repo.read_pack(kind, &pack, Some(run.range.clone())).await?;
                Progress::add(&progress.transferred, data.len() as u64);
                let fetched = data.len() as u64;
                created
                    .wait_for(|c| *c)
                    .await
                    .map_err(|_| Error::Invalid("restore ended before the files were created".into()))?;
                // Decode and write on the rayon pool: as many threads as cores, so buffers are
                // reused by few allocator arenas while many reads stay in flight.
                let (tx, rx) = tokio::sync::oneshot::channel();
                rayon::spawn(move || {
                    let written = write_run(&sink, &key, &run, &data, &progress);
                    drop(data); // back to the store's buffers before the next read is let in
                    let _ = tx.send(written);
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
    Ok(done.into_iter().fold((0, 0), |(f, w), (a, b)| (f + a, w + b)))
}

/// Creates file `file` of the plan (removing whatever is there) at its final size, holes as holes;
/// one with no chunks to write is finished at once.
pub(super) fn create_file(sink: &Sink, file: usize) -> Result<()> {
    let (root, target) = (&*sink.root, &sink.target);
    let (rel, size) = (&sink.plan.files[file].rel, sink.plan.files[file].size);
    let io = |e: std::io::Error| Error::io(target.join(rel), e);
    let create = || {
        root.open_beneath(
            rel,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
    };
    let fd = match create() {
        Ok(fd) => fd,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let (_, name) = super::plan::split(rel);
            match super::plan::open_parent(root, rel).map_err(io)? {
                Some(d) => d.remove(name),
                None => root.remove(name),
            }
            .map_err(io)?;
            create().map_err(io)?
        }
        Err(e) => return Err(io(e)),
    };
    let f = File::from(fd);
    sink.inodes[file].store(fstat(&f).map_err(io)?.ino, Ordering::Release);
    if size > 0 {
        f.set_len(size).map_err(io)?;
    }
    if sink.remaining[file].load(Ordering::Acquire) == 0 {
        sink.finish(file, &f)?;
    }
    Ok(())
}
