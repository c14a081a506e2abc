//! `initctl restore`

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use cairn_engine::{restore, Progress, RestoreOptions};
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
    /// The directory to restore into (created if missing).
    #[arg(env = "CAIRN_TARGET")]
    target: PathBuf,
}

pub async fn run(g: &Global, a: RestoreArgs) -> Result<u8> {
    let repo = super::open(g).await?;
    let (id, manifest) = repo.resolve(&a.workspace, Some(&a.snapshot)).await?;
    let progress = Arc::new(Progress::default());
    let bar = output::Bar::start(g, "restore", progress.clone());
    let opts = RestoreOptions {
        target: a.target.clone(),
        owners: a.owners,
    };
    let r = restore(&repo, id, &manifest, &opts, progress).await;
    bar.finish();
    let r = r.with_context(|| format!("restore of snapshot {} into {}", id.short(), a.target.display()))?;
    if g.json {
        output::json(&serde_json::json!({
            "snapshot": id.to_hex(), "workspace": a.workspace, "target": a.target,
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
