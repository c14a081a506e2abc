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
//! Invariant 8: names come from validated trees (one component each, no `..`, no `/`), and every
//! access goes through the target's descriptor (`volume/dir.rs`): directories are opened beneath
//! it without following any symlink or crossing a mount, whatever was planted where an entry goes
//! is removed, never followed, and files are created with `O_EXCL` and written through
//! descriptors opened the same way, so no byte goes anywhere outside the target. Before the
//! marker, a walk checks that the target holds what the restore left (`finish.rs`): a restore
//! whose target was changed under it leaves no marker.
//!
//! Code map: `plan.rs` (the plan, the planner, the two-snapshot diff), `fetch.rs` (reads, verify,
//! writes, staged copies), `finish.rs` (links, metadata, the check before the marker).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_formats::{BlobId, Manifest, Node, PackId, SnapshotId, Timestamp};
use rayon::prelude::*;
use serde::Serialize;

use crate::index::{LocalIndex, StatEntry};
use crate::meta::{apply_meta_fd, is_root, now_ns};
use crate::progress::Progress;
use crate::repo::Repo;
use crate::tree::SnapshotTrees;
use crate::volume::dir::{Dir, Stat};
use crate::volume::{self, RestoreMarker, STAGING_DIR};
use crate::{Error, Result, RESTORE_MARKER};

mod fetch;
mod finish;
mod plan;

use fetch::{create_file, fetch, fetch_jobs, Budget, Sink};
use plan::{plan_full, plan_include, plan_update, resolve_includes, Need, Plan};

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
    /// Restore only these paths of the snapshot (relative, `/`-separated, as [`crate::normalize_path`]
    /// gives them) and what is below them. Such a restore claims nothing about the target: it
    /// writes no marker, leaves one that is there (a later backup sees what it wrote as local
    /// changes), seeds no index, and removes nothing. Empty: the whole snapshot.
    pub include: Vec<Vec<u8>>,
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
            include: Vec::new(),
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

/// Restores snapshot `id` (with `manifest`) into `opts.target`.
///
/// # Errors
/// Store errors and [`Error::Corrupt`] for data that fails verification (nothing unverified is
/// written, and no marker is written); [`Error::Io`] naming the local path that failed;
/// [`Error::Invalid`] when the target changed while it was restored (no marker either).
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

