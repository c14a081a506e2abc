//! `initctl key list | add | remove`: the wrappings of an encrypted repository's root key.
//!
//! Like restic's `key` command: every key object wraps the same root key, so data stays readable
//! through any remaining one; adding one needs a key that opens the repository (`--key-file`).

use std::path::PathBuf;

use anyhow::Result;
use cairn_engine::{KeyInfo, NewKey};
use clap::Subcommand;

use crate::{exit, output, Global};

/// What to do with the keys.
#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// List the key objects (never the keys).
    List,
    /// Add a wrapping of the root key under another key file or an AWS KMS key (rotation: add,
    /// switch, remove).
    Add {
        /// The new key file: at least 32 random bytes.
        #[arg(long, required_unless_present = "kms_key", conflicts_with = "kms_key")]
        new_key_file: Option<PathBuf>,
        /// An AWS KMS key (id, ARN or alias) to wrap the root key with.
        #[arg(long)]
        kms_key: Option<String>,
    },
    /// Remove a key object by id (or a unique prefix of it); not the one in use.
    Remove {
        /// The key object's id, or at least 4 of its hex digits.
        id: String,
    },
}

fn describe(k: &KeyInfo) -> String {
    let current = if k.current { "  (in use)" } else { "" };
    format!(
        "{}  {:<20}  {}  {}{current}",
        k.id,
        k.wrap,
        cairn_engine::formats::Timestamp {
            secs: k.created,
            nanos: 0
        }
        .to_rfc3339(),
        k.host
    )
}

pub async fn run(g: &Global, c: KeyCommand) -> Result<u8> {
    let repo = super::open(g).await?;
    match c {
        KeyCommand::List => {
            let keys = repo.key_list().await?;
            if g.json {
                output::json(&serde_json::to_value(&keys)?);
            } else if !repo.is_encrypted() {
                println!(
                    "{}: not encrypted (format version 1); it has no keys",
                    repo.store().location()
                );
            } else {
                for k in &keys {
                    println!("{}", describe(k));
                }
            }
        }
        KeyCommand::Add {
            new_key_file,
            kms_key,
        } => {
            let new = match (new_key_file, kms_key) {
                (Some(f), _) => NewKey::File(f),
                (None, Some(k)) => NewKey::AwsKms(k),
                (None, None) => anyhow::bail!("key add: give --new-key-file or --kms-key"),
            };
            let k = repo.key_add(&g.keys(), &new).await?;
            if g.json {
                output::json(&serde_json::to_value(&k)?);
            } else if !g.quiet {
                println!("added key {}", k.id);
            }
        }
        KeyCommand::Remove { id } => {
            if id.len() < 4 {
                anyhow::bail!("key {id:?}: give at least 4 hex digits of a key id (see `initctl key list`)");
            }
            let k = repo.key_remove(&id).await?;
            if g.json {
                output::json(&serde_json::to_value(&k)?);
            } else if !g.quiet {
                println!("removed key {}", k.id);
            }
        }
    }
    Ok(exit::OK)
}
