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
    /// Do not merge small packs.
    #[arg(long)]
    no_repack: bool,
    /// Live packs smaller than this many bytes (K, M, G suffixes: powers of 1024) are merged
    /// into full-size ones (default: a quarter of the repository's pack target).
    #[arg(long, value_parser = parse_size)]
    repack_below: Option<u64>,
    /// Data packs with more than this percentage of bytes no snapshot uses are rewritten without
    /// them (scheduled now, rewritten one protection window later, when no backup can still need
    /// what is dropped).
    #[arg(long, default_value_t = 50.0, value_parser = parse_percent)]
    max_unused: f64,
    /// Report what would be condemned and deleted; change nothing.
    #[arg(long, short = 'n')]
    dry_run: bool,
    #[command(flatten)]
    tenants: super::TenantArgs,
}

pub async fn run(g: &Global, a: GcArgs) -> Result<u8> {
    if a.tenants.tenants {
        let opts = options(&a);
        let run = super::each_tenant(g, &a.tenants, "gc", "report", |repo| {
            let opts = opts.clone();
            async move { Ok(gc(&repo, &opts).await?) }
        })
        .await?;
        if g.json {
            output::json(&serde_json::json!({ "tenants": run.json }));
        } else if !g.quiet {
            for (tenant, r) in &run.ok {
                eprintln!(
                    "{tenant}: condemned {} objects ({}), deleted {} records and {} packs ({}) in {:.2}s",
                    r.condemned,
                    output::bytes(r.condemned_bytes),
                    r.deleted_records,
                    r.deleted_packs,
                    output::bytes(r.deleted_bytes),
                    r.elapsed.as_secs_f64()
                );
            }
        }
        return Ok(if run.failed { exit::FAILED } else { exit::OK });
    }
    let repo = super::open(g).await?;
    let r = gc(&repo, &options(&a)).await.context("gc")?;
    print(g, &a, &r)?;
    Ok(exit::OK)
}

fn options(a: &GcArgs) -> GcOptions {
    GcOptions {
        protect: a.protect,
        dry_run: a.dry_run,
        holder: format!("{}:{}", super::hostname(), std::process::id()),
        lease_ttl: a.lease_ttl,
        repack: !a.no_repack,
        repack_below: a.repack_below,
        max_unused: a.max_unused / 100.0,
    }
}

fn print(g: &Global, a: &GcArgs, r: &cairn_engine::GcReport) -> Result<()> {
    if g.json {
        output::json(&serde_json::to_value(r).context("report")?);
    } else if !g.quiet {
        let verb = if a.dry_run { "would delete" } else { "deleted" };
        eprintln!(
            "marked {} snapshots: {} index records, {} packs live; condemned {} objects ({}); \
             {verb} {} records and {} packs ({}); {} resurrected, {} waiting, {} too young; \
             repacked {} small packs ({}) and {} mostly-empty ones ({}) into {}, {} more scheduled; \
             index: {} blobs in set {}; generation {} in {:.2}s",
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
            r.repacked_packs,
            output::bytes(r.repacked_bytes),
            r.sparse_rewritten,
            output::bytes(r.sparse_bytes),
            r.repack_written,
            r.sparse_scheduled,
            r.compact_blobs,
            r.compact_set.as_deref().unwrap_or("-"),
            r.generation,
            r.elapsed.as_secs_f64()
        );
    }
    Ok(())
}

/// A percentage, 0-100 (a trailing `%` is allowed).
fn parse_percent(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?}: expected a percentage like 50 or 50%"))?;
    if (0.0..=100.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{s:?}: must be between 0 and 100"))
    }
}

/// A byte count: digits, optionally followed by K, M or G (powers of 1024; `KiB`/`MiB`/`GiB` too).
fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a byte count like 512K or 2M"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use K, M or G")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("2M"), Ok(2 << 20));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert!(parse_size("2X").is_err());
        assert!(parse_size("M").is_err());
    }
}
