//! `initctl gc`

use std::time::Duration;

use anyhow::{Context, Result};
use cairn_engine::{gc, GcOptions};
use clap::Args;

use crate::{exit, output, Global};

/// Collect garbage: delete packs and index records no snapshot references, safely while backups
/// run (mark, condemn, wait out the protection window, sweep).
#[derive(Args, Debug)]
pub struct GcArgs {
    /// Unreferenced objects younger than this are kept, and condemned ones are deleted only this
    /// long after a run condemned them. Must exceed the writers' session limit (CAIRN_MAX_SESSION,
    /// default 1h) plus their store retry time.
    #[arg(long, env = "CAIRN_GC_PROTECT", default_value = "6h", value_parser = cairn_engine::parse_duration_arg)]
    protect: Duration,
    /// A lease left by a GC that died is taken over after this long.
    #[arg(long, env = "CAIRN_GC_LEASE_TTL", default_value = "1h", value_parser = cairn_engine::parse_duration_arg)]
    lease_ttl: Duration,
    /// Report what would be condemned and deleted; change nothing.
    #[arg(long, short = 'n')]
    dry_run: bool,
}

pub async fn run(g: &Global, a: GcArgs) -> Result<u8> {
    let repo = super::open(g).await?;
    let opts = GcOptions {
        protect: a.protect,
        dry_run: a.dry_run,
        holder: format!("{}:{}", super::hostname(), std::process::id()),
        lease_ttl: a.lease_ttl,
    };
    let r = gc(&repo, &opts).await.context("gc")?;
    if g.json {
        output::json(&serde_json::to_value(&r).context("report")?);
    } else if !g.quiet {
        let verb = if a.dry_run { "would delete" } else { "deleted" };
        eprintln!(
            "marked {} snapshots: {} index records, {} packs live; condemned {} objects ({}); \
             {verb} {} records and {} packs ({}); {} resurrected, {} waiting, {} too young; \
             generation {} in {:.2}s",
            r.snapshots,
            r.live_records,
            r.live_packs,
            r.condemned,
            output::bytes(r.condemned_bytes),
            r.deleted_records,
            r.deleted_packs,
            output::bytes(r.deleted_bytes),
            r.resurrected,
            r.waiting,
            r.young,
            r.generation,
            r.elapsed.as_secs_f64()
        );
    }
    Ok(exit::OK)
}
