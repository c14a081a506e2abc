//! `initctl restore`: a plain restore of a named snapshot, or (for `latest`, the init container's
//! job) a reconcile of the workspace volume with the workspace's head.
//!
//! The reconcile, in order:
//! 1. Wait (bounded by `--wait-previous`) while another pod's sidecar of this workspace still
//!    runs, so its final snapshot is sealed before this pod picks the latest; past the bound,
//!    go on with the last sealed snapshot and report a degraded start.
//! 2. Look at the volume (see the engine's `volume.rs`):
//!    - empty, or left by an interrupted restore: restore the head, else the `--base`, else start
//!      empty; an interrupted restore is redone and what the snapshot lacks is removed;
//!    - marked with the head's snapshot and unchanged since: nothing to do (milliseconds);
//!    - marked with an older snapshot and unchanged since: bring it up to date, writing only what
//!      differs and copying chunks of replaced files from disk;
//!    - changed since its marker (the node died before the final checkpoint), or content without
//!      a marker: never rolled back. Back it up first (`--local-changes backup`, the default: it
//!      becomes the head unless a newer one exists) or keep it as is (`keep`), and exit 0.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cairn_engine::formats::{Manifest, SnapshotId};
use cairn_engine::{
    backup, heartbeat_objects, heartbeats, heartbeats_from, inspect, local_changes, unix_now, BackupOptions,
    Heartbeat, LocalChanges, Progress, Repo, RestoreMarker, RestoreOptions, VolumeState,
};
use clap::builder::BoolishValueParser;
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use crate::{exit, output, Global};

/// What to do with a volume that has changes its snapshot does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LocalChangesPolicy {
    /// Back the volume up first (a new snapshot), then start on it.
    Backup,
    /// Start on it as it is; the sidecar's next checkpoint saves the changes.
    Keep,
}

/// Restore a snapshot; for the latest, reconcile the volume with the workspace (init containers).
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The workspace to restore.
    #[arg(long, short, env = "CAIRN_WORKSPACE")]
    workspace: String,
    /// Snapshot id (or a unique prefix of 4+ hex digits); the latest by default.
    #[arg(long, env = "CAIRN_SNAPSHOT", default_value = "latest")]
    snapshot: String,
    /// Restore owners and groups (default: when running as root).
    #[arg(long, env = "CAIRN_OWNERS", value_parser = BoolishValueParser::new())]
    owners: Option<bool>,
    /// Where a workspace without snapshots starts from: another workspace's latest snapshot, or
    /// WORKSPACE@SNAPSHOT. Without it, such a workspace starts empty.
    #[arg(long, env = "CAIRN_BASE")]
    base: Option<String>,
    /// How long to wait for another pod of this workspace whose sidecar still runs (its final
    /// snapshot not sealed yet) before restoring the last sealed one; 0 does not wait.
    #[arg(long, env = "CAIRN_WAIT_PREVIOUS", default_value = "60s", value_parser = cairn_engine::parse_duration_arg)]
    wait_previous: Duration,
    /// How long to keep retrying a store that cannot be reached or refuses the credentials
    /// (a new pod's credentials can take seconds to appear).
    #[arg(long, env = "CAIRN_STORE_WAIT", default_value = "60s", value_parser = cairn_engine::parse_duration_arg)]
    store_wait: Duration,
    /// A volume with changes its snapshot does not have (the pod's node died before the final
    /// checkpoint) is never rolled back: back the changes up first, or keep them unsaved.
    #[arg(long, env = "CAIRN_LOCAL_CHANGES", value_enum, default_value = "backup")]
    local_changes: LocalChangesPolicy,
    /// This pod's name, as its sidecar writes heartbeats (default: $HOSTNAME, the pod name).
    #[arg(long, env = "CAIRN_HOST")]
    host: Option<String>,
    /// Restore only this path of the snapshot (and what is below it), relative to its root;
    /// repeatable. Such a restore writes no completion marker, removes nothing, and leaves the
    /// target's directories on the way as they are: for getting files back, not for starting a
    /// workspace.
    #[arg(long, value_name = "PATH")]
    include: Vec<std::ffi::OsString>,
    /// Once the workspace is whole (after the completion marker), write this file (atomically,
    /// JSON: workspace, snapshot, time); removed first if an earlier run left one. `cairn-guard`
    /// in the agent's container waits for it.
    #[arg(long, env = "CAIRN_READY_FILE")]
    ready_file: Option<PathBuf>,
    /// The directory to restore into (created if missing).
    #[arg(env = "CAIRN_TARGET")]
    target: PathBuf,
}

