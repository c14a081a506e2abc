//! Backup: walk a directory, store what is new, seal a snapshot, move the workspace head.
//!
//! Pipeline: the walk runs on rayon (directories' entries in parallel, nested), each changed file
//! is read, chunked, hashed and, if new, compressed on the worker that read it; blobs go into the
//! open data or metadata pack; a full pack is sealed and handed through a bounded channel to the
//! uploader, which keeps a few uploads in flight on tokio. Memory is bounded by the channel depth,
//! the uploads in flight and one pack per kind being filled.
//!
//! Write order (invariant 3): packs, then the index record, then the manifest (create-only), then
//! the head (compare-and-swap). A backup killed at any point leaves the previous head in place.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, Metadata};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_formats::{
    head_key, index_key, pack_key, snapshot_key, validate_workspace, BlobId, ChunkerParams, Entry, Extent,
    Head, IndexId, IndexPack, IndexRecord, Manifest, Node, PackId, PackKind, PackTrailer, SnapshotId,
    SnapshotStats, Timestamp, Tree, PACK_FOOTER_LEN,
};
use futures::stream::{StreamExt, TryStreamExt};
use rayon::prelude::*;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::chunker::{chunk_reader, chunk_slice, ChunkReadError};
use crate::compress::encode_blob;
use crate::error::IoContext;
use crate::index::{LocalIndex, StatEntry};
use crate::meta::{now_ns, ns, read_meta, timestamp_ns};
use crate::pack::{FinishedPack, PackBuilder};
use crate::progress::Progress;
use crate::repo::{IndexHandle, Repo};
use crate::store::{PutMode, StoreExt};
use crate::volume::{self, is_volume_file};
use crate::{Error, Result};

/// The most index records a snapshot cites (see the consolidation in [`backup`]).
pub const MAX_RECORDS: usize = 16;
/// Sealed packs waiting for an upload slot.
const UPLOAD_QUEUE: usize = 1;
/// Uploads in flight at once.
const UPLOAD_CONCURRENCY: usize = 3;
/// Times a file that changes while it is read is read again before it is left out.
const READ_ATTEMPTS: usize = 3;
/// Margin for the file system's timestamp tick (jiffies: 1-10 ms) when deciding whether a file
/// was written while it was read.
const HOT_NS: i128 = 50_000_000;
/// Files modified this close to the start of a backup (or after it) are not trusted to the stat
/// cache next time: a later write within the file system's timestamp granularity could leave size
/// and times unchanged ("racily clean", as git calls it).
const RACY_WINDOW_NS: i128 = 2_000_000_000;

/// What to back up.
#[derive(Clone, Debug)]
pub struct BackupOptions {
    /// The workspace name.
    pub workspace: String,
    /// The directory to back up.
    pub source: PathBuf,
    /// Where the local index lives.
    pub cache_dir: PathBuf,
    /// Tags for the manifest.
    pub tags: Vec<String>,
    /// The host name to record (default: this machine's).
    pub host: Option<String>,
    /// A backup running longer than this commits nothing (garbage collection's protection window
    /// must exceed it); see [`max_session_from_env`].
    pub max_session: Duration,
    /// Compacted index segments this backup may fetch to deduplicate against other workspaces
    /// (0: only the parent, the base and what this cache learned before); see
    /// [`crate::dedup_fetches_from_env`].
    pub dedup_fetches: usize,
}

/// The session limit: `CAIRN_MAX_SESSION` (like `90m`), else one hour.
pub fn max_session_from_env() -> Duration {
    std::env::var("CAIRN_MAX_SESSION")
        .ok()
        .and_then(|v| crate::store::parse_duration(&v))
        .unwrap_or(Duration::from_secs(3600))
}

/// The base snapshot a volume was started from (its marker's `from`), synced into the index.
async fn base_of_volume(
    repo: &Repo,
    source: &Path,
    workspace: &str,
    index: &LocalIndex,
) -> Result<Option<SnapshotId>> {
    let Some(m) = volume::read_marker(source).filter(|m| m.workspace == workspace) else {
        return Ok(None);
    };
    let Some((ws, id)) = m.from.as_deref().and_then(|f| f.split_once('@')) else {
        return Ok(None);
    };
    let Ok(id) = id.parse::<SnapshotId>() else {
        return Ok(None);
    };
    let manifest = repo.manifest(ws, &id).await?;
    repo.sync_index(index, &manifest).await?;
    Ok(Some(id))
}

