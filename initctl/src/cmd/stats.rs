//! `initctl stats`

use anyhow::{Context, Result};
use clap::Args;

use crate::{exit, output, Global};

/// Repository statistics.
#[derive(Args, Debug)]
pub struct StatsArgs {}

pub async fn run(g: &Global, _a: StatsArgs) -> Result<u8> {
    let repo = super::open(g).await?;
    let s = cairn_engine::stats(&repo).await.context("stats")?;
    if g.json {
        output::json(&serde_json::to_value(&s).context("report")?);
        return Ok(exit::OK);
    }
    if s.encrypted {
        println!(
            "format        version {}, encrypted (AES-256-GCM, keyed ids)",
            s.format_version
        );
    } else {
        println!(
            "format        version {}, NOT encrypted: anyone who can read the store reads every workspace",
            s.format_version
        );
    }
    println!(
        "stored        {} ({} data packs, {} metadata packs, {} index records, {} compacted index objects)",
        output::bytes(s.stored_bytes),
        s.data_packs,
        s.meta_packs,
        s.index_records,
        s.compact_objects
    );
    println!(
        "logical       {} in {} snapshots of {} workspaces",
        output::bytes(s.logical_bytes),
        s.snapshots,
        s.workspaces
    );
    println!("dedup ratio   {:.1}x", s.dedup_ratio);
    println!("objects       {}", s.objects);
    println!(
        "condemned     {} objects ({}), deleted by a later gc",
        s.condemned,
        output::bytes(s.condemned_bytes)
    );
    Ok(exit::OK)
}
