//! `initctl tag`

use anyhow::{Context, Result};
use clap::Args;

use crate::{exit, output, Global};

/// Change a snapshot's tags (its id changes: a manifest is named by its hash).
#[derive(Args, Debug)]
pub struct TagArgs {
    /// The snapshot: WORKSPACE (its latest) or WORKSPACE@SNAPSHOT.
    snapshot: String,
    /// Replace every tag with these (comma-separated; empty: no tags).
    #[arg(long, value_delimiter = ',', num_args = 0..)]
    set: Option<Vec<String>>,
    /// Add these tags (comma-separated, repeatable).
    #[arg(long, value_delimiter = ',')]
    add: Vec<String>,
    /// Remove these tags (comma-separated, repeatable).
    #[arg(long, value_delimiter = ',')]
    remove: Vec<String>,
}

pub async fn run(g: &Global, a: TagArgs) -> Result<u8> {
    let repo = super::open(g).await?;
    let (ws, snap) = a
        .snapshot
        .split_once('@')
        .unwrap_or((a.snapshot.as_str(), "latest"));
    let change = cairn_engine::TagChange {
        set: a.set.map(|v| v.into_iter().filter(|t| !t.is_empty()).collect()),
        add: a.add,
        remove: a.remove,
    };
    let r = cairn_engine::tag(&repo, ws, Some(snap), &change)
        .await
        .with_context(|| format!("tag {}", a.snapshot))?;
    if g.json {
        output::json(&serde_json::json!({
            "workspace": ws, "from": r.from.to_hex(), "snapshot": r.snapshot.to_hex(),
            "tags": r.tags, "head_moved": r.head_moved,
        }));
    } else {
        if !g.quiet {
            if r.from == r.snapshot {
                eprintln!("{ws}@{}: tags unchanged", r.from.short());
            } else {
                eprintln!(
                    "{ws}@{} is now {} with tags [{}]{}",
                    r.from.short(),
                    r.snapshot.short(),
                    r.tags.join(", "),
                    if r.head_moved { " (the latest)" } else { "" }
                );
            }
        }
        println!("{}", r.snapshot.to_hex());
    }
    Ok(exit::OK)
}