/// What a backup did.
#[derive(Clone, Debug)]
pub struct BackupReport {
    /// The new snapshot.
    pub snapshot: SnapshotId,
    /// Whether it is the workspace's head (false when another writer sealed a newer one).
    pub is_head: bool,
    /// The snapshot it was incremental to.
    pub parent: Option<SnapshotId>,
    /// Counters, as stored in the manifest.
    pub stats: SnapshotStats,
    /// Entries left out or only partly read, one line each.
    pub warnings: Vec<String>,
    /// What the compacted index contributed.
    pub global: crate::GlobalDedup,
    /// Wall time.
    pub elapsed: Duration,
}

/// Backs up `opts.source` as a new snapshot of `opts.workspace` and moves the head to it.
///
/// # Errors
/// [`Error::Invalid`] for a bad workspace name or source; store and index errors. Entries that
/// cannot be read do not fail the backup: they are left out and listed in
/// [`BackupReport::warnings`].
pub async fn backup(repo: &Repo, opts: &BackupOptions, progress: Arc<Progress>) -> Result<BackupReport> {
    let started = Instant::now();
    let time = Timestamp::now();
    validate_workspace(&opts.workspace).map_err(|e| Error::Invalid(e.to_string()))?;
    let root_md = fs::metadata(&opts.source).at(&opts.source)?;
    if !root_md.is_dir() {
        return Err(Error::Invalid(format!(
            "{}: not a directory; back up a workspace directory",
            opts.source.display()
        )));
    }

    let index = Arc::new(repo.open_index(&opts.cache_dir)?);
    // What garbage collection has condemned or deleted: never deduplicate against it.
    let gc = crate::gc::sync_generation(repo, &index).await?;
    let head = repo.head(&opts.workspace).await?;
    let parent = match &head {
        Some((h, _)) => {
            let m = repo.manifest(&opts.workspace, &h.snapshot).await?;
            repo.sync_index(&index, &m).await?;
            Some((h.snapshot, m))
        }
        None => None,
    };
    // A workspace's first backup after starting from a base: dedup against the base, and say so.
    let base = match &parent {
        Some((_, m)) => m.base,
        None => match base_of_volume(repo, &opts.source, &opts.workspace, &index).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "the volume's base snapshot is not readable; backing up without it");
                None
            }
        },
    };

    let (tx, rx) = mpsc::channel::<FinishedPack>(UPLOAD_QUEUE);
    let uploader = tokio::spawn(upload_loop(repo.clone(), index.clone(), rx, progress.clone()));
    let session = Arc::new(Session {
        workspace: opts.workspace.clone(),
        index: index.clone(),
        chunker: repo.config().chunker,
        zstd_level: repo.config().compression.zstd_level,
        data_target: repo.config().packs.data as usize,
        meta_target: repo.config().packs.meta as usize,
        data: Mutex::new(PackBuilder::new(
            PackKind::Data,
            repo.config().packs.data as usize,
        )),
        meta: Mutex::new(PackBuilder::new(
            PackKind::Meta,
            repo.config().packs.meta as usize,
        )),
        pending: Mutex::new(HashSet::new()),
        global: crate::compact::GlobalIndex::new(repo, &gc, opts.dedup_fetches),
        gc,
        records: Mutex::new(HashSet::new()),
        unrecorded: Mutex::new(HashSet::new()),
        pack_records: Mutex::new(HashMap::new()),
        tx: Mutex::new(Some(tx)),
        warnings: Mutex::new(Vec::new()),
        counters: Counters::default(),
        progress,
        racy_after_ns: timestamp_ns(time) - RACY_WINDOW_NS,
    });

    let walker = session.clone();
    let source = opts.source.clone();
    let walked = tokio::task::spawn_blocking(move || -> Result<(BlobId, cairn_formats::Meta)> {
        let root = walker.dir(&source, b"")?;
        let mut warn = |w: String| walker.warn(w);
        let meta = read_meta(&source, &root_md, &mut warn);
        walker.flush(PackKind::Data)?;
        walker.flush(PackKind::Meta)?;
        Ok((root, meta))
    })
    .await
    .map_err(|e| Error::Invalid(format!("backup walker panicked: {e}")))?;
    session.tx.lock().expect("invariant: lock not poisoned").take();
    let uploaded = uploader
        .await
        .map_err(|e| Error::Invalid(format!("uploader panicked: {e}")))?;
    // An upload failure stops the walker with a closed channel; report the upload's error.
    let uploaded = uploaded?;
    let (root, root_meta) = walked?;

    // Index record: the packs this session wrote, plus packs earlier unfinished sessions wrote
    // that this snapshot references (adopted, so every referenced blob is located by a record).
    let mut packs = uploaded;
    let session_packs: HashSet<PackId> = packs.iter().map(|p| p.pack).collect();
    let orphans: Vec<PackId> = session
        .unrecorded
        .lock()
        .expect("invariant: lock not poisoned")
        .iter()
        .filter(|p| !session_packs.contains(p))
        .copied()
        .collect();
    let mut records: Vec<IndexId> = session
        .records
        .lock()
        .expect("invariant: lock not poisoned")
        .iter()
        .copied()
        .collect();
    records.sort();
    // A snapshot cites at most MAX_RECORDS index records, so a restore reads a bounded number
    // however many sessions wrote the workspace: past that, this session's record absorbs the
    // packs of the records it would cite.
    let consolidate = records.len() >= MAX_RECORDS;
    if consolidate {
        let cited: Vec<IndexRecord> = futures::stream::iter(records.clone())
            .map(|id| async move { repo.index_record(&id).await })
            .buffered(crate::repo::READ_CONCURRENCY)
            .try_collect()
            .await?;
        let mut have: HashSet<PackId> = packs
            .iter()
            .map(|p| p.pack)
            .chain(orphans.iter().copied())
            .collect();
        for r in cited {
            for p in r.packs {
                if have.insert(p.pack) {
                    packs.push(p);
                }
            }
        }
        records.clear();
    }
    if session_packs.is_empty() && (!orphans.is_empty() || consolidate) {
        // A record without a pack of this session's could equal one that GC condemned (same
        // packs, same bytes, same name); a fresh pack makes every record unique.
        packs.push(store_pack(repo, &index, PackBuilder::new(PackKind::Meta, 64).seal()).await?);
    }
    for pack in orphans {
        packs.push(adopt_pack(repo, &index, pack).await?);
    }
    packs.sort_by_key(|p| p.pack);
    if !packs.is_empty() {
        let record = IndexRecord { packs };
        let bytes = record.encode();
        let id = IndexId::of(&bytes);
        repo.store()
            .put_immutable(&index_key(&id), Bytes::from(bytes))
            .await?;
        index.add_record(&id, &record)?;
        records.push(id);
    }
    records.sort();
    records.dedup();

    let stats = session.counters.stats();
    let manifest = Manifest {
        workspace: opts.workspace.clone(),
        time,
        host: opts.host.clone().unwrap_or_else(hostname),
        source: opts.source.as_os_str().as_bytes().to_vec(),
        root,
        root_meta,
        parent: parent.as_ref().map(|(id, _)| *id),
        base,
        index: records,
        stats,
        tags: opts.tags.clone(),
    };
    // Garbage collection's protection window assumes no backup outlives its session limit.
    if started.elapsed() > opts.max_session {
        return Err(Error::Invalid(format!(
            "this backup ran {:.0?}, past the session limit of {:?} (CAIRN_MAX_SESSION); nothing was \
             committed, and what it uploaded is reused by the next backup",
            started.elapsed(),
            opts.max_session
        )));
    }
    let manifest_root_mtime = manifest.root_meta.mtime;
    let bytes = manifest.encode();
    let snapshot = SnapshotId::of(&bytes);
    repo.store()
        .put_immutable(&snapshot_key(&opts.workspace, &snapshot), Bytes::from(bytes))
        .await?;
    let mut warnings = std::mem::take(&mut *session.warnings.lock().expect("invariant: lock not poisoned"));
    let is_head = move_head(
        repo,
        &opts.workspace,
        snapshot,
        time,
        head.map(|(_, v)| v),
        &mut warnings,
    )
    .await?;
    update_marker(&opts.source, &opts.workspace, snapshot, time, manifest_root_mtime);
    Ok(BackupReport {
        snapshot,
        is_head,
        parent: parent.map(|(id, _)| id),
        stats,
        warnings,
        global: session.global.report(),
        elapsed: started.elapsed(),
    })
}

