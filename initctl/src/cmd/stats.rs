//! `initctl stats`

use anyhow::{Context, Result};
use clap::Args;

use crate::{exit, output, Global};

/// Repository statistics.
#[derive(Args, Debug)]
pub struct StatsArgs {
    #[command(flatten)]
    tenants: super::TenantArgs,
}

pub async fn run(g: &Global, a: StatsArgs) -> Result<u8> {
    if a.tenants.tenants {
        let run = super::each_tenant(g, &a.tenants, "stats", "stats", |repo| async move {
            Ok(cairn_engine::stats(&repo).await?)
        })
        .await?;
        let sum = |f: fn(&cairn_engine::RepoStats) -> u64| run.ok.iter().map(|(_, s)| f(s)).sum::<u64>();
        let (stored, logical) = (sum(|s| s.stored_bytes), sum(|s| s.logical_bytes));
        let (snapshots, objects) = (sum(|s| s.snapshots), sum(|s| s.objects));
        if g.json {
            output::json(&serde_json::json!({
                "tenants": run.json,
                "total": { "stored_bytes": stored, "logical_bytes": logical, "snapshots": snapshots, "objects": objects },
            }));
        } else {
            let line = |name: &str, stored: u64, logical: u64, snapshots: u64, objects: u64, note: &str| {
                println!(
                    "{name:<24} stored {:>10}  logical {:>10}  {snapshots:>6} snapshots  {objects:>8} objects  {note}",
                    output::bytes(stored),
                    output::bytes(logical)
                );
            };
            for (tenant, s) in &run.ok {
                let note = if s.encrypted { "encrypted" } else { "NOT encrypted" };
                line(
                    tenant,
                    s.stored_bytes,
                    s.logical_bytes,
                    s.snapshots,
                    s.objects,
                    note,
                );
            }
            line("total", stored, logical, snapshots, objects, "");
        }
        return Ok(if run.failed { exit::FAILED } else { exit::OK });
    }
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
