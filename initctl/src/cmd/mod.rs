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
pub mod policy;
pub mod restore;
pub mod snapshots;
pub mod stats;
pub mod tag;

use std::path::PathBuf;

use anyhow::Result;
use cairn_engine::{default_cache_dir, open_store, Repo};

use crate::Global;

/// Opens the repository named by `--store`.
pub async fn open(g: &Global) -> Result<Repo> {
    Ok(Repo::open_url(&g.store, &g.keys()).await?)
}

/// `--tenants` and `--key-dir`, for commands that run over every tenant of a bucket.
#[derive(clap::Args, Debug)]
pub struct TenantArgs {
    /// Run over every tenant's repository below --store (`<store>/<tenant>`), one after another;
    /// each keeps its own keys, state, lease and index.
    #[arg(long)]
    pub tenants: bool,
    /// With --tenants: the directory of the tenants' key files, one named by each tenant (a Secret
    /// mounted as a directory); a tenant without one is opened through its KMS wrapping.
    #[arg(long, env = "CAIRN_KEY_DIR")]
    pub key_dir: Option<PathBuf>,
}

/// What a run over the tenants gave: each tenant's result, its JSON, and whether one failed.
pub struct TenantRun<T> {
    pub ok: Vec<(String, T)>,
    pub json: Vec<serde_json::Value>,
    pub failed: bool,
}

/// Runs `f` on every tenant repository below `--store` (`<store>/<tenant>/config`), each opened
/// with its key file `<key_dir>/<tenant>` if there is one, else through KMS. A tenant that fails
/// is named on stderr and in the JSON (`error`), and the others still run.
pub async fn each_tenant<T, F, Fut>(
    g: &Global,
    t: &TenantArgs,
    what: &str,
    field: &str,
    mut f: F,
) -> Result<TenantRun<T>>
where
    T: serde::Serialize,
    F: FnMut(Repo) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let list = cairn_engine::tenant_repositories(&g.store).await?;
    if list.is_empty() {
        anyhow::bail!(
            "{}: no tenant repositories below it (looked for <store>/<tenant>/config); --tenants takes the \
             prefix that holds them, e.g. s3://bucket/t",
            g.store
        );
    }
    let mut run = TenantRun {
        ok: Vec::new(),
        json: Vec::new(),
        failed: false,
    };
    for (tenant, url) in list {
        let keys = cairn_engine::KeySource::from_path(
            t.key_dir.as_ref().map(|d| d.join(&tenant)).filter(|p| p.exists()),
        );
        let r = match Repo::open_with(open_store(&url).await?, &keys).await {
            Ok(repo) => f(repo).await,
            Err(e) => Err(e.into()),
        };
        let mut entry = serde_json::Map::new();
        entry.insert("tenant".into(), tenant.clone().into());
        match r {
            Ok(v) => {
                entry.insert(field.into(), serde_json::to_value(&v)?);
                run.ok.push((tenant, v));
            }
            Err(e) => {
                run.failed = true;
                eprintln!("initctl: {what} of tenant {tenant}: {e:#}");
                entry.insert("error".into(), format!("{e:#}").into());
            }
        }
        run.json.push(entry.into());
    }
    Ok(run)
}

/// The cache directory: `--cache-dir`, else the default.
pub fn cache_dir(g: &Global) -> PathBuf {
    g.cache_dir.clone().unwrap_or_else(default_cache_dir)
}

pub use cairn_engine::hostname;
