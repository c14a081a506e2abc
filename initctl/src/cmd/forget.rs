//! `initctl forget`

use std::time::Duration;

use anyhow::{Context, Result};
use cairn_engine::{forget, forget_workspace, KeepPolicy};
use clap::Args;

use crate::{exit, output, Global};

/// Forget snapshots by retention rules (or a whole workspace); `gc` reclaims the space.
#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// The workspace.
    #[arg(long, short, env = "CAIRN_WORKSPACE")]
    workspace: String,
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N")]
    keep_last: Option<usize>,
    /// Keep every snapshot within this long of the newest (e.g. 7d, 36h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    keep_within: Option<Duration>,
    /// Keep the newest snapshot of each of the last N hours with snapshots.
    #[arg(long, value_name = "N")]
    keep_hourly: Option<usize>,
    /// ... of each of the last N days.
    #[arg(long, value_name = "N")]
    keep_daily: Option<usize>,
    /// ... of each of the last N ISO weeks.
    #[arg(long, value_name = "N")]
    keep_weekly: Option<usize>,
    /// ... of each of the last N calendar months.
    #[arg(long, value_name = "N")]
    keep_monthly: Option<usize>,
    /// Keep every snapshot with these tags (`a,b`: both); repeat for any of several sets.
    #[arg(long, value_name = "TAG[,TAG]")]
    keep_tag: Vec<String>,
    /// Apply the rules only to snapshots taken by this host; repeat for several. Others are left
    /// alone.
    #[arg(long, value_name = "HOST", conflicts_with = "all")]
    host: Vec<String>,
    /// Apply the rules only to snapshots with these tags (`a,b`: both); repeat for any of several
    /// sets. Others are left alone.
    #[arg(long, value_name = "TAG[,TAG]", conflicts_with = "all")]
    tag: Vec<String>,
    /// Delete the whole workspace: its head and every snapshot.
    #[arg(long, conflicts_with_all = ["keep_last", "keep_within", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_tag"])]
    all: bool,
    /// Say what would be forgotten; change nothing.
    #[arg(long, short = 'n')]
    dry_run: bool,
}

/// Durations as restic and Kubernetes people write them: 90s, 30m, 36h, 7d, 2w.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?}: expected a duration like 36h, 7d or 2w");
    let (num, unit) = s
        .trim()
        .split_at(s.trim().find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(n * secs))
}

pub async fn run(g: &Global, a: ForgetArgs) -> Result<u8> {
    let repo = super::open(g).await?;
    let r = if a.all {
        forget_workspace(&repo, &a.workspace, a.dry_run).await
    } else {
        let policy = KeepPolicy {
            last: a.keep_last,
            within: a.keep_within,
            hourly: a.keep_hourly,
            daily: a.keep_daily,
            weekly: a.keep_weekly,
            monthly: a.keep_monthly,
            tags: cairn_engine::SnapshotFilter::tag_sets(&a.keep_tag),
            only: cairn_engine::SnapshotFilter {
                hosts: a.host.clone(),
                tags: cairn_engine::SnapshotFilter::tag_sets(&a.tag),
                latest: None,
            },
        };
        forget(&repo, &a.workspace, &policy, a.dry_run).await
    }
    .with_context(|| format!("forget in workspace {}", a.workspace))?;
    if g.json {
        output::json(&serde_json::json!({
            "workspace": a.workspace, "dry_run": a.dry_run, "head_deleted": r.head_deleted,
            "keep": r.keep.iter().map(|d| serde_json::json!({"id": d.id.to_hex(), "time": d.time, "reasons": d.reasons})).collect::<Vec<_>>(),
            "remove": r.remove.iter().map(|d| serde_json::json!({"id": d.id.to_hex(), "time": d.time})).collect::<Vec<_>>(),
        }));
        return Ok(exit::OK);
    }
    if !g.quiet {
        for d in &r.keep {
            eprintln!("keep    {} {}  ({})", d.id.short(), d.time, d.reasons.join(", "));
        }
        for d in &r.remove {
            eprintln!(
                "{} {} {}",
                if a.dry_run { "would remove" } else { "remove " },
                d.id.short(),
                d.time
            );
        }
        let verb = if a.dry_run { "would forget" } else { "forgot" };
        eprintln!(
            "{verb} {} of {} snapshots{}; run `initctl gc` to reclaim space",
            r.remove.len(),
            r.remove.len() + r.keep.len(),
            if r.head_deleted {
                " and the workspace's head"
            } else {
                ""
            }
        );
    }
    Ok(exit::OK)
}
