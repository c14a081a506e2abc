//! Restore: rebuild a snapshot in a target directory, verified, metadata exact, marker last.
//!
//! Plan, then fetch. The trees are walked once to create directories, links and special files and
//! to list, per pack, which blob goes to which file offset. Then ranges of each pack are fetched
//! (adjacent blobs coalesced into one read, several reads in flight), every blob is decompressed
//! and checked against its BLAKE3 id on a blocking thread, and written at its offsets. Metadata is
//! applied after content (directories deepest first, so their times stick), the file system is
//! synced, and the completion marker is written last.
//!
//! An update restore (the target holds an older snapshot, unchanged since: see `volume.rs`) plans
//! only the difference between the two snapshots' trees: identical subtrees are skipped unseen,
//! replaced and removed files are moved into a staging directory, and their chunks are copied from
//! there (verified) instead of fetched.
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
    pack_key, BlobId, Entry, Extent, Manifest, Meta, Node, PackEntry, PackId, PackKind, SnapshotId, Timestamp,
};
use futures::stream::{self, StreamExt, TryStreamExt};
use rayon::prelude::*;
use serde::Serialize;

use crate::compress::decode_blob;
use crate::error::IoContext;
use crate::index::{LocalIndex, StatEntry};
use crate::meta::{apply_meta, is_root, Target};
use crate::progress::Progress;
use crate::repo::Repo;
use crate::tree::SnapshotTrees;
use crate::volume::{self, RestoreMarker};
use crate::{Error, Result, RESTORE_MARKER};

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

/// Where and how to restore.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// The directory to restore into (created if missing).
    pub target: PathBuf,
    /// Restore owners and groups (default: when running as root).
    pub owners: Option<bool>,
    /// The workspace the target belongs to, for its marker and stat cache (default: the
    /// snapshot's own; differs when a workspace starts from a base snapshot).
    pub workspace: Option<String>,
    /// The snapshot the target holds, unchanged since (see [`crate::local_changes`]): only what
    /// differs is written, and chunks of replaced files are copied from disk, not fetched.
    pub previous: Option<(SnapshotId, Manifest)>,
    /// Remove entries the snapshot does not have (for a volume an interrupted restore left).
    pub exact: bool,
    /// Seed the local index in this cache directory (blob locations and the stat cache), so the
    /// next backup of the target reads only files changed after the restore.
    pub cache_dir: Option<PathBuf>,
}

impl RestoreOptions {
    /// A plain restore into `target`.
    pub fn new(target: impl Into<PathBuf>) -> Self {
        RestoreOptions {
            target: target.into(),
            owners: None,
            workspace: None,
            previous: None,
            exact: false,
            cache_dir: None,
        }
    }
}

/// What a restore did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RestoreReport {
    /// Regular files written.
    pub files: u64,
    /// Directories created or updated.
    pub dirs: u64,
    /// Symlinks, FIFOs, devices and hard links written, and entries whose metadata alone changed.
    pub others: u64,
    /// File bytes written (holes excluded).
    pub bytes: u64,
    /// Bytes fetched from the store.
    pub fetched: u64,
    /// Bytes copied from files already on disk (verified) instead of fetched.
    pub reused: u64,
    /// Entries removed because the snapshot does not have them.
    pub removed: u64,
    /// Whether only the differences from the previous snapshot were applied.
    pub update: bool,
    /// Stat-cache entries seeded for the next backup.
    pub seeded: u64,
    /// Wall time.
    pub elapsed: Duration,
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

/// A chunk to copy from a file already on disk (moved into the staging directory).
struct LocalNeed {
    id: BlobId,
    from: u64,
    len: u32,
    file: usize,
    offset: u64,
}

