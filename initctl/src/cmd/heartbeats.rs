//! `initctl heartbeats`

use anyhow::Result;
use cairn_engine::{heartbeats, unix_now};
use clap::Args;

use crate::{exit, output, Global};

/// List the heartbeats sidecars write, with their age.
#[derive(Args, Debug)]
pub struct HeartbeatsArgs {
    /// Only this workspace's heartbeats.
    #[arg(long, short, env = "CAIRN_WORKSPACE")]
    workspace: Option<String>,
}

pub async fn run(g: &Global, a: HeartbeatsArgs) -> Result<u8> {
    let repo = super::open(g).await?;
    let list = heartbeats(&repo, a.workspace.as_deref()).await?;
    let now = unix_now();
    if g.json {
        let v: Vec<_> = list
            .iter()
            .map(|h| {
                let mut v = serde_json::to_value(h).unwrap_or_default();
                v["age_seconds"] = now.saturating_sub(h.time).into();
                v
            })
            .collect();
        output::json(&serde_json::Value::Array(v));
        return Ok(exit::OK);
    }
    println!(
        "{:<24} {:<28} {:<18} {:>9}  last snapshot",
        "workspace", "host", "state", "age"
    );
    for h in &list {
        let snap = h.last_snapshot.as_deref().map_or("-", |s| &s[..s.len().min(10)]);
        println!(
            "{:<24} {:<28} {:<18} {:>8}s  {snap}",
            h.workspace,
            h.host,
            h.state,
            now.saturating_sub(h.time)
        );
    }
    Ok(exit::OK)
}
