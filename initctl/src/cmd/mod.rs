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

/// With `--tenants`: every tenant repository below `--store` (`<store>/<tenant>/config`), each
/// opened with its key file `<key_dir>/<tenant>` if there is one, else through KMS.
pub async fn tenants(g: &Global, key_dir: Option<&std::path::Path>) -> Result<Vec<(String, Result<Repo>)>> {
    let mut out = Vec::new();
    for (tenant, url) in cairn_engine::tenant_repositories(&g.store).await? {
        let keys = cairn_engine::KeySource {
            file: key_dir.map(|d| d.join(&tenant)).filter(|p| p.exists()),
        };
        let repo = async { Ok(Repo::open_with(open_store(&url).await?, &keys).await?) }.await;
        out.push((tenant, repo));
    }
    if out.is_empty() {
        anyhow::bail!(
            "{}: no tenant repositories below it (looked for <store>/<tenant>/config); --tenants takes the \
             prefix that holds them, e.g. s3://bucket/t",
            g.store
        );
    }
    Ok(out)
}

/// The cache directory: `--cache-dir`, else the default.
pub fn cache_dir(g: &Global) -> PathBuf {
    g.cache_dir.clone().unwrap_or_else(default_cache_dir)
}

pub use cairn_engine::hostname;
