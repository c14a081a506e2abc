//! `stats`: what a repository holds, from listings and manifests (no pack is read).

use std::collections::HashSet;

use cairn_formats::{COMPACT_PREFIX, HEADS_PREFIX, INDEX_PREFIX};
use serde::Serialize;

use crate::gc::GcState;
use crate::repo::Repo;
use crate::Result;

/// Repository statistics.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepoStats {
    /// Bytes of every pack, index record and compacted index object: what the bucket bills.
    pub stored_bytes: u64,
    /// Data packs and their bytes.
    pub data_packs: u64,
    /// Bytes of data packs.
    pub data_bytes: u64,
    /// Metadata packs.
    pub meta_packs: u64,
    /// Bytes of metadata packs.
    pub meta_bytes: u64,
    /// Index records.
    pub index_records: u64,
    /// Bytes of index records.
    pub index_bytes: u64,
    /// Objects of the compacted index (segments and move tables of the current and previous set).
    pub compact_objects: u64,
    /// Their bytes.
    pub compact_bytes: u64,
    /// Snapshots.
    pub snapshots: u64,
    /// Workspaces with a head.
    pub workspaces: u64,
    /// The sum of every snapshot's file bytes: what restoring all of them would write.
    pub logical_bytes: u64,
    /// `logical_bytes` over `stored_bytes`.
    pub dedup_ratio: f64,
    /// Objects of every kind (packs, records, manifests, heads, heartbeats, GC state).
    pub objects: u64,
    /// Objects condemned by garbage collection, waiting to be deleted, and their bytes.
    pub condemned: u64,
    /// Bytes condemned.
    pub condemned_bytes: u64,
    /// Whether the repository is encrypted (format version 2).
    pub encrypted: bool,
    /// Its format version: 1 plaintext, 2 encrypted.
    pub format_version: u16,
}

/// Gathers [`RepoStats`].
///
/// # Errors
/// Store errors; a manifest that fails verification.
pub async fn stats(repo: &Repo) -> Result<RepoStats> {
    let store = repo.store();
    let mut s = RepoStats::default();
    let all = store.list("").await?;
    s.objects = all.len() as u64;
    for o in &all {
        if o.key.starts_with("packs/data/") {
            s.data_packs += 1;
            s.data_bytes += o.size;
        } else if o.key.starts_with("packs/meta/") {
            s.meta_packs += 1;
            s.meta_bytes += o.size;
        } else if o.key.starts_with(INDEX_PREFIX) {
            s.index_records += 1;
            s.index_bytes += o.size;
        } else if o.key.starts_with(COMPACT_PREFIX) {
            s.compact_objects += 1;
            s.compact_bytes += o.size;
        }
    }
    s.stored_bytes = s.data_bytes + s.meta_bytes + s.index_bytes + s.compact_bytes;
    let heads: HashSet<&str> = all
        .iter()
        .filter_map(|o| o.key.strip_prefix(HEADS_PREFIX))
        .collect();
    s.workspaces = heads.len() as u64;
    let snapshots = repo.snapshots(None).await?;
    s.snapshots = snapshots.len() as u64;
    s.logical_bytes = snapshots.iter().map(|x| x.manifest.stats.bytes).sum();
    s.dedup_ratio = if s.stored_bytes == 0 {
        0.0
    } else {
        s.logical_bytes as f64 / s.stored_bytes as f64
    };
    let (gc, _) = GcState::read(repo).await?;
    s.condemned = gc.condemned.len() as u64;
    s.condemned_bytes = gc.condemned.iter().map(|c| c.size).sum();
    s.encrypted = repo.is_encrypted();
    s.format_version = repo.config().version();
    Ok(s)
}
