//! `initctl fork`

use anyhow::{Context, Result};
use clap::Args;

use crate::{exit, output, Global};

/// Create a workspace from another's snapshot, without copying data.
#[derive(Args, Debug)]
pub struct ForkArgs {
    /// The source: WORKSPACE (its latest snapshot) or WORKSPACE@SNAPSHOT.
    #[arg(long)]
    from: String,
    /// The new workspace (must not exist).
    #[arg(long)]
    to: String,
    /// Host name to record (default: this machine's).
    #[arg(long, env = "CAIRN_HOST")]
    host: Option<String>,
}

pub async fn run(g: &Global, a: ForkArgs) -> Result<u8> {
    let repo = super::open(g).await?;
    let (ws, snap) = a.from.split_once('@').unwrap_or((a.from.as_str(), "latest"));
    let host = a.host.clone().unwrap_or_else(super::hostname);
    let r = cairn_engine::fork(&repo, ws, Some(snap), &a.to, &host)
        .await
        .with_context(|| format!("fork of {} into {}", a.from, a.to))?;
    if g.json {
        output::json(&serde_json::json!({
            "workspace": a.to, "snapshot": r.snapshot.to_hex(), "from": ws, "from_snapshot": r.from.to_hex(),
        }));
    } else {
        if !g.quiet {
            eprintln!("forked {ws}@{} into {}", r.from.short(), a.to);
        }
        println!("{}", r.snapshot);
    }
    Ok(exit::OK)
}
