//! `initctl check`

use std::sync::Arc;

use anyhow::Result;
use cairn_engine::{check, Progress};
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args};

use crate::{exit, output, Global};

/// Verify the repository.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Also download every referenced pack and verify every blob's hash.
    #[arg(long, env = "CAIRN_READ_DATA", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    read_data: bool,
}

pub async fn run(g: &Global, a: CheckArgs) -> Result<u8> {
    let repo = super::open(g).await?;
    let progress = Arc::new(Progress::default());
    let bar = output::Bar::start(g, "check", progress.clone());
    let started = std::time::Instant::now();
    let r = check(&repo, a.read_data, progress).await;
    bar.finish();
    let r = r?;
    let ok = r.errors.is_empty();
    if g.json {
        let mut v = serde_json::to_value(&r)?;
        v["ok"] = ok.into();
        v["seconds"] = started.elapsed().as_secs_f64().into();
        output::json(&v);
    } else {
        for e in &r.errors {
            eprintln!("error: {e}");
        }
        println!(
            "{}: {} snapshots, {} trees, {} blobs in {} packs{}{}",
            if ok { "no errors" } else { "repository damaged" },
            r.snapshots,
            r.trees,
            r.blobs,
            r.packs,
            if a.read_data {
                format!(", {} read and verified", output::bytes(r.bytes_read))
            } else {
                String::new()
            },
            if r.unreferenced_packs > 0 {
                format!("; {} unreferenced packs", r.unreferenced_packs)
            } else {
                String::new()
            }
        );
    }
    Ok(if ok { exit::OK } else { exit::VERIFY_FAILED })
}
