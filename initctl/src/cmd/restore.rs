//! `initctl restore`

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use cairn_engine::{read_marker, restore, Progress, RestoreOptions};
use clap::builder::BoolishValueParser;
use clap::Args;

use crate::{exit, output, Global};

/// Restore a snapshot.
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
    /// The directory to restore into (created if missing).
    #[arg(env = "CAIRN_TARGET")]
    target: PathBuf,
}

pub async fn run(g: &Global, a: RestoreArgs) -> Result<u8> {
    let repo = super::open(g).await?;
    let latest = a.snapshot == "latest";
    // A workspace's first pod: start from the base snapshot, or empty.
    if latest && repo.head(&a.workspace).await?.is_none() {
        let Some(base) = &a.base else {
            std::fs::create_dir_all(&a.target).with_context(|| format!("creating {}", a.target.display()))?;
            report_no_restore(
                g,
                &a,
                "empty",
                &format!(
                    "workspace {} has no snapshot and no --base was given: starting with {} as it is",
                    a.workspace,
                    a.target.display()
                ),
            );
            return Ok(exit::OK);
        };
        let (ws, snap) = base.split_once('@').unwrap_or((base.as_str(), "latest"));
        let (id, manifest) = repo
            .resolve(ws, Some(snap))
            .await
            .with_context(|| format!("--base {base}"))?;
        if !g.quiet && !g.json {
            eprintln!(
                "workspace {} has no snapshot: starting from base {ws}@{}",
                a.workspace,
                id.short()
            );
        }
        return finish(g, &a, &repo, id, &manifest).await;
    }
    let (id, manifest) = repo.resolve(&a.workspace, Some(&a.snapshot)).await?;
    // Re-run on a volume already holding this snapshot (an init container after a pod restart).
    if read_marker(&a.target).is_some_and(|m| m.snapshot == id && m.workspace == a.workspace) {
        report_no_restore(
            g,
            &a,
            "none",
            &format!(
                "{} already holds snapshot {} of {}: nothing to do",
                a.target.display(),
                id.short(),
                a.workspace
            ),
        );
        return Ok(exit::OK);
    }
    finish(g, &a, &repo, id, &manifest).await
}

fn report_no_restore(g: &Global, a: &RestoreArgs, action: &str, message: &str) {
    if g.json {
        output::json(&serde_json::json!({
            "action": action, "workspace": a.workspace, "target": a.target, "message": message,
        }));
    } else if !g.quiet {
        eprintln!("{message}");
    }
}

async fn finish(
    g: &Global,
    a: &RestoreArgs,
    repo: &cairn_engine::Repo,
    id: cairn_engine::formats::SnapshotId,
    manifest: &cairn_engine::formats::Manifest,
) -> Result<u8> {
    let progress = Arc::new(Progress::default());
    let bar = output::Bar::start(g, "restore", progress.clone());
    let opts = RestoreOptions {
        target: a.target.clone(),
        owners: a.owners,
    };
    let r = restore(repo, id, manifest, &opts, progress).await;
    bar.finish();
    let r = r.with_context(|| format!("restore of snapshot {} into {}", id.short(), a.target.display()))?;
    if g.json {
        output::json(&serde_json::json!({
            "action": "restore", "snapshot": id.to_hex(), "workspace": a.workspace, "target": a.target,
            "files": r.files, "dirs": r.dirs, "others": r.others,
            "bytes": r.bytes, "fetched": r.fetched, "seconds": r.elapsed.as_secs_f64(),
        }));
    } else if !g.quiet {
        eprintln!(
            "restored snapshot {} of {} into {}: {} files, {} dirs, {} in {:.2}s ({:.0} MB/s)",
            id.short(),
            a.workspace,
            a.target.display(),
            r.files,
            r.dirs,
            output::bytes(r.bytes),
            r.elapsed.as_secs_f64(),
            output::mbps(r.bytes, r.elapsed)
        );
    }
    Ok(exit::OK)
}