/// Points the head at `snapshot` by compare-and-swap, unless a newer snapshot holds it. Returns
/// whether this snapshot is the head.
///
/// Two writers of one workspace (two pods, or a pod and an operator) each seal their snapshot
/// create-only; the head goes to the newer by snapshot time, and the other stays listed under
/// `snapshots/`, restorable by id and named in a warning. The head never moves back in time, so a
/// slow writer cannot hide a snapshot sealed after its own began.
async fn move_head(
    repo: &Repo,
    workspace: &str,
    snapshot: SnapshotId,
    time: Timestamp,
    mut expected: Option<crate::store::Version>,
    warnings: &mut Vec<String>,
) -> Result<bool> {
    let key = head_key(workspace);
    let body = Bytes::from(Head { snapshot, time }.encode());
    for _ in 0..8 {
        let mode = match expected.take() {
            Some(v) => PutMode::Update(v),
            None => PutMode::Create,
        };
        match repo.store().put(&key, body.clone(), mode).await {
            Ok(_) => return Ok(true),
            Err(Error::Conflict { .. } | Error::AlreadyExists { .. }) => {
                let current = repo.head(workspace).await?;
                if let Some((h, _)) = &current {
                    if h.snapshot == snapshot {
                        return Ok(true);
                    }
                    if h.time > time {
                        warnings.push(format!(
                            "another writer sealed {} of {workspace} after this backup began; it stays the \
                             head, and {} is kept as a listed snapshot",
                            h.snapshot.short(),
                            snapshot.short()
                        ));
                        return Ok(false);
                    }
                    warnings.push(format!(
                        "head of {workspace} moved to {} during this backup; {} is newer and replaces it as \
                         the head ({} stays listed)",
                        h.snapshot.short(),
                        snapshot.short(),
                        h.snapshot.short()
                    ));
                }
                expected = current.map(|(_, v)| v);
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::Conflict { key })
}

/// Names the new snapshot in the source's volume marker, if the source is a workspace volume of
/// this workspace (see `volume.rs`): what the volume held when the backup began is now sealed.
fn update_marker(
    source: &Path,
    workspace: &str,
    snapshot: SnapshotId,
    time: Timestamp,
    root_mtime: Timestamp,
) {
    let Some(mut m) = volume::read_marker(source) else {
        return;
    };
    if m.workspace != workspace {
        return;
    }
    m.snapshot = Some(snapshot);
    m.snapshot_time = Some(time.to_rfc3339());
    m.from = None;
    m.synced_ns = volume::marker_ns(timestamp_ns(time));
    m.root_mtime_ns = volume::marker_ns(timestamp_ns(root_mtime));
    if let Err(e) = volume::rewrite_marker(source, &m) {
        tracing::warn!(error = %e, "could not update the volume marker; the next init will back the volume up first");
    }
}

/// Uploads a sealed pack and tells the local index about it (only once it is stored).
async fn store_pack(repo: &Repo, index: &LocalIndex, pack: FinishedPack) -> Result<IndexPack> {
    let size = pack.bytes.len() as u64;
    repo.store()
        .put_immutable(&pack_key(pack.kind, &pack.id), pack.bytes)
        .await?;
    let ip = IndexPack {
        pack: pack.id,
        kind: pack.kind,
        size,
        blobs: pack.entries,
    };
    index.add_pack(&ip, None)?;
    Ok(ip)
}

/// Reads a stored pack's trailer so a record can list it.
async fn adopt_pack(repo: &Repo, index: &LocalIndex, pack: PackId) -> Result<IndexPack> {
    let info = index.pack(&pack)?.ok_or_else(|| Error::Index {
        path: PathBuf::new(),
        detail: format!("pack {pack} referenced but unknown"),
    })?;
    let key = pack_key(info.kind, &pack);
    let size = repo.store().head(&key).await?.size;
    let tail_len = size.min(256 << 10);
    let mut tail = repo.store().get_range(&key, size - tail_len..size).await?;
    let tlen = u64::from(PackTrailer::trailer_len(&tail).map_err(|e| Error::format(&key, e))?);
    if tlen + PACK_FOOTER_LEN > tail_len {
        tail = repo
            .store()
            .get_range(&key, size.saturating_sub(tlen + PACK_FOOTER_LEN)..size)
            .await?;
    }
    let trailer = PackTrailer::decode_tail(&tail, size).map_err(|e| Error::format(&key, e))?;
    Ok(IndexPack {
        pack,
        kind: info.kind,
        size,
        blobs: trailer.blobs,
    })
}

async fn upload_loop(
    repo: Repo,
    index: Arc<IndexHandle>,
    mut rx: mpsc::Receiver<FinishedPack>,
    progress: Arc<Progress>,
) -> Result<Vec<IndexPack>> {
    let mut inflight: JoinSet<Result<IndexPack>> = JoinSet::new();
    let mut done = Vec::new();
    let join = |r: std::result::Result<Result<IndexPack>, tokio::task::JoinError>| {
        r.map_err(|e| Error::Invalid(format!("upload task panicked: {e}")))?
    };
    while let Some(pack) = rx.recv().await {
        while inflight.len() >= UPLOAD_CONCURRENCY {
            let next = inflight.join_next().await.expect("invariant: set is not empty");
            done.push(join(next)?);
        }
        let (repo, index, progress) = (repo.clone(), index.clone(), progress.clone());
        inflight.spawn(async move {
            let ip = store_pack(&repo, &index, pack).await?;
            Progress::add(&progress.transferred, ip.size);
            Ok(ip)
        });
    }
    while let Some(next) = inflight.join_next().await {
        done.push(join(next)?);
    }
    Ok(done)
}

#[derive(Default)]
struct Counters {
    files: AtomicU64,
    dirs: AtomicU64,
    others: AtomicU64,
    bytes: AtomicU64,
    files_read: AtomicU64,
    bytes_read: AtomicU64,
    new_blobs: AtomicU64,
    new_bytes: AtomicU64,
    uploaded_bytes: AtomicU64,
    skipped: AtomicU64,
}

impl Counters {
    fn stats(&self) -> SnapshotStats {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SnapshotStats {
            files: g(&self.files),
            dirs: g(&self.dirs),
            others: g(&self.others),
            bytes: g(&self.bytes),
            files_read: g(&self.files_read),
            bytes_read: g(&self.bytes_read),
            new_blobs: g(&self.new_blobs),
            new_bytes: g(&self.new_bytes),
            uploaded_bytes: g(&self.uploaded_bytes),
            skipped: g(&self.skipped),
        }
    }
}

fn inc(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

struct Session {
    workspace: String,
    index: Arc<IndexHandle>,
    chunker: ChunkerParams,
    zstd_level: i32,
    data_target: usize,
    meta_target: usize,
    data: Mutex<PackBuilder>,
    meta: Mutex<PackBuilder>,
    /// Blobs this session has packed (stored or on their way).
    pending: Mutex<HashSet<BlobId>>,
    /// What garbage collection condemned when this backup began.
    gc: crate::gc::GcView,
    /// Other workspaces' blobs, shard by shard.
    global: crate::compact::GlobalIndex,
    /// Records that locate blobs this snapshot reuses.
    records: Mutex<HashSet<IndexId>>,
    /// Packs holding reused blobs that no stored record lists yet.
    unrecorded: Mutex<HashSet<PackId>>,
    /// How each pack looked up so far is covered (packs are few, blobs many).
    pack_records: Mutex<HashMap<PackId, Cover>>,
    tx: Mutex<Option<mpsc::Sender<FinishedPack>>>,
    warnings: Mutex<Vec<String>>,
    counters: Counters,
    progress: Arc<Progress>,
    racy_after_ns: i128,
}

/// How a snapshot that reuses a stored pack's blobs locates them.
#[derive(Clone, Copy, Debug)]
enum Cover {
    /// Through this stored record.
    Cite(IndexId),
    /// No stored record lists the pack (an unfinished backup uploaded it): this snapshot's record
    /// adopts it.
    Adopt,
    /// Its record is condemned: store the blob anew.
    Avoid,
}

/// How one attempt at reading a file ended.
enum Attempt {
    Done(Vec<Extent>, Metadata),
    Changed,
}

impl Session {
    fn warn(&self, w: String) {
        tracing::warn!("{w}");
        self.warnings
            .lock()
            .expect("invariant: lock not poisoned")
            .push(w);
    }

    fn skip(&self, w: String) {
        inc(&self.counters.skipped, 1);
        self.warn(w);
    }

    /// Whether the repository already has `id` (recording which record covers it).
    fn known(&self, id: &BlobId) -> Result<bool> {
        let mut found = self.index.blob(id)?;
        if found.is_none()
            && !self
                .pending
                .lock()
                .expect("invariant: lock not poisoned")
                .contains(id)
            && self.global.load_shard_of(&self.index, &self.gc, id)?
        {
            found = self.index.blob(id)?;
            if found.is_some() {
                self.global.hit();
            }
        }
        if let Some(loc) = found.filter(|l| !self.gc.packs.contains(&l.pack)) {
            let cached = self
                .pack_records
                .lock()
                .expect("invariant: lock not poisoned")
                .get(&loc.pack)
                .copied();
            let cover = match cached {
                Some(c) => c,
                None => {
                    let c = match self.index.pack(&loc.pack)?.and_then(|p| p.record) {
                        // A condemned record (and the pack it lists, which may since have
                        // been repacked away) is not deduplicated against.
                        Some(r) if self.gc.records.contains(&r) => Cover::Avoid,
                        Some(r) => Cover::Cite(r),
                        None => Cover::Adopt,
                    };
                    self.pack_records
                        .lock()
                        .expect("invariant: lock not poisoned")
                        .insert(loc.pack, c);
                    c
                }
            };
            match cover {
                Cover::Cite(r) => {
                    self.records
                        .lock()
                        .expect("invariant: lock not poisoned")
                        .insert(r);
                }
                Cover::Adopt => {
                    self.unrecorded
                        .lock()
                        .expect("invariant: lock not poisoned")
                        .insert(loc.pack);
                }
                Cover::Avoid => {
                    return Ok(self
                        .pending
                        .lock()
                        .expect("invariant: lock not poisoned")
                        .contains(id))
                }
            }
            return Ok(true);
        }
        Ok(self
            .pending
            .lock()
            .expect("invariant: lock not poisoned")
            .contains(id))
    }

    /// Stores `raw` as a blob of `kind` unless the repository has it.
    fn put_blob(&self, kind: PackKind, id: BlobId, raw: &[u8]) -> Result<()> {
        if self.known(&id)? {
            return Ok(());
        }
        if !self
            .pending
            .lock()
            .expect("invariant: lock not poisoned")
            .insert(id)
        {
            return Ok(());
        }
        let blob = encode_blob(id, raw, self.zstd_level);
        inc(&self.counters.new_blobs, 1);
        inc(&self.counters.new_bytes, raw.len() as u64);
        let (lock, target) = match kind {
            PackKind::Data => (&self.data, self.data_target),
            PackKind::Meta => (&self.meta, self.meta_target),
        };
        // Seal the open pack before a blob would take it past its target, so packs never
        // outgrow the buffer they were allocated with.
        let full = {
            let mut b = lock.lock().expect("invariant: lock not poisoned");
            let sealed = (!b.is_empty() && b.len() + blob.data.len() > target)
                .then(|| std::mem::replace(&mut *b, PackBuilder::new(kind, target)));
            b.add(&blob);
            sealed
        };
        match full {
            Some(b) => self.send(b.seal()),
            None => Ok(()),
        }
    }

    fn flush(&self, kind: PackKind) -> Result<()> {
        let lock = match kind {
            PackKind::Data => &self.data,
            PackKind::Meta => &self.meta,
        };
        let b = std::mem::replace(
            &mut *lock.lock().expect("invariant: lock not poisoned"),
            PackBuilder::new(kind, 0),
        );
        if b.is_empty() {
            return Ok(());
        }
        self.send(b.seal())
    }

    fn send(&self, pack: FinishedPack) -> Result<()> {
        inc(&self.counters.uploaded_bytes, pack.bytes.len() as u64);
        let tx = self.tx.lock().expect("invariant: lock not poisoned").clone();
        match tx {
            Some(tx) => tx
                .blocking_send(pack)
                .map_err(|_| Error::Invalid("upload stopped".into())),
            None => Err(Error::Invalid("upload stopped".into())),
        }
    }

    /// Backs up the directory at `path` (`rel` from the root) and returns its tree id.
    fn dir(&self, path: &Path, rel: &[u8]) -> Result<BlobId> {
        let rd = fs::read_dir(path).at(path)?;
        let mut names = Vec::new();
        for ent in rd {
            match ent {
                Ok(ent) => names.push(ent.file_name()),
                Err(e) => self.skip(format!("{}: listing failed part-way: {e}", path.display())),
            }
        }
        if rel.is_empty() {
            names.retain(|n| !is_volume_file(n.as_bytes()));
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        inc(&self.counters.dirs, 1);
        Progress::add(&self.progress.entries, 1);
        let entries: Vec<Result<Option<Entry>>> = names
            .par_iter()
            .map(|name| {
                let child = path.join(name);
                let mut child_rel = Vec::with_capacity(rel.len() + 1 + name.len());
                if !rel.is_empty() {
                    child_rel.extend_from_slice(rel);
                    child_rel.push(b'/');
                }
                child_rel.extend_from_slice(name.as_bytes());
                self.entry(&child, &child_rel, name.as_bytes())
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

    /// Backs up one entry. `Ok(None)` means it was left out with a warning.
    fn entry(&self, path: &Path, rel: &[u8], name: &[u8]) -> Result<Option<Entry>> {
        let md = match fs::symlink_metadata(path) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                self.skip(format!("{}: {e}; left out", path.display()));
                return Ok(None);
            }
        };
        let ft = md.file_type();
        let (node, md) = if ft.is_dir() {
            match self.dir(path, rel) {
                Ok(tree) => (Node::Dir { tree }, md),
                Err(Error::Io { path, source }) => {
                    self.skip(format!("{}: {source}; directory left out", path.display()));
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        } else if ft.is_file() {
            match self.file(path, rel, &md)? {
                Some((node, md)) => (node, md),
                None => return Ok(None),
            }
        } else if ft.is_symlink() {
            match fs::read_link(path) {
                Ok(t) => {
                    inc(&self.counters.others, 1);
                    (
                        Node::Symlink {
                            target: t.into_os_string().into_encoded_bytes(),
                        },
                        md,
                    )
                }
                Err(e) => {
                    self.skip(format!("{}: {e}; symlink left out", path.display()));
                    return Ok(None);
                }
            }
        } else if ft.is_fifo() {
            inc(&self.counters.others, 1);
            (Node::Fifo, md)
        } else if ft.is_char_device() {
            inc(&self.counters.others, 1);
            (Node::CharDevice { rdev: md.rdev() }, md)
        } else if ft.is_block_device() {
            inc(&self.counters.others, 1);
            (Node::BlockDevice { rdev: md.rdev() }, md)
        } else {
            // Sockets belong to a running process and cannot be restored meaningfully.
            tracing::debug!(path = %path.display(), "socket skipped");
            return Ok(None);
        };
        Progress::add(&self.progress.entries, 1);
        let mut warn = |w: String| self.warn(w);
        let meta = read_meta(path, &md, &mut warn);
        Ok(Some(Entry {
            name: name.to_vec(),
            node,
            meta,
        }))
    }

    fn file(&self, path: &Path, rel: &[u8], md: &Metadata) -> Result<Option<(Node, Metadata)>> {
        let link_group = (md.nlink() > 1).then(|| md.ino());
        if let Some(c) = self.index.stat(&self.workspace, rel)? {
            if stat_matches(&c, md) && self.all_known(&c.extents)? {
                inc(&self.counters.files, 1);
                inc(&self.counters.bytes, md.len());
                let node = Node::File {
                    size: md.len(),
                    extents: c.extents,
                    link_group,
                };
                return Ok(Some((node, md.clone())));
            }
        }
        for _ in 0..READ_ATTEMPTS {
            match self.read_file(path) {
                Ok(Attempt::Done(extents, md)) => {
                    inc(&self.counters.files, 1);
                    inc(&self.counters.files_read, 1);
                    inc(&self.counters.bytes, md.len());
                    let entry = StatEntry::of(&md, extents);
                    if entry.mtime_ns < self.racy_after_ns {
                        self.index.put_stat(&self.workspace, rel, &entry)?;
                    } else {
                        self.index.drop_stat(&self.workspace, rel)?;
                    }
                    let node = Node::File {
                        size: md.len(),
                        extents: entry.extents,
                        link_group,
                    };
                    return Ok(Some((node, md)));
                }
                Ok(Attempt::Changed) => {
                    // Wait until the file's latest stamp is a tick behind the clock.
                    let stamp = fs::symlink_metadata(path)
                        .map(|m| ns(m.mtime(), m.mtime_nsec()).max(ns(m.ctime(), m.ctime_nsec())))
                        .unwrap_or(0);
                    let wait = (stamp + HOT_NS - now_ns()).clamp(0, HOT_NS);
                    std::thread::sleep(Duration::from_nanos(wait as u64));
                }
                Err(Error::Io { path, source }) => {
                    self.skip(format!("{}: {source}; file left out", path.display()));
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
        self.skip(format!(
            "{}: changed while being read, {READ_ATTEMPTS} times; file left out",
            path.display()
        ));
        Ok(None)
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

    fn read_file(&self, path: &Path) -> Result<Attempt> {
        let started = now_ns();
        let mut f = File::open(path).at(path)?;
        let before = f.metadata().at(path)?;
        if !before.is_file() {
            return Ok(Attempt::Changed);
        }
        let size = before.len();
        let regions = data_regions(&f, &before).at(path)?;
        let mut extents = Vec::new();
        let mut pos = 0u64;
        for (start, len) in regions {
            if start > pos {
                extents.push(Extent::Hole { len: start - pos });
            }
            f.seek(SeekFrom::Start(start)).at(path)?;
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
                (&mut f).take(len).read_to_end(&mut buf).at(path)?;
                chunk_slice(&self.chunker, &buf, &mut sink)?;
            } else {
                chunk_reader(&self.chunker, (&mut f).take(len), &mut sink).map_err(|e| match e {
                    ChunkReadError::Read(source) => Error::io(path, source),
                    ChunkReadError::Sink(e) => e,
                })?;
            }
            inc(&self.counters.bytes_read, got);
            if got != len {
                return Ok(Attempt::Changed);
            }
            pos = start + len;
        }
        if size > pos {
            extents.push(Extent::Hole { len: size - pos });
        }
        let after = f.metadata().at(path)?;
        if !same_version(&before, &after) {
            return Ok(Attempt::Changed);
        }
        // The kernel stamps writes with a coarse clock, so writes during the read can leave the
        // times unchanged if the file was already stamped in the current tick. A file whose mtime
        // or ctime falls inside the read (with a margin for the tick) may have been written
        // while it was read: read it again once its clock has moved on.
        let window = started - HOT_NS..=now_ns() + HOT_NS;
        if window.contains(&ns(after.mtime(), after.mtime_nsec()))
            || window.contains(&ns(after.ctime(), after.ctime_nsec()))
        {
            return Ok(Attempt::Changed);
        }
        Ok(Attempt::Done(extents, before))
    }
}

fn same_version(a: &Metadata, b: &Metadata) -> bool {
    a.len() == b.len()
        && a.ino() == b.ino()
        && ns(a.mtime(), a.mtime_nsec()) == ns(b.mtime(), b.mtime_nsec())
        && ns(a.ctime(), a.ctime_nsec()) == ns(b.ctime(), b.ctime_nsec())
}

fn stat_matches(c: &StatEntry, md: &Metadata) -> bool {
    c.size == md.len()
        && c.ino == md.ino()
        && c.mtime_ns == ns(md.mtime(), md.mtime_nsec())
        && c.ctime_ns == ns(md.ctime(), md.ctime_nsec())
}

/// The `(offset, length)` runs of a file that hold data. A file using fewer blocks than its size
/// may have holes: ask the file system where the data is. Otherwise it is one run.
fn data_regions(f: &File, md: &Metadata) -> std::io::Result<Vec<(u64, u64)>> {
    let size = md.len();
    if size == 0 {
        return Ok(Vec::new());
    }
    if md.blocks() * 512 >= size {
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

/// This machine's host name (what a backup records unless told otherwise).
pub fn hostname() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}
