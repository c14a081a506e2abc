//! `initctl init`

use anyhow::Result;
use cairn_engine::formats::{ChunkerParams, PackTargets};
use cairn_engine::{open_store, InitOptions, Repo};
use clap::Args;

use crate::{exit, output, Global};

/// Create a repository.
#[derive(Args, Debug)]
pub struct InitArgs {
    /// FastCDC min/avg/max chunk sizes in bytes, e.g. 262144/1048576/4194304 (fixed forever).
    #[arg(long, env = "CAIRN_CHUNKER")]
    chunker: Option<String>,
    /// zstd level for new blobs (0 disables compression).
    #[arg(long, env = "CAIRN_ZSTD_LEVEL")]
    zstd_level: Option<i32>,
    /// Data pack target size in bytes.
    #[arg(long, env = "CAIRN_PACK_SIZE")]
    pack_size: Option<u32>,
}

pub async fn run(g: &Global, a: InitArgs) -> Result<u8> {
    let chunker = match &a.chunker {
        Some(s) => {
            let parts: Vec<u32> = s
                .split('/')
                .map(str::parse)
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| anyhow::anyhow!("--chunker {s:?}: expected MIN/AVG/MAX in bytes"))?;
            let [min, avg, max] = parts[..] else {
                anyhow::bail!("--chunker {s:?}: expected MIN/AVG/MAX in bytes");
            };
            Some(ChunkerParams { min, avg, max })
        }
        None => None,
    };
    let packs = a.pack_size.map(|data| PackTargets {
        data,
        meta: PackTargets::default().meta.min(data),
    });
    let store = open_store(&g.store).await?;
    let repo = Repo::init(
        store.clone(),
        InitOptions {
            chunker,
            zstd_level: a.zstd_level,
            packs,
        },
    )
    .await?;
    let c = repo.config();
    if g.json {
        output::json(&serde_json::json!({
            "store": store.location(),
            "repository": c.id.to_hex(),
            "chunker": { "min": c.chunker.min, "avg": c.chunker.avg, "max": c.chunker.max },
            "zstd_level": c.compression.zstd_level,
            "pack_size": c.packs.data,
        }));
    } else if !g.quiet {
        println!("created repository {} at {}", c.id, store.location());
    }
    Ok(exit::OK)
}
