//! One module per subcommand.

pub mod backup;
pub mod browse;
pub mod check;
pub mod drill;
pub mod forget;
pub mod fork;
pub mod gc;
pub mod heartbeats;
pub mod init;
pub mod key;
pub mod restore;
pub mod snapshots;
pub mod stats;

use std::path::PathBuf;

use anyhow::Result;
use cairn_engine::{default_cache_dir, open_store, Repo};

use crate::Global;

/// Opens the repository named by `--store`.
pub async fn open(g: &Global) -> Result<Repo> {
    let store = open_store(&g.store).await?;
    Ok(Repo::open_with(store, &g.keys()).await?)
}

/// The cache directory: `--cache-dir`, else the default.
pub fn cache_dir(g: &Global) -> PathBuf {
    g.cache_dir.clone().unwrap_or_else(default_cache_dir)
}

pub use cairn_engine::hostname;
