//! `initctl snapshots`

use anyhow::Result;
use clap::Args;

use crate::{exit, output, Global};

/// List snapshots.
#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    /// Only this workspace's snapshots.
    #[arg(long, short, env = "CAIRN_WORKSPACE")]
    workspace: Option<String>,
    /// Only snapshots taken by this host (the pod's name); repeat for any of several.
    #[arg(long, value_name = "HOST")]
    host: Vec<String>,
    /// Only snapshots with these tags (`a,b`: both); repeat for any of several sets.
    #[arg(long, value_name = "TAG[,TAG]")]
    tag: Vec<String>,
    /// Only the newest N snapshots of each workspace.
    #[arg(long, value_name = "N")]
    latest: Option<usize>,
}

pub async fn run(g: &Global, a: SnapshotsArgs) -> Result<u8> {
    let repo = super::open(g).await?;
    let filter = cairn_engine::SnapshotFilter {
        hosts: a.host,
        tags: cairn_engine::SnapshotFilter::tag_sets(&a.tag),
        latest: a.latest,
    };
    let list = filter.apply(repo.snapshots(a.workspace.as_deref()).await?);
    if !repo.is_encrypted() {
        eprintln!(
            "warning: {} is not encrypted (format version 1): anyone who can read the store reads these snapshots",
            repo.store().location()
        );
    }
    if g.json {
        let v: Vec<_> = list
            .iter()
            .map(|s| {
                let m = &s.manifest;
                serde_json::json!({
                    "id": s.id.to_hex(), "workspace": m.workspace, "time": m.time.to_rfc3339(),
                    "host": m.host, "source": String::from_utf8_lossy(&m.source),
                    "parent": m.parent.map(|p| p.to_hex()), "head": s.is_head, "tags": m.tags,
                    "files": m.stats.files, "bytes": m.stats.bytes, "new_bytes": m.stats.new_bytes,
                })
            })
            .collect();
        output::json(&serde_json::Value::Array(v));
        return Ok(exit::OK);
    }
    println!(
        "{:<10} {:<20} {:<24} {:>9} {:>10} {:>10}  host",
        "id", "time", "workspace", "files", "size", "added"
    );
    for s in &list {
        let m = &s.manifest;
        println!(
            "{:<10} {:<20} {:<24} {:>9} {:>10} {:>10}  {}{}",
            s.id.short(),
            m.time.to_rfc3339(),
            m.workspace,
            m.stats.files,
            output::bytes(m.stats.bytes),
            output::bytes(m.stats.new_bytes),
            m.host,
            if s.is_head { "  (latest)" } else { "" }
        );
    }
    if !g.quiet {
        eprintln!("{} snapshots", list.len());
    }
    Ok(exit::OK)
}
