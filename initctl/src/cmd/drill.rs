//! `initctl drill`

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use cairn_engine::{drill, Progress};
use clap::Args;

use crate::{exit, output, Global};

/// Restore into a scratch directory and verify.
#[derive(Args, Debug)]
pub struct DrillArgs {
    /// The workspace to drill.
    #[arg(long, short, env = "CAIRN_WORKSPACE")]
    workspace: String,
    /// Snapshot id (or a unique prefix); the latest by default.
    #[arg(long, env = "CAIRN_SNAPSHOT", default_value = "latest")]
    snapshot: String,
    /// Where to create the scratch directory (default: the system temp dir).
    #[arg(long, env = "CAIRN_SCRATCH")]
    scratch: Option<PathBuf>,
}

pub async fn run(g: &Global, a: DrillArgs) -> Result<u8> {
    let repo = super::open(g).await?;
    let (id, manifest) = repo.resolve(&a.workspace, Some(&a.snapshot)).await?;
    let progress = Arc::new(Progress::default());
    let bar = output::Bar::start(g, "drill", progress.clone());
    let r = drill(&repo, id, &manifest, a.scratch.clone(), progress).await;
    bar.finish();
    let r = r.with_context(|| format!("drill of snapshot {} of {}", id.short(), a.workspace))?;
    let ok = r.mismatches.is_empty();
    if g.json {
        output::json(&serde_json::json!({
            "snapshot": id.to_hex(), "workspace": a.workspace, "ok": ok,
            "restore_seconds": r.restore.elapsed.as_secs_f64(),
            "restore_mb_per_s": output::mbps(r.restore.bytes, r.restore.elapsed),
            "verify_seconds": r.verify_elapsed.as_secs_f64(),
            "files": r.restore.files, "dirs": r.restore.dirs, "bytes": r.restore.bytes,
            "fetched": r.restore.fetched, "entries_verified": r.entries,
            "bytes_verified": r.verified_bytes, "mismatches": r.mismatches,
        }));
    } else {
        for m in r.mismatches.iter().take(50) {
            eprintln!("mismatch: {m}");
        }
        if r.mismatches.len() > 50 {
            eprintln!("... and {} more", r.mismatches.len() - 50);
        }
        println!(
            "drill {} snapshot {} of {}: restore {} files, {} in {:.2}s ({:.0} MB/s); verify {} entries, {} in {:.2}s",
            if ok { "passed:" } else { "FAILED:" },
            id.short(),
            a.workspace,
            r.restore.files,
            output::bytes(r.restore.bytes),
            r.restore.elapsed.as_secs_f64(),
            output::mbps(r.restore.bytes, r.restore.elapsed),
            r.entries,
            output::bytes(r.verified_bytes),
            r.verify_elapsed.as_secs_f64()
        );
    }
    Ok(if ok { exit::OK } else { exit::VERIFY_FAILED })
}