#[derive(Default)]
struct Plan {
    dirs: Vec<(PathBuf, Meta)>,
    files: Vec<FilePlan>,
    others: Vec<(PathBuf, Meta, Target)>,
    needs: HashMap<PackId, Vec<Need>>,
    /// Staged files and the chunks copied from each.
    local: Vec<(PathBuf, Vec<LocalNeed>)>,
    removed: u64,
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
    let workspace = opts
        .workspace
        .clone()
        .unwrap_or_else(|| manifest.workspace.clone());
    fs::create_dir_all(&target).at(&target)?;
    if !fs::metadata(&target).at(&target)?.is_dir() {
        return Err(Error::Invalid(format!(
            "{}: restore target is not a directory",
            target.display()
        )));
    }
    // A restore in progress must never look finished: say so before touching anything, then drop
    // the old marker and whatever an interrupted restore left staged.
    volume::begin_restore(&target, &format!("{workspace} {}", id.to_hex()))?;
    match fs::remove_file(target.join(RESTORE_MARKER)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(target.join(RESTORE_MARKER), e)),
    }
    volume::remove_staging(&target)?;
    progress
        .total_bytes
        .store(manifest.stats.bytes, std::sync::atomic::Ordering::Relaxed);

    // Seeding the index's blob locations (from the records the trees were loaded with) overlaps
    // with the restore.
    let seed_index = match &opts.cache_dir {
        Some(dir) => {
            let index = Arc::new(repo.open_index(dir)?);
            let (repo, t, i) = (repo.clone(), trees.clone(), index.clone());
            Some((
                index,
                tokio::spawn(async move {
                    crate::gc::sync_generation(&repo, &i).await?;
                    tokio::task::spawn_blocking(move || i.add_locations(t.locations()))
                        .await
                        .map_err(|e| Error::Invalid(format!("index seeding panicked: {e}")))?
                }),
            ))
        }
        None => None,
    };

    let old_trees = match &opts.previous {
        Some((_, m)) => Some(Arc::new(SnapshotTrees::load_sharing(repo, m, &trees).await?)),
        None => None,
    };
    let (t, root, exact) = (target.clone(), manifest.root, opts.exact);
    let old_root = opts.previous.as_ref().map(|(_, m)| m.root);
    let trees2 = trees.clone();
    let (plan, update) = tokio::task::spawn_blocking(move || -> Result<(Plan, bool)> {
        if let (Some(old), Some(old_root)) = (old_trees, old_root) {
            if let Some(plan) = plan_update(&trees2, &old, &root, &old_root, &t)? {
                return Ok((plan, true));
            }
            tracing::info!("the snapshots differ in hard links; restoring in full");
        }
        Ok((plan_full(&trees2, &root, &t, exact)?, false))
    })
    .await
    .map_err(|e| Error::Invalid(format!("restore planner panicked: {e}")))??;
    let mut plan = plan;
    phase(started, "planned");
    let mut report = RestoreReport {
        files: plan.files.len() as u64,
        dirs: plan.dirs.len() as u64,
        others: plan.others.len() as u64,
        removed: plan.removed,
        update,
        ..RestoreReport::default()
    };

    // Reads start now, while the files are created: the first ones are in flight (and their
    // latency spent) by the time there is somewhere to write them.
    let local = std::mem::take(&mut plan.local);
    let plan = Arc::new(plan);
    let max_read = repo.store().read_size();
    let budget = Arc::new(Budget::new());
    let jobs = fetch_jobs(&trees, plan.needs.iter(), max_read)?;
    let (created_tx, created) = tokio::sync::watch::channel(false);
    let fetching = tokio::spawn(fetch(
        repo.clone(),
        plan.clone(),
        progress.clone(),
        budget.clone(),
        jobs,
        created,
    ));
    let mut fetching = AbortOnDrop(fetching);

    // Create every file at its final size (holes stay holes).
    let p = plan.clone();
    let failed = tokio::task::spawn_blocking(move || -> Result<(Vec<LocalNeed>, u64)> {
        p.files
            .par_iter()
            .filter(|f| f.link_to.is_none())
            .try_for_each(|f| create_file(&f.path, f.size))?;
        // Chunks already on disk: copy, verified, before fetching the rest.
        let copied: Vec<(Vec<LocalNeed>, u64)> = local
            .into_par_iter()
            .map(|(src, needs)| copy_local(&p, &src, needs))
            .collect::<Result<_>>()?;
        let mut failed = Vec::new();
        let mut reused = 0;
        for (f, r) in copied {
            failed.extend(f);
            reused += r;
        }
        Ok((failed, reused))
    })
    .await
    .map_err(|e| Error::Invalid(format!("restore worker panicked: {e}")))??;
    let (failed, reused) = failed;
    phase(started, "files created");
    report.reused = reused;
    Progress::add(&progress.bytes, reused);

    // Fetch, verify and write content: what the plan needs (already in flight), then what the
    // staged copies could not supply.
    let _ = created_tx.send(true);
    let mut extra: HashMap<PackId, Vec<Need>> = HashMap::new();
    for n in failed {
        let loc = trees.locations().get(&n.id)?;
        extra.entry(loc.pack).or_default().push(Need {
            entry: loc.entry,
            file: n.file,
            offset: n.offset,
        });
    }
    let (mut fetched, mut written) = (&mut fetching.0)
        .await
        .map_err(|e| Error::Invalid(format!("restore fetcher panicked: {e}")))??;
    if !extra.is_empty() {
        let jobs = fetch_jobs(&trees, extra.iter(), max_read)?;
        let (_done, created) = tokio::sync::watch::channel(true);
        let (f, w) = fetch(
            repo.clone(),
            plan.clone(),
            progress.clone(),
            budget,
            jobs,
            created,
        )
        .await?;
        fetched += f;
        written += w;
    }
    report.fetched = fetched;
    report.bytes = reused + written;
    phase(started, "content written");

    // Hard links, metadata (deepest directories last), sync, marker, then the root's own metadata.
    let p = plan.clone();
    let t = target.clone();
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

    let mut marker = RestoreMarker {
        workspace: workspace.clone(),
        snapshot: Some(id),
        snapshot_time: Some(manifest.time.to_rfc3339()),
        from: (workspace != manifest.workspace).then(|| format!("{}@{}", manifest.workspace, id.to_hex())),
        restored_at: Timestamp::now().to_rfc3339(),
        synced_ns: None,
        root_mtime_ns: None,
    };
    volume::write_marker(&target, &marker)?;
    volume::end_restore(&target)?;
    apply_meta(&target, &manifest.root_meta, Target::Other, as_root)?;
    // Everything above changed ctimes before this instant; anything later is the workload's.
    volume::mark_synced(&target, &mut marker)?;
    volume::rewrite_marker(&target, &marker)?;
    phase(started, "metadata applied, synced, marked");

    if let Some((index, synced)) = seed_index {
        let seeded = async {
            synced
                .await
                .map_err(|e| Error::Invalid(format!("index sync panicked: {e}")))??;
            let (t, trees, ws) = (target.clone(), trees.clone(), workspace.clone());
            tokio::task::spawn_blocking(move || seed_stat_cache(&index, &ws, &trees, &root, &t))
                .await
                .map_err(|e| Error::Invalid(format!("stat-cache seeding panicked: {e}")))?
        }
        .await;
        match seeded {
            Ok(n) => report.seeded = n,
            // A cache: the next backup reads more, nothing else.
            Err(e) => {
                tracing::warn!(error = %e, "could not seed the local index; the next backup reads every file")
            }
        }
    }
    phase(started, "index seeded");
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Logs the end of a restore phase (debug level: `RUST_LOG=cairn_engine::restore=debug`).
fn phase(started: Instant, what: &str) {
    tracing::debug!(ms = started.elapsed().as_secs_f64() * 1e3, "restore: {what}");
}

