//! `initctl stats`

use anyhow::{Context, Result};
use clap::Args;

use crate::{exit, output, Global};

/// Repository statistics.
#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Statistics of every tenant's repository below --store (`<store>/<tenant>`), and their sum.
    #[arg(long)]
    tenants: bool,
    /// With --tenants: the directory of the tenants' key files, one named by each tenant; a tenant
    /// without one is opened through KMS.
    #[arg(long, env = "CAIRN_KEY_DIR")]
    key_dir: Option<std::path::PathBuf>,
}

pub async fn run(g: &Global, a: StatsArgs) -> Result<u8> {
    if a.tenants {
        let mut failed = false;
        let (mut stored, mut logical, mut snapshots, mut objects) = (0u64, 0u64, 0u64, 0u64);
        let mut all = Vec::new();
        for (tenant, repo) in super::tenants(g, a.key_dir.as_deref()).await? {
            let r = match repo {
                Ok(repo) => cairn_engine::stats(&repo).await.map_err(anyhow::Error::from),
                Err(e) => Err(e),
            };
            match r {
                Ok(s) => {
                    stored += s.stored_bytes;
                    logical += s.logical_bytes;
                    snapshots += s.snapshots;
                    objects += s.objects;
                    if !g.json {
                        println!(
                            "{tenant:<24} stored {:>10}  logical {:>10}  {:>6} snapshots  {:>8} objects  {}",
                            output::bytes(s.stored_bytes),
                            output::bytes(s.logical_bytes),
                            s.snapshots,
                            s.objects,
                            if s.encrypted { "encrypted" } else { "NOT encrypted" }
                        );
                    }
                    all.push(serde_json::json!({ "tenant": tenant, "stats": s }));
                }
                Err(e) => {
                    failed = true;
                    eprintln!("initctl: stats of tenant {tenant}: {e:#}");
                    all.push(serde_json::json!({ "tenant": tenant, "error": format!("{e:#}") }));
                }
            }
        }
        if g.json {
            output::json(&serde_json::json!({
                "tenants": all,
                "total": { "stored_bytes": stored, "logical_bytes": logical, "snapshots": snapshots, "objects": objects },
            }));
        } else {
            println!(
                "{:<24} stored {:>10}  logical {:>10}  {snapshots:>6} snapshots  {objects:>8} objects",
                "total",
                output::bytes(stored),
                output::bytes(logical)
            );
        }
        return Ok(if failed { exit::FAILED } else { exit::OK });
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