/// Removes a ready file an earlier run left, so nothing starts on it before this run finishes.
fn clear_ready(a: &RestoreArgs) -> Result<()> {
    if let Some(f) = &a.ready_file {
        match std::fs::remove_file(f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("--ready-file {}: cannot remove the old one: {e}", f.display()),
        }
    }
    Ok(())
}

/// Writes the ready file: a temporary file beside it, then a rename, so a reader sees all or
/// nothing. The temporary file is created anew (`O_CREAT | O_EXCL`, which fails on a symlink
/// rather than following it, after removing whatever is there, which `unlink` never follows), so
/// nothing planted at its name is written through.
/// The ready file belongs in a directory the agent cannot write (deploy/README.md).
fn write_ready(a: &RestoreArgs, repo: &Repo) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let Some(f) = &a.ready_file else { return Ok(()) };
    let snapshot = cairn_engine::read_marker(&a.target)
        .and_then(|m| m.snapshot)
        .map(|s| s.to_hex());
    let body = serde_json::json!({
        "workspace": a.workspace,
        "snapshot": snapshot,
        "store": repo.store().location(),
        "ready_at": cairn_engine::formats::Timestamp::now().to_rfc3339(),
    });
    let tmp = f.with_extension("tmp");
    let context = || format!("--ready-file {}", tmp.display());
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).with_context(context),
        _ => {}
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut file| file.write_all(format!("{body}\n").as_bytes()))
        .with_context(context)?;
    std::fs::rename(&tmp, f).with_context(|| format!("--ready-file {}", f.display()))?;
    Ok(())
}

pub async fn run(g: &Global, a: RestoreArgs) -> Result<u8> {
    let started = Instant::now();
    if a.include.is_empty() && a.snapshot == "latest" {
        clear_ready(&a)?;
    }
    // The first look for a previous pod's heartbeat shares the config read's round trip.
    let listing = a.snapshot == "latest" && !a.wait_previous.is_zero() && a.include.is_empty();
    let (repo, first_heartbeats) = Repo::open_waiting_and(
        &g.store,
        &g.keys(),
        Some(a.store_wait),
        |e, delay| {
            if !g.quiet && !g.json {
                eprintln!("initctl: store not reachable yet ({e}); retrying in {delay:?}");
            }
        },
        |store| {
            let ws = a.workspace.clone();
            async move {
                if !listing {
                    return Ok(None);
                }
                Ok(Some(heartbeat_objects(&store, Some(&ws)).await?))
            }
        },
    )
    .await?;
    if !a.include.is_empty() {
        return restore_include(g, &a, &repo, started).await;
    }
    if a.snapshot != "latest" {
        let (id, manifest) = repo.resolve(&a.workspace, Some(&a.snapshot)).await?;
        let opts = options(g, &a);
        let mut out = Reconcile {
            detail: Some(do_restore(g, &a, &repo, id, &manifest, opts).await?),
            ..Reconcile::default()
        };
        out.set(
            "restore",
            format!("restored snapshot {} of {}", id.short(), a.workspace),
        );
        report(g, &a, started, &out);
        return Ok(exit::OK);
    }
    let mut out = Reconcile::default();
    let first_heartbeats = first_heartbeats.map(|raw| heartbeats_from(&repo, raw));
    wait_for_previous(g, &a, &repo, first_heartbeats, &mut out).await?;
    let head = repo.head(&a.workspace).await?.map(|(h, _)| h.snapshot);
    match inspect(&a.target)? {
        state @ (VolumeState::Empty | VolumeState::Restoring) => {
            let exact = state == VolumeState::Restoring;
            if exact {
                out.notes
                    .push("an earlier restore of this volume was interrupted; finishing it".into());
            }
            start_fresh(g, &a, &repo, head, exact, &mut out).await?;
        }
        VolumeState::Marked(m) if m.workspace != a.workspace => bail!(
            "{} holds workspace {:?}, not {:?}: give this workspace its own volume, or restore with \
             --workspace {}",
            a.target.display(),
            m.workspace,
            a.workspace,
            m.workspace
        ),
        VolumeState::Marked(m) => {
            let changes = local_changes(&a.target, &m)?;
            reconcile_marked(g, &a, &repo, head, &m, changes, &mut out).await?;
        }
        VolumeState::Unmarked => {
            // Adopt the content: a marker that says nothing is known, then treat it as changed.
            let m = RestoreMarker {
                workspace: a.workspace.clone(),
                snapshot: None,
                snapshot_time: None,
                from: None,
                restored_at: cairn_engine::formats::Timestamp::now().to_rfc3339(),
                synced_ns: None,
                root_mtime_ns: None,
            };
            cairn_engine::adopt_volume(&a.target, &m)?;
            let changes = LocalChanges {
                changed: true,
                examples: vec!["(content without a Cairn marker)".into()],
            };
            reconcile_marked(g, &a, &repo, head, &m, changes, &mut out).await?;
        }
    }
    write_ready(&a, &repo)?;
    report(g, &a, started, &out);
    Ok(exit::OK)
}