/// Opens (creating it if missing) the restore target: a real directory, not a symlink.
fn open_target(target: &Path) -> Result<Dir> {
    std::fs::create_dir_all(target).map_err(|e| Error::io(target, e))?;
    Dir::open(target).map_err(|e| {
        if crate::volume::dir::is_not_dir(&e) {
            Error::Invalid(format!(
                "{}: restore target is not a directory (a symlink is not followed)",
                target.display()
            ))
        } else {
            Error::io(target, e)
        }
    })
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
    // Every path asked for is in the snapshot, before anything is touched.
    let includes = resolve_includes(&trees, &manifest.root, &opts.include)?;
    if !opts.include.is_empty() {
        return restore_paths(repo, &trees, includes, &target, as_root, progress, started).await;
    }
    // The one descriptor every access below goes through.
    let root = Arc::new(open_target(&target)?);
    // Anything in the target changed from here on that the restore did not do fails the check
    // before the marker (finish.rs).
    let before_ns = now_ns();
    // A restore in progress must never look finished: say so before touching anything, then drop
    // the old marker and whatever an interrupted restore left staged.
    volume::begin_restore(&root, &target, &format!("{workspace} {}", id.to_hex()))?;
    root.remove(OsStr::new(RESTORE_MARKER))
        .map_err(|e| Error::io(target.join(RESTORE_MARKER), e))?;
    volume::remove_staging(&root, &target)?;
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
    let (t, r, root_id, exact) = (target.clone(), root.clone(), manifest.root, opts.exact);
    let old_root = opts.previous.as_ref().map(|(_, m)| m.root);
    let trees2 = trees.clone();
    let (plan, update) = tokio::task::spawn_blocking(move || -> Result<(Plan, bool)> {
        if let (Some(old), Some(old_root)) = (old_trees, old_root) {
            if let Some(plan) = plan_update(&trees2, &old, &root_id, &old_root, &r, &t)? {
                return Ok((plan, true));
            }
            tracing::info!("the snapshots differ in hard links; restoring in full");
        }
        Ok((plan_full(&trees2, &root_id, &r, &t, exact)?, false))
    })
    .await
    .map_err(|e| Error::Invalid(format!("restore planner panicked: {e}")))??;
    phase(started, "planned");
    let mut report = RestoreReport {
        files: plan.files.len() as u64,
        dirs: plan.dirs.len() as u64,
        others: plan.others.len() as u64,
        removed: plan.removed,
        update,
        ..RestoreReport::default()
    };

    let sink = write_content(
        repo,
        &trees,
        plan,
        &root,
        &target,
        as_root,
        &progress,
        &mut report,
        started,
    )
    .await?;

    // Hard links and metadata (deepest directories last), sync, then the check that the target
    // holds what was restored; its start is the instant the volume is in sync from.
    let s = sink.clone();
    let seeding = seed_index.is_some();
    let (synced, stats) = tokio::task::spawn_blocking(move || -> Result<(i128, HashMap<PathBuf, Stat>)> {
        let done = std::mem::take(&mut *s.done.lock().expect("invariant: lock not poisoned"));
        let touched = finish::links_and_metadata(&s.root, &s.target, &s.plan, done, as_root)?;
        s.root.syncfs().map_err(|e| Error::io(&s.target, e))?;
        let synced = now_ns();
        let stats = finish::check_target(&s.root, &s.target, &touched, before_ns, seeding)?;
        Ok((synced, stats))
    })
    .await
    .map_err(|e| Error::Invalid(format!("restore worker panicked: {e}")))??;

    // The marker, then the root's own metadata (writing the marker moves the root's times).
    let mut marker = RestoreMarker {
        workspace: workspace.clone(),
        snapshot: Some(id),
        snapshot_time: Some(manifest.time.to_rfc3339()),
        from: (workspace != manifest.workspace).then(|| format!("{}@{}", manifest.workspace, id.to_hex())),
        restored_at: Timestamp::now().to_rfc3339(),
        synced_ns: None,
        root_mtime_ns: None,
    };
    volume::write_marker(&root, &target, &marker)?;
    volume::end_restore(&root, &target)?;
    apply_meta_fd(root.fd(), &manifest.root_meta, as_root).map_err(|e| Error::io(&target, e))?;
    // Setting the root's times hides a top-level entry removed since the check: look again.
    let now: std::collections::HashSet<Vec<u8>> = root
        .names()
        .map_err(|e| Error::io(&target, e))?
        .into_iter()
        .map(|n| n.into_vec())
        .collect();
    if let Some(gone) = trees
        .tree(&manifest.root)?
        .entries
        .iter()
        .find(|e| !now.contains(&e.name))
    {
        root.remove_file(OsStr::new(RESTORE_MARKER))
            .map_err(|e| Error::io(target.join(RESTORE_MARKER), e))?;
        return Err(Error::Invalid(format!(
            "{}: removed while it was being restored; the restore is not marked complete (run it again once \
             nothing else writes the target)",
            target.join(OsStr::from_bytes(&gone.name)).display()
        )));
    }
    volume::mark_synced(&root, &target, &mut marker, synced)?;
    volume::rewrite_marker(&root, &target, &marker)?;
    phase(started, "metadata applied, synced, checked, marked");

    if let Some((index, synced)) = seed_index {
        let seeded = async {
            synced
                .await
                .map_err(|e| Error::Invalid(format!("index sync panicked: {e}")))??;
            let (trees, ws) = (trees.clone(), workspace.clone());
            tokio::task::spawn_blocking(move || {
                seed_stat_cache(&index, &ws, &trees, &root_id, &stats, as_root)
            })
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

/// Creates the plan's files at their final size, then fetches, verifies and writes their content
/// (copying what staged files on disk supply first); counts into `report`. Returns the sink, for
/// the hard links and metadata.
#[allow(clippy::too_many_arguments)]
async fn write_content(
    repo: &Repo,
    trees: &Arc<SnapshotTrees>,
    mut plan: Plan,
    root: &Arc<Dir>,
    target: &Path,
    as_root: bool,
    progress: &Arc<Progress>,
    report: &mut RestoreReport,
    started: Instant,
) -> Result<Arc<Sink>> {
    // Reads start now, while the files are created: the first ones are in flight (and their
    // latency spent) by the time there is somewhere to write them.
    let local = std::mem::take(&mut plan.local);
    let sink = Arc::new(Sink::new(
        Arc::new(plan),
        &local,
        root.clone(),
        target.to_path_buf(),
        as_root,
        repo.crypt().clone(),
    ));
    let max_read = repo.store().read_size();
    let budget = Arc::new(Budget::new());
    let jobs = fetch_jobs(trees, sink.plan.needs.iter(), max_read)?;
    let (created_tx, created) = tokio::sync::watch::channel(false);
    let fetching = tokio::spawn(fetch(
        repo.clone(),
        sink.clone(),
        progress.clone(),
        budget.clone(),
        jobs,
        created,
    ));
    let mut fetching = AbortOnDrop(fetching);

    // Create every file at its final size (holes stay holes).
    let s = sink.clone();
    let failed = tokio::task::spawn_blocking(move || -> Result<(Vec<plan::LocalNeed>, u64)> {
        s.plan
            .files
            .par_iter()
            .enumerate()
            .filter(|(_, f)| f.link_to.is_none())
            .try_for_each(|(i, _)| create_file(&s, i))?;
        if local.is_empty() {
            return Ok((Vec::new(), 0));
        }
        // Chunks already on disk: copy, verified, before fetching the rest.
        let staging = s
            .root
            .open_dir(Path::new(STAGING_DIR))
            .map_err(|e| Error::io(s.target.join(STAGING_DIR), e))?;
        let copied: Vec<(Vec<plan::LocalNeed>, u64)> = local
            .into_par_iter()
            .map(|(src, needs)| fetch::copy_local(&s, &staging, &src, needs))
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
        let jobs = fetch_jobs(trees, extra.iter(), max_read)?;
        let (_done, created) = tokio::sync::watch::channel(true);
        let (f, w) = fetch(
            repo.clone(),
            sink.clone(),
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
    Ok(sink)
}

/// [`restore_with_trees`] of some paths only ([`RestoreOptions::include`], resolved): no marker,
/// no index, nothing removed; the entries' own metadata, and the parents' only where they were
/// created.
async fn restore_paths(
    repo: &Repo,
    trees: &Arc<SnapshotTrees>,
    includes: Vec<plan::Included>,
    target: &Path,
    as_root: bool,
    progress: Arc<Progress>,
    started: Instant,
) -> Result<RestoreReport> {
    let root = Arc::new(open_target(target)?);
    let (t, r, t2) = (target.to_path_buf(), root.clone(), trees.clone());
    let plan = tokio::task::spawn_blocking(move || plan_include(&t2, &r, &t, &includes))
        .await
        .map_err(|e| Error::Invalid(format!("restore planner panicked: {e}")))??;
    progress.total_bytes.store(
        plan.files.iter().map(|f| f.size).sum(),
        std::sync::atomic::Ordering::Relaxed,
    );
    let mut report = RestoreReport {
        files: plan.files.len() as u64,
        dirs: plan.dirs.len() as u64,
        others: plan.others.len() as u64,
        ..RestoreReport::default()
    };
    let sink = write_content(
        repo,
        trees,
        plan,
        &root,
        target,
        as_root,
        &progress,
        &mut report,
        started,
    )
    .await?;
    tokio::task::spawn_blocking(move || -> Result<()> {
        let done = std::mem::take(&mut *sink.done.lock().expect("invariant: lock not poisoned"));
        finish::links_and_metadata(&sink.root, &sink.target, &sink.plan, done, as_root)?;
        sink.root.syncfs().map_err(|e| Error::io(&sink.target, e))
    })
    .await
    .map_err(|e| Error::Invalid(format!("restore worker panicked: {e}")))??;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Logs the end of a restore phase (debug level: `RUST_LOG=cairn_engine::restore=debug`).
fn phase(started: Instant, what: &str) {
    tracing::debug!(ms = started.elapsed().as_secs_f64() * 1e3, "restore: {what}");
}

/// A spawned task that is cancelled if the restore returns early (an error) before awaiting it.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Records every restored file's identity (as the check before the marker saw it) and content
/// in the stat cache.
fn seed_stat_cache(
    index: &LocalIndex,
    workspace: &str,
    trees: &SnapshotTrees,
    root: &BlobId,
    stats: &HashMap<PathBuf, Stat>,
    as_root: bool,
) -> Result<u64> {
    let mut entries: Vec<(Vec<u8>, StatEntry)> = Vec::new();
    trees.walk(root, &mut |rel, e| {
        if let Node::File { extents, .. } = &e.node {
            if let Some(st) = stats.get(Path::new(OsStr::from_bytes(rel))) {
                // What the restore set: every xattr as root; otherwise only `user.` ones are
                // sure to have been set (the others are skipped when refused).
                let xattrs = e
                    .meta
                    .xattrs
                    .iter()
                    .filter(|x| as_root || x.name.starts_with(b"user."))
                    .cloned()
                    .collect();
                entries.push((rel.to_vec(), StatEntry::of(st, extents.clone(), xattrs)));
            }
        }
        Ok(())
    })?;
    index.put_stats(workspace, &entries)?;
    Ok(entries.len() as u64)
}