/// One read of a pack: its key's kind and the run of blobs it covers.
type Job = (PackId, PackKind, Run);

/// The reads that fetch `needs` (per pack), each at most `max_read` bytes.
fn fetch_jobs<'a>(
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
struct Budget {
    mib: tokio::sync::Semaphore,
}

impl Budget {
    fn new() -> Self {
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
async fn fetch(
    repo: Repo,
    plan: Arc<Plan>,
    progress: Arc<Progress>,
    budget: Arc<Budget>,
    jobs: Vec<Job>,
    created: tokio::sync::watch::Receiver<bool>,
) -> Result<(u64, u64)> {
    let done: Vec<(u64, u64)> = stream::iter(jobs)
        .map(|(pack, kind, run)| {
            let (repo, plan, progress, budget) =
                (repo.clone(), plan.clone(), progress.clone(), budget.clone());
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
                    let written = write_run(&plan, &key, &run, &data, &progress);
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

/// A spawned task that is cancelled if the restore returns early (an error) before awaiting it.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Records every restored file's identity and content in the stat cache.
fn seed_stat_cache(
    index: &LocalIndex,
    workspace: &str,
    trees: &SnapshotTrees,
    root: &BlobId,
    target: &Path,
) -> Result<u64> {
    let mut files = Vec::new();
    trees.walk(root, &mut |rel, e| {
        if let Node::File { extents, .. } = &e.node {
            files.push((rel.to_vec(), extents.clone()));
        }
        Ok(())
    })?;
    let entries: Vec<(Vec<u8>, StatEntry)> = files
        .into_par_iter()
        .filter_map(|(rel, extents)| {
            let md = fs::symlink_metadata(target.join(OsStr::from_bytes(&rel))).ok()?;
            md.is_file().then(|| (rel, StatEntry::of(&md, extents)))
        })
        .collect();
    index.put_stats(workspace, &entries)?;
    Ok(entries.len() as u64)
}

/// Builds the plan of a whole snapshot, creating directories, links and special files on the way.
fn plan_full(trees: &SnapshotTrees, root: &BlobId, target: &Path, exact: bool) -> Result<Plan> {
    let mut p = Planner::new(trees, exact);
    if exact {
        p.prune(target, root, true)?;
    }
    p.subtree(target, root)?;
    Ok(p.plan)
}

/// Builds the plan that turns a target holding `old_root` (unchanged) into `root`: identical
/// subtrees are skipped without a look; changed entries are removed and re-created, and the files
/// they replace are staged so their chunks are copied rather than fetched. `None` if the
/// snapshots differ in hard-linked files, which only a full restore lays out right.
fn plan_update(
    trees: &SnapshotTrees,
    old: &SnapshotTrees,
    root: &BlobId,
    old_root: &BlobId,
    target: &Path,
) -> Result<Option<Plan>> {
    let mut diff = Diff::default();
    diff.dir(trees, old, target, root, old_root)?;
    if diff.links {
        return Ok(None);
    }
    let mut p = Planner::new(trees, false);
    // Stage what goes away (files by rename, for their chunks), then create what is new.
    let staging = target.join(volume::STAGING_DIR);
    let mut sources: HashMap<BlobId, (usize, u64, u32)> = HashMap::new();
    for (path, entry) in &diff.removes {
        p.plan.removed += 1;
        let mut files = Vec::new();
        match &entry.node {
            Node::File { extents, .. } => files.push((path.clone(), extents.clone())),
            Node::Dir { tree } => old.walk(tree, &mut |rel, e| {
                if let Node::File { extents, .. } = &e.node {
                    files.push((path.join(OsStr::from_bytes(rel)), extents.clone()));
                }
                Ok(())
            })?,
            _ => {}
        }
        for (from, extents) in files {
            if p.plan.local.is_empty() {
                ensure_dir(&staging)?;
            }
            let staged = staging.join(p.plan.local.len().to_string());
            if fs::rename(&from, &staged).is_err() {
                continue; // gone or on another file system: fetched instead
            }
            let mut offset = 0u64;
            for x in &extents {
                if let Extent::Chunk { id, len } = x {
                    sources.entry(*id).or_insert((p.plan.local.len(), offset, *len));
                }
                offset += x.len();
            }
            p.plan.local.push((staged, Vec::new()));
        }
        clear(path)?;
    }
    p.sources = Some(sources);
    for (path, entry) in &diff.adds {
        p.entry(path.clone(), entry)?;
        if let Node::Dir { tree } = &entry.node {
            p.subtree(path, tree)?;
        }
    }
    p.plan.others.extend(diff.meta_only);
    // Changed directories were recorded parents first, as the full walk does.
    p.plan.dirs.extend(diff.dirs);
    Ok(Some(p.plan))
}

/// The differences between two snapshots' trees, found without touching the disk.
#[derive(Default)]
struct Diff {
    removes: Vec<(PathBuf, Entry)>,
    adds: Vec<(PathBuf, Entry)>,
    meta_only: Vec<(PathBuf, Meta, Target)>,
    dirs: Vec<(PathBuf, Meta)>,
    /// A hard-linked file is among the changes.
    links: bool,
}

impl Diff {
    fn dir(
        &mut self,
        new: &SnapshotTrees,
        old: &SnapshotTrees,
        path: &Path,
        id: &BlobId,
        old_id: &BlobId,
    ) -> Result<()> {
        if id == old_id {
            return Ok(());
        }
        let (a, b) = (new.tree(id)?, old.tree(old_id)?);
        let (mut i, mut j) = (0, 0);
        while i < a.entries.len() || j < b.entries.len() {
            let order = match (a.entries.get(i), b.entries.get(j)) {
                (Some(x), Some(y)) => x.name.cmp(&y.name),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => {
                    let e = &a.entries[i];
                    self.add(new, path.join(OsStr::from_bytes(&e.name)), e)?;
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    let e = &b.entries[j];
                    self.removes
                        .push((path.join(OsStr::from_bytes(&e.name)), e.clone()));
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    let (e, o) = (&a.entries[i], &b.entries[j]);
                    let child = path.join(OsStr::from_bytes(&e.name));
                    match (&e.node, &o.node) {
                        (Node::Dir { tree }, Node::Dir { tree: old_tree }) => {
                            if tree != old_tree || e.meta != o.meta {
                                self.dirs.push((child.clone(), e.meta.clone()));
                            }
                            self.dir(new, old, &child, tree, old_tree)?;
                        }
                        _ if same_node(&e.node, &o.node) => {
                            if e.meta != o.meta {
                                let kind = match e.node {
                                    Node::Symlink { .. } => Target::Symlink,
                                    _ => Target::Other,
                                };
                                self.meta_only.push((child, e.meta.clone(), kind));
                            }
                        }
                        _ => {
                            self.removes.push((child.clone(), o.clone()));
                            self.add(new, child, e)?;
                        }
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        Ok(())
    }

    fn add(&mut self, new: &SnapshotTrees, path: PathBuf, e: &Entry) -> Result<()> {
        match &e.node {
            Node::File { link_group, .. } => self.links |= link_group.is_some(),
            Node::Dir { tree } => new.walk(tree, &mut |_, e| {
                if let Node::File {
                    link_group: Some(_), ..
                } = e.node
                {
                    self.links = true;
                }
                Ok(())
            })?,
            _ => {}
        }
        self.adds.push((path, e.clone()));
        Ok(())
    }
}

/// Whether two entries' nodes have the same content. Link-group ids are inode numbers of the
/// backed-up volume, so they differ between snapshots of different volumes for the same files;
/// what counts is whether the file is hard-linked at all. (A file that stays linked but to other
/// names is not re-linked by an update; its bytes are right.)
fn same_node(a: &Node, b: &Node) -> bool {
    match (a, b) {
        (
            Node::File {
                size,
                extents,
                link_group,
            },
            Node::File {
                size: s2,
                extents: e2,
                link_group: g2,
            },
        ) => size == s2 && extents == e2 && link_group.is_some() == g2.is_some(),
        _ => a == b,
    }
}

/// Lays out entries: creates directories, links and special files, and lists file content.
struct Planner<'a> {
    trees: &'a SnapshotTrees,
    plan: Plan,
    groups: HashMap<u64, usize>,
    exact: bool,
    /// Chunks of staged files (update restores): id -> (staged file, offset, length).
    sources: Option<HashMap<BlobId, (usize, u64, u32)>>,
}

impl<'a> Planner<'a> {
    fn new(trees: &'a SnapshotTrees, exact: bool) -> Self {
        Planner {
            trees,
            plan: Plan::default(),
            groups: HashMap::new(),
            exact,
            sources: None,
        }
    }

    /// Plans every entry below the directory `dir` (whose tree is `id`), parents first.
    fn subtree(&mut self, dir: &Path, id: &BlobId) -> Result<()> {
        let trees = self.trees;
        trees.walk(id, &mut |rel, e| self.entry(dir.join(OsStr::from_bytes(rel)), e))
    }

    /// Removes whatever is in `dir` that the tree `id` does not list.
    fn prune(&mut self, dir: &Path, id: &BlobId, is_root: bool) -> Result<()> {
        let tree = self.trees.tree(id)?;
        let keep: std::collections::HashSet<&[u8]> = tree.entries.iter().map(|e| e.name.as_slice()).collect();
        for ent in fs::read_dir(dir).at(dir)? {
            let name = ent.at(dir)?.file_name();
            let n = name.as_bytes();
            let ours = is_root && volume::is_volume_file(n);
            if !(keep.contains(n) || ours) {
                clear(&dir.join(&name))?;
                self.plan.removed += 1;
            }
        }
        Ok(())
    }

    fn entry(&mut self, path: PathBuf, e: &Entry) -> Result<()> {
        match &e.node {
            Node::Dir { tree } => {
                if ensure_dir(&path)? && self.exact {
                    self.prune(&path, tree, false)?;
                }
                self.plan.dirs.push((path, e.meta.clone()));
            }
            Node::File {
                size,
                extents,
                link_group,
            } => {
                let idx = self.plan.files.len();
                let link_to = match link_group {
                    Some(g) => match self.groups.get(g) {
                        Some(first) => Some(*first),
                        None => {
                            self.groups.insert(*g, idx);
                            None
                        }
                    },
                    None => None,
                };
                if link_to.is_none() {
                    let mut offset = 0u64;
                    for x in extents {
                        if let Extent::Chunk { id, .. } = x {
                            if let Some(&(src, from, len)) = self.sources.as_ref().and_then(|s| s.get(id)) {
                                self.plan.local[src].1.push(LocalNeed {
                                    id: *id,
                                    from,
                                    len,
                                    file: idx,
                                    offset,
                                });
                            } else {
                                let loc = self.trees.locations().get(id)?;
                                if loc.kind != PackKind::Data {
                                    return Err(Error::Corrupt {
                                        object: format!("blob {id}"),
                                        detail: "file content located in a metadata pack".into(),
                                    });
                                }
                                self.plan.needs.entry(loc.pack).or_default().push(Need {
                                    entry: loc.entry,
                                    file: idx,
                                    offset,
                                });
                            }
                        }
                        offset += x.len();
                    }
                }
                self.plan.files.push(FilePlan {
                    path,
                    meta: e.meta.clone(),
                    size: *size,
                    link_to,
                });
            }
            Node::Symlink { target: to } => {
                clear(&path)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(to), &path).at(&path)?;
                self.plan.others.push((path, e.meta.clone(), Target::Symlink));
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
                self.plan.others.push((path, e.meta.clone(), Target::Other));
            }
        }
        Ok(())
    }
}

/// The file `file` of the plan opened for writing (never through a symlink), once per caller.
fn open_target<'a>(open: &'a mut HashMap<usize, File>, plan: &Plan, file: usize) -> Result<&'a mut File> {
    Ok(match open.entry(file) {
        std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
        std::collections::hash_map::Entry::Vacant(v) => {
            let path = &plan.files[file].path;
            v.insert(
                OpenOptions::new()
                    .write(true)
                    .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                    .open(path)
                    .at(path)?,
            )
        }
    })
}

/// Copies chunks from a staged file, each verified against its id. Returns the needs whose bytes
/// did not verify (to fetch instead) and the bytes copied.
fn copy_local(plan: &Plan, src: &Path, needs: Vec<LocalNeed>) -> Result<(Vec<LocalNeed>, u64)> {
    let Ok(f) = File::open(src) else {
        return Ok((needs, 0));
    };
    let mut open: HashMap<usize, File> = HashMap::new();
    let mut failed = Vec::new();
    let mut copied = 0u64;
    let mut buf = Vec::new();
    for n in needs {
        buf.resize(n.len as usize, 0);
        if f.read_exact_at(&mut buf, n.from).is_err() || BlobId::of(&buf) != n.id {
            failed.push(n);
            continue;
        }
        let path = &plan.files[n.file].path;
        open_target(&mut open, plan, n.file)?
            .write_all_at(&buf, n.offset)
            .at(path)?;
        copied += buf.len() as u64;
    }
    Ok((failed, copied))
}

/// Makes `path` a real directory: keeps one, replaces anything else (a symlink is never followed).
/// Returns whether a directory was already there.
fn ensure_dir(path: &Path) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => return Ok(true),
        Ok(_) => fs::remove_file(path).at(path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(path, e)),
    }
    fs::create_dir(path).at(path)?;
    Ok(false)
}

/// Removes whatever is at `path` (a file, a link, a directory tree) so a new entry can be created.
pub(crate) fn clear(path: &Path) -> Result<()> {
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
            || format!("blob {} in {key}", e.id.short()),
            &e.id,
            stored,
            e.raw_len,
            e.codec,
        )?;
        for (file, offset) in targets {
            let path = &plan.files[*file].path;
            open_target(&mut open, plan, *file)?
                .write_all_at(&raw, *offset)
                .at(path)?;
            written += raw.len() as u64;
            Progress::add(&progress.bytes, raw.len() as u64);
        }
    }
    Ok(written)
}