/// `--include`: only those paths of the snapshot (the head by default), into the target; no
/// reconcile, no marker.
async fn restore_include(g: &Global, a: &RestoreArgs, repo: &Repo, started: Instant) -> Result<u8> {
    use std::os::unix::ffi::OsStrExt;
    let include = a
        .include
        .iter()
        .map(|p| cairn_engine::normalize_path(p.as_bytes()))
        .collect::<cairn_engine::Result<Vec<_>>>()?;
    let (id, manifest) = repo.resolve(&a.workspace, Some(&a.snapshot)).await?;
    let mut opts = options(g, a);
    opts.cache_dir = None;
    opts.include = include;
    let mut out = Reconcile {
        detail: Some(do_restore(g, a, repo, id, &manifest, opts).await?),
        ..Reconcile::default()
    };
    out.set(
        "restore",
        format!(
            "restored {} of snapshot {} of {}",
            if a.include.len() == 1 {
                "1 path".to_string()
            } else {
                format!("{} paths", a.include.len())
            },
            id.short(),
            a.workspace
        ),
    );
    report(g, a, started, &out);
    Ok(exit::OK)
}

/// What the reconcile did, for the report.
#[derive(Default)]
struct Reconcile {
    action: String,
    message: String,
    /// Another pod's final snapshot was not sealed in time.
    degraded: bool,
    notes: Vec<String>,
    detail: Option<Value>,
}

impl Reconcile {
    fn set(&mut self, action: &str, message: String) {
        self.action = action.into();
        self.message = message;
    }
}

fn options(g: &Global, a: &RestoreArgs) -> RestoreOptions {
    let mut o = RestoreOptions::new(&a.target);
    o.owners = a.owners;
    o.workspace = Some(a.workspace.clone());
    o.cache_dir = Some(super::cache_dir(g));
    o
}

