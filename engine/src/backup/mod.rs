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
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_formats::{
    head_key, index_key, pack_key, snapshot_key, snapshot_prefix, validate_workspace, BlobId, ChunkerParams,
    Head, IndexId, IndexPack, IndexRecord, Manifest, PackId, PackKind, PackTrailer, SnapshotId,
    SnapshotStats, Timestamp, INDEX_PREFIX, PACK_FOOTER_LEN,
};
use futures::stream::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::compress::encode_blob;
use crate::index::LocalIndex;
use crate::meta::timestamp_ns;
use crate::pack::{FinishedPack, PackBuilder};
use crate::progress::Progress;
use crate::repo::{IndexHandle, Repo};
use crate::store::{PutMode, StoreExt};
use crate::volume::{self, dir::Dir};
use crate::{Error, Result};

mod freeze;
mod walk;

use freeze::Frozen;
pub use freeze::{
    freezable, hold_from_env as freeze_hold_from_env, thaw_leftover, Consistency, Freezable, FreezeMode,
    FreezeOptions,
};
pub use walk::MAX_DEPTH;

/// The most index records a snapshot cites (see the consolidation in [`backup`]).
pub const MAX_RECORDS: usize = 16;
/// Sealed packs waiting for an upload slot.
const UPLOAD_QUEUE: usize = 1;
/// Uploads in flight at once.
const UPLOAD_CONCURRENCY: usize = 3;
/// Times a file that changes while it is read is read again before it is left out.
pub(crate) const READ_ATTEMPTS: usize = 3;
/// On a file system that stamps whole seconds, files changed this close to the start of a backup
/// (or after it) are not trusted to the stat cache next time: a later write within the same
/// second could leave size and times unchanged ("racily clean", as git calls it). Nanosecond
/// stamps need only a tick's margin (`walk.rs`, `Session::remember`).
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
    /// Whether to freeze the workspace's file system to fix the checkpoint's instant
    /// (`freeze.rs`); see [`FreezeOptions::from_env`].
    pub freeze: FreezeOptions,
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
    source: &Dir,
    workspace: &str,
    index: &LocalIndex,
) -> Result<Option<SnapshotId>> {
    let Some(m) = volume::read_marker_in(source).filter(|m| m.workspace == workspace) else {
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
    /// How the checkpoint's instant was fixed (frozen, and for how long, or why not).
    pub consistency: Consistency,
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
    // The one descriptor everything below is reached through (`walk.rs`).
    let source = Dir::open(&opts.source).map_err(|e| match e.raw_os_error() {
        Some(c)
            if c == rustix::io::Errno::NOTDIR.raw_os_error()
                || c == rustix::io::Errno::LOOP.raw_os_error() =>
        {
            Error::Invalid(format!(
                "{}: not a directory (a symlink is not followed); back up a workspace directory",
                opts.source.display()
            ))
        }
        _ => Error::io(&opts.source, e),
    })?;

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
        None => match base_of_volume(repo, &source, &opts.workspace, &index).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "the volume's base snapshot is not readable; backing up without it");
                None
            }
        },
    };

    // Whether this checkpoint can be fixed at one instant by freezing the file system.
    let freezable = match opts.freeze.mode {
        FreezeMode::Never => Err("freezing is off (CAIRN_FREEZE=never)".to_string()),
        mode => {
            freeze::thaw_leftover(&opts.cache_dir);
            let f = freeze::freezable(&opts.source, &opts.cache_dir);
            if let (FreezeMode::Always, Err(why)) = (mode, &f) {
                return Err(Error::Invalid(format!(
                    "{}: cannot freeze the workspace ({why}); set CAIRN_FREEZE=auto to read it live instead",
                    opts.source.display()
                )));
            }
            f
        }
    };

    let (tx, rx) = mpsc::channel::<FinishedPack>(UPLOAD_QUEUE);
    let uploader = tokio::spawn(upload_loop(repo.clone(), index.clone(), rx, progress.clone()));
    let session = Arc::new(Session {
        workspace: opts.workspace.clone(),
        index: index.clone(),
        chunker: repo.config().chunker,
        crypt: repo.crypt().clone(),
        zstd_level: repo.config().compression.zstd_level,
        data_target: repo.config().packs.data as usize,
        meta_target: repo.config().packs.meta as usize,
        data: Mutex::new(PackBuilder::new(
            repo.crypt(),
            PackKind::Data,
            repo.config().packs.data as usize,
        )),
        meta: Mutex::new(PackBuilder::new(
            repo.crypt(),
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
        source: opts.source.clone(),
        staging: std::sync::RwLock::new(None),
        prepass: std::sync::atomic::AtomicBool::new(false),
        prepass_floor: std::sync::atomic::AtomicI64::new(0),
        prepass_trees: std::sync::atomic::AtomicBool::new(false),
        fine_stamps: walk::fine_stamps(&source),
    });

    let walker = session.clone();
    let source = Arc::new(source);
    let walk_root = source.clone();
    let (freeze_opts, cache_dir) = (opts.freeze, opts.cache_dir.clone());
    let walked =
        tokio::task::spawn_blocking(move || -> Result<(BlobId, cairn_formats::Meta, Consistency)> {
            let (tree, meta, consistency) = walker.capture(&walk_root, freezable, freeze_opts, &cache_dir)?;
            walker.flush(PackKind::Data)?;
            walker.flush(PackKind::Meta)?;
            Ok((tree, meta, consistency))
        })
        .await
        .map_err(|e| Error::Invalid(format!("backup walker panicked: {e}")))?;
    session.tx.lock().expect("invariant: lock not poisoned").take();
    let uploaded = uploader
        .await
        .map_err(|e| Error::Invalid(format!("uploader panicked: {e}")))?;
    // An upload failure stops the walker with a closed channel; report the upload's error.
    let uploaded = uploaded?;
    let (root, root_meta, consistency) = walked?;

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
        packs.push(
            store_pack(
                repo,
                &index,
                PackBuilder::new(repo.crypt(), PackKind::Meta, 64).seal(),
            )
            .await?,
        );
    }
    for pack in orphans {
        packs.push(adopt_pack(repo, &index, pack).await?);
    }
    packs.sort_by_key(|p| p.pack);
    if !packs.is_empty() {
        let record = IndexRecord { packs };
        let bytes = repo.crypt().seal(INDEX_PREFIX, record.encode());
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
    let bytes = repo
        .crypt()
        .seal(&snapshot_prefix(Some(&opts.workspace)), manifest.encode());
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
    update_marker(&source, &opts.workspace, snapshot, time, manifest_root_mtime);
    Ok(BackupReport {
        snapshot,
        is_head,
        parent: parent.map(|(id, _)| id),
        stats,
        warnings,
        global: session.global.report(),
        consistency,
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
    let body = Bytes::from(repo.crypt().seal(&key, Head { snapshot, time }.encode()));
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
    source: &Dir,
    workspace: &str,
    snapshot: SnapshotId,
    time: Timestamp,
    root_mtime: Timestamp,
) {
    let Some(mut m) = volume::read_marker_in(source) else {
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
    if let Err(e) = volume::rewrite_marker_in(source, &m) {
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
    let trailer = PackTrailer::decode_tail(repo.crypt().keys(), &tail, size)
        .map_err(|e| crate::keys::sealed_error(&key, e))?;
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

impl Counters {
    /// Forgets what a walk counted (before it is done again); what was stored stays counted,
    /// and with `keep_reads` what was read too (a pre-pass's reads are part of the checkpoint's
    /// work).
    fn reset_walk(&self, keep_reads: bool) {
        for a in [&self.files, &self.dirs, &self.others, &self.bytes, &self.skipped] {
            a.store(0, Ordering::Relaxed);
        }
        if !keep_reads {
            self.files_read.store(0, Ordering::Relaxed);
            self.bytes_read.store(0, Ordering::Relaxed);
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
    /// How blobs are named and sealed.
    crypt: crate::keys::Crypt,
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
    /// The source path, for messages (every access goes through descriptors).
    source: PathBuf,
    /// Where changed files' bytes go while the file system is frozen (capture mode).
    staging: std::sync::RwLock<Option<Arc<walk::Staging>>>,
    /// Whether the walk running now is the live pre-pass before a freeze (`walk.rs`): it reads
    /// what changed but stores no tree.
    prepass: std::sync::atomic::AtomicBool,
    /// The stamp clock before the pre-pass's `syncfs` (`walk.rs`): what the pre-pass reads is
    /// trusted as of then, not as of its read.
    prepass_floor: std::sync::atomic::AtomicI64,
    /// Whether the pre-pass stores its trees (to see whether an idle workspace is unchanged).
    prepass_trees: std::sync::atomic::AtomicBool,
    /// Whether the file system stamps times in nanoseconds with the local kernel's clock
    /// (ext4, XFS, btrfs, f2fs, tmpfs): the stat cache's tick-sized margins hold only there.
    fine_stamps: bool,
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
        let blob = encode_blob(&self.crypt, id, raw, self.zstd_level);
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
                .then(|| std::mem::replace(&mut *b, PackBuilder::new(&self.crypt, kind, target)));
            b.add(&blob);
            sealed
        };
        match full {
            Some(b) => self.send(b.seal_shuffled()),
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
            PackBuilder::new(&self.crypt, kind, 0),
        );
        if b.is_empty() {
            return Ok(());
        }
        self.send(b.seal_shuffled())
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
}

/// This machine's host name (what a backup records unless told otherwise).
pub fn hostname() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}
