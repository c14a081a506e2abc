//! `initctl backup`

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use cairn_engine::{backup, BackupOptions, Progress};
use clap::Args;

use crate::{exit, output, Global};

/// Back up a directory.
#[derive(Args, Debug)]
pub struct BackupArgs {
    /// The workspace the snapshot belongs to.
    #[arg(long, short, env = "CAIRN_WORKSPACE")]
    workspace: String,
    /// Tags to record (repeat, or comma-separated in CAIRN_TAGS).
    #[arg(long = "tag", env = "CAIRN_TAGS", value_delimiter = ',')]
    tags: Vec<String>,
    /// Host name to record (default: this machine's).
    #[arg(long, env = "CAIRN_HOST")]
    host: Option<String>,
    /// Compacted index segments to fetch at most for deduplication against other workspaces
    /// (0: off) [env: CAIRN_DEDUP_FETCHES, default 64].
    #[arg(long)]
    dedup_fetches: Option<usize>,
    /// Freeze the workspace's file system while the backup fixes its instant: auto (where it is a
    /// file system of its own), always, or never.
    #[arg(long, env = "CAIRN_FREEZE", default_value = "auto")]
    freeze: cairn_engine::FreezeMode,
    /// The longest a freeze may last; past it the file system is thawed and the backup reads the
    /// volume live.
    #[arg(long, env = "CAIRN_FREEZE_DEADLINE", default_value = "2s", value_parser = cairn_engine::parse_duration_arg)]
    freeze_deadline: std::time::Duration,
    /// Before freezing, read what changed since the last checkpoint live, so the file system stays
    /// frozen only to copy what changed since (false: everything changed is copied frozen).
    #[arg(long, env = "CAIRN_PREPASS", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    prepass: bool,
    /// The directory to back up.
    #[arg(env = "CAIRN_SOURCE")]
    path: PathBuf,
}

pub async fn run(g: &Global, a: BackupArgs) -> Result<u8> {
    let repo = super::open(g).await?;
    let source = std::path::absolute(&a.path).with_context(|| format!("{}", a.path.display()))?;
    let opts = BackupOptions {
        max_session: cairn_engine::max_session_from_env(),
        dedup_fetches: a
            .dedup_fetches
            .unwrap_or_else(cairn_engine::dedup_fetches_from_env),
        workspace: a.workspace.clone(),
        source,
        cache_dir: super::cache_dir(g),
        tags: a.tags,
        host: a.host,
        freeze: cairn_engine::FreezeOptions {
            mode: a.freeze,
            deadline: a.freeze_deadline,
            hold: cairn_engine::freeze_hold_from_env().map_err(anyhow::Error::msg)?,
            prepass: a.prepass,
        },
    };
    let progress = Arc::new(Progress::default());
    let bar = output::Bar::start(g, "backup", progress.clone());
    let r = backup(&repo, &opts, progress).await;
    bar.finish();
    let r = r.with_context(|| format!("backup of {} to workspace {}", a.path.display(), a.workspace))?;
    let s = &r.stats;
    let code = if s.skipped > 0 { exit::INCOMPLETE } else { exit::OK };
    if g.json {
        output::json(&serde_json::json!({
            "snapshot": r.snapshot.to_hex(),
            "parent": r.parent.map(|p| p.to_hex()),
            "workspace": a.workspace,
            "files": s.files, "dirs": s.dirs, "others": s.others, "bytes": s.bytes,
            "files_read": s.files_read, "bytes_read": s.bytes_read,
            "new_blobs": s.new_blobs, "new_bytes": s.new_bytes, "uploaded_bytes": s.uploaded_bytes,
            "skipped": s.skipped, "warnings": r.warnings, "is_head": r.is_head,
            "segments_fetched": r.global.segments_fetched, "useful_fetches": r.global.useful_fetches,
            "point_in_time": r.consistency.point_in_time, "frozen_seconds": r.consistency.frozen_seconds,
            "prepass_seconds": r.consistency.prepass_seconds, "freezes": r.consistency.freezes,
            "not_point_in_time_because": r.consistency.fallback,
            "seconds": r.elapsed.as_secs_f64(), "requests": cairn_engine::request_counts(),
        }));
    } else {
        for w in &r.warnings {
            eprintln!("initctl: warning: {w}");
        }
        if !g.quiet {
            eprintln!(
                "{} files, {} dirs, {} in {:.2}s; read {} files ({}), added {} ({} uploaded)",
                s.files,
                s.dirs,
                output::bytes(s.bytes),
                r.elapsed.as_secs_f64(),
                s.files_read,
                output::bytes(s.bytes_read),
                output::bytes(s.new_bytes),
                output::bytes(s.uploaded_bytes),
            );
            if s.skipped > 0 {
                eprintln!(
                    "snapshot is incomplete: {} entries left out or not current (see warnings)",
                    s.skipped
                );
            }
            match (&r.consistency.fallback, r.consistency.point_in_time) {
                (_, true) => eprintln!(
                    "point in time: the file system was frozen for {:.0} ms",
                    r.consistency.frozen_seconds * 1e3
                ),
                (Some(why), false) if a.freeze != cairn_engine::FreezeMode::Never => {
                    eprintln!("not point in time: {why}")
                }
                _ => {}
            }
        }
        println!("{}", r.snapshot);
    }
    Ok(code)
}