/// Step 1: wait while another pod's sidecar of this workspace runs.
/// `first` is the first listing, if made already.
async fn wait_for_previous(
    g: &Global,
    a: &RestoreArgs,
    repo: &Repo,
    mut first: Option<Vec<Heartbeat>>,
    out: &mut Reconcile,
) -> Result<()> {
    if a.wait_previous.is_zero() {
        return Ok(());
    }
    let me = host(a);
    let deadline = Instant::now() + a.wait_previous;
    let mut said = false;
    loop {
        let listed = match first.take() {
            Some(l) => l,
            None => heartbeats(repo, Some(&a.workspace)).await?,
        };
        let live: Vec<String> = listed
            .into_iter()
            .filter(|h| h.host != me && h.is_live(unix_now()))
            .map(|h| h.host)
            .collect();
        if live.is_empty() {
            if said {
                out.notes
                    .push("the previous pod sealed its final snapshot".into());
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            out.notes.push(format!(
                "degraded start: pod {} of this workspace did not seal a final snapshot within \
                 --wait-previous {:?}; starting from the last sealed one",
                live.join(", "),
                a.wait_previous
            ));
            out.degraded = true;
            return Ok(());
        }
        if !said && !g.quiet && !g.json {
            eprintln!(
                "initctl: waiting up to {:?} for pod {} of workspace {} to seal its final snapshot",
                a.wait_previous,
                live.join(", "),
                a.workspace
            );
        }
        said = true;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn host(a: &RestoreArgs) -> String {
    cairn_engine::pod_host(a.host.clone())
}

/// An empty volume (or one an interrupted restore left): the head, the base, or nothing.
async fn start_fresh(
    g: &Global,
    a: &RestoreArgs,
    repo: &Repo,
    head: Option<SnapshotId>,
    exact: bool,
    out: &mut Reconcile,
) -> Result<()> {
    let mut opts = options(g, a);
    opts.exact = exact;
    if let Some(id) = head {
        let manifest = repo.manifest(&a.workspace, &id).await?;
        out.detail = Some(do_restore(g, a, repo, id, &manifest, opts).await?);
        out.set("restore", format!("restored snapshot {}", id.short()));
        return Ok(());
    }
    if let Some(base) = &a.base {
        let (ws, snap) = base.split_once('@').unwrap_or((base.as_str(), "latest"));
        let (id, manifest) = repo
            .resolve(ws, Some(snap))
            .await
            .with_context(|| format!("--base {base}"))?;
        out.detail = Some(do_restore(g, a, repo, id, &manifest, opts).await?);
        out.set(
            "restore",
            format!(
                "workspace {} has no snapshot: started from base {ws}@{}",
                a.workspace,
                id.short()
            ),
        );
        return Ok(());
    }
    std::fs::create_dir_all(&a.target).with_context(|| format!("creating {}", a.target.display()))?;
    if exact {
        bail!(
            "{} was left by an interrupted restore, and workspace {} has no snapshot to finish it \
             from: clear the volume, or give --base",
            a.target.display(),
            a.workspace
        );
    }
    cairn_engine::mark_empty(&a.target, &a.workspace)?;
    out.set(
        "empty",
        format!(
            "workspace {} has no snapshot and no --base was given: starting with {} empty",
            a.workspace,
            a.target.display()
        ),
    );
    Ok(())
}

/// A volume with a marker of this workspace.
async fn reconcile_marked(
    g: &Global,
    a: &RestoreArgs,
    repo: &Repo,
    head: Option<SnapshotId>,
    m: &RestoreMarker,
    changes: LocalChanges,
    out: &mut Reconcile,
) -> Result<()> {
    let held = m.snapshot.map_or_else(
        || "no snapshot".to_string(),
        |s| format!("snapshot {}", s.short()),
    );
    let current = head.is_none() || head == m.snapshot;
    if changes.changed {
        let what = changes.examples.join(", ");
        if a.local_changes == LocalChangesPolicy::Keep {
            let behind = if current {
                String::new()
            } else {
                format!(
                    "; the workspace's latest is {}, not applied",
                    head.map(|h| h.short()).unwrap_or_default()
                )
            };
            out.set(
                "kept",
                format!(
                    "{} has changes since {held} ({what}): kept as is, unsaved until the next checkpoint{behind}",
                    a.target.display()
                ),
            );
            return Ok(());
        }
        let opts = BackupOptions {
            max_session: cairn_engine::max_session_from_env(),
            dedup_fetches: cairn_engine::dedup_fetches_from_env(),
            workspace: a.workspace.clone(),
            source: std::path::absolute(&a.target).with_context(|| a.target.display().to_string())?,
            cache_dir: super::cache_dir(g),
            tags: vec!["local-changes".into()],
            host: Some(host(a)),
            freeze: cairn_engine::FreezeOptions::from_env().map_err(anyhow::Error::msg)?,
        };
        let progress = Arc::new(Progress::default());
        let bar = output::Bar::start(g, "backup", progress.clone());
        let r = backup(repo, &opts, progress).await;
        bar.finish();
        let r = r.with_context(|| format!("backing up the local changes on {}", a.target.display()))?;
        for w in &r.warnings {
            out.notes.push(w.clone());
        }
        let tail = if r.is_head {
            "it is the latest".to_string()
        } else {
            "a newer snapshot by another pod stays the latest; this volume keeps its own state".to_string()
        };
        out.set(
            "backup",
            format!(
                "{} had changes since {held} ({what}): saved them first as snapshot {} ({} files read); {tail}",
                a.target.display(),
                r.snapshot.short(),
                r.stats.files_read
            ),
        );
        out.detail = Some(json!({ "snapshot": r.snapshot.to_hex(), "is_head": r.is_head,
            "files_read": r.stats.files_read, "uploaded_bytes": r.stats.uploaded_bytes }));
        return Ok(());
    }
    if current {
        out.set(
            "none",
            format!(
                "{} already holds {held} of {}: nothing to do",
                a.target.display(),
                a.workspace
            ),
        );
        return Ok(());
    }
    let head = head.expect("invariant: not current means there is a head");
    let manifest = repo.manifest(&a.workspace, &head).await?;
    let mut opts = options(g, a);
    if let Some(prev) = m.snapshot {
        match previous_manifest(repo, a, m, prev).await {
            Ok(pm) => opts.previous = Some((prev, pm)),
            Err(e) => out
                .notes
                .push(format!("{held} is not readable ({e:#}); restoring in full")),
        }
    }
    // Should the update fall back to a full restore, what the snapshot lacks must go.
    opts.exact = true;
    out.detail = Some(do_restore(g, a, repo, head, &manifest, opts).await?);
    out.set(
        "update",
        format!(
            "{} held {held}; brought up to {} of {}",
            a.target.display(),
            head.short(),
            a.workspace
        ),
    );
    Ok(())
}

/// The manifest of the snapshot a volume holds (under the base's workspace when it came from one).
async fn previous_manifest(
    repo: &Repo,
    a: &RestoreArgs,
    m: &RestoreMarker,
    id: SnapshotId,
) -> Result<Manifest> {
    let ws = m
        .from
        .as_deref()
        .and_then(|f| f.split_once('@'))
        .map_or(a.workspace.as_str(), |(w, _)| w);
    Ok(repo.manifest(ws, &id).await?)
}

async fn do_restore(
    g: &Global,
    a: &RestoreArgs,
    repo: &Repo,
    id: SnapshotId,
    manifest: &Manifest,
    opts: RestoreOptions,
) -> Result<Value> {
    let progress = Arc::new(Progress::default());
    let bar = output::Bar::start(g, "restore", progress.clone());
    let r = cairn_engine::restore(repo, id, manifest, &opts, progress).await;
    bar.finish();
    let r = r.with_context(|| format!("restore of snapshot {} into {}", id.short(), a.target.display()))?;
    if !g.quiet && !g.json {
        eprintln!(
            "{} {} files, {} dirs, {} in {:.2}s ({:.0} MB/s); fetched {}, reused {} from disk, removed {}",
            if r.update { "updated" } else { "restored" },
            r.files,
            r.dirs,
            output::bytes(r.bytes),
            r.elapsed.as_secs_f64(),
            output::mbps(r.bytes, r.elapsed),
            output::bytes(r.fetched),
            output::bytes(r.reused),
            r.removed,
        );
    }
    Ok(json!({
        "snapshot": id.to_hex(), "update": r.update,
        "files": r.files, "dirs": r.dirs, "others": r.others, "removed": r.removed,
        "bytes": r.bytes, "fetched": r.fetched, "reused": r.reused, "seeded": r.seeded,
        "seconds": r.elapsed.as_secs_f64(),
    }))
}

fn report(g: &Global, a: &RestoreArgs, started: Instant, out: &Reconcile) {
    if g.json {
        let mut v = json!({
            "action": out.action, "workspace": a.workspace, "target": a.target, "message": out.message,
            "degraded": out.degraded, "notes": out.notes, "seconds": started.elapsed().as_secs_f64(),
            "requests": cairn_engine::request_counts(),
        });
        if let Some(Value::Object(d)) = &out.detail {
            for (k, val) in d {
                v[k] = val.clone();
            }
        }
        output::json(&v);
    } else if !g.quiet {
        for n in &out.notes {
            eprintln!("initctl: {n}");
        }
        eprintln!("{}", out.message);
    }
}
