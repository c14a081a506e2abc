//! `initctl init`

use anyhow::Result;
use cairn_engine::formats::{ChunkerParams, PackTargets};
use cairn_engine::{open_store, InitOptions, NewKey, Repo};
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
    /// Create an unencrypted (format version 1) repository: anyone who can read the store reads
    /// every workspace in it, and can tell whether a given file is stored by hashing it.
    #[arg(long)]
    plaintext: bool,
    /// Wrap the new repository's key with this AWS KMS key (id, ARN or alias) instead of a key
    /// file: pods then open it with their role's kms:Decrypt, no key file needed.
    #[arg(long, env = "CAIRN_KMS_KEY")]
    kms_key: Option<String>,
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
    let key = match (a.plaintext, g.keys().file, a.kms_key.clone()) {
        (true, Some(f), _) => anyhow::bail!(
            "--plaintext and a key file ({}) together: choose one; nothing was created",
            f.display()
        ),
        (true, None, Some(_)) => {
            anyhow::bail!("--plaintext and --kms-key together: choose one; nothing was created")
        }
        (true, None, None) => None,
        (false, Some(f), Some(_)) => anyhow::bail!(
            "a key file ({}) and --kms-key together: init with one, then `initctl key add` the other; \
             nothing was created",
            f.display()
        ),
        (false, None, Some(k)) => Some(NewKey::AwsKms(k)),
        (false, Some(f), None) => Some(NewKey::File(f)),
        (false, None, None) => anyhow::bail!(
            "init creates an encrypted repository: give a key file with --key-file or CAIRN_KEY_FILE \
             (at least 32 random bytes, e.g. `head -c 32 /dev/urandom > cairn.key`; keep a copy, \
             the data cannot be read without it), or --kms-key for an AWS KMS key, or pass --plaintext \
             for an unencrypted one"
        ),
    };
    let store = open_store(&g.store).await?;
    let repo = Repo::init(
        store.clone(),
        InitOptions {
            chunker,
            zstd_level: a.zstd_level,
            packs,
            key,
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
            "encrypted": repo.is_encrypted(),
            "format_version": c.version(),
        }));
    } else if !g.quiet {
        if repo.is_encrypted() {
            println!("created encrypted repository {} at {}", c.id, store.location());
        } else {
            println!(
                "created repository {} at {}, NOT encrypted: anyone who can read the store can read it",
                c.id,
                store.location()
            );
        }
    }
    Ok(exit::OK)
}
