//! Store keys: where each object lives inside a repository prefix.

use crate::{IndexId, PackId, PackKind, SnapshotId};

/// The repository config.
pub const CONFIG_KEY: &str = "config";

/// `packs/<data|meta>/<hh>/<pack-id>`.
pub fn pack_key(kind: PackKind, id: &PackId) -> String {
    format!("packs/{}/{}/{}", kind.dir(), id.fanout(), id.to_hex())
}

/// `index/records/<hh>/<record-id>`.
pub fn index_key(id: &IndexId) -> String {
    format!("index/records/{}/{}", id.fanout(), id.to_hex())
}

/// Prefix of every index record.
pub const INDEX_PREFIX: &str = "index/records/";

/// `index/compact/<set>/<shard>`: one segment of a compacted index set (`<shard>` is 4 lower-case
/// hex digits).
pub fn segment_key(set: &str, shard: u32) -> String {
    format!("{COMPACT_PREFIX}{set}/{shard:04x}")
}

/// Prefix of every compacted index segment.
pub const COMPACT_PREFIX: &str = "index/compact/";

/// `index/compact/<set>/moves-<shard>`: one shard of a compacted set's move table (`<shard>` is
/// 4 lower-case hex digits).
pub fn move_table_key(set: &str, shard: u32) -> String {
    format!("{COMPACT_PREFIX}{set}/moves-{shard:04x}")
}

/// `snapshots/<workspace>/<snapshot-id>`.
pub fn snapshot_key(workspace: &str, id: &SnapshotId) -> String {
    format!("snapshots/{workspace}/{}", id.to_hex())
}

/// `snapshots/<workspace>/`, or every workspace's with `None`.
pub fn snapshot_prefix(workspace: Option<&str>) -> String {
    match workspace {
        Some(w) => format!("snapshots/{w}/"),
        None => "snapshots/".to_string(),
    }
}

/// `heads/<workspace>`.
pub fn head_key(workspace: &str) -> String {
    format!("heads/{workspace}")
}

/// Prefix of every head.
pub const HEADS_PREFIX: &str = "heads/";

/// Prefix of every pack of a kind.
pub fn pack_prefix(kind: PackKind) -> String {
    format!("packs/{}/", kind.dir())
}

/// `keys/<32 hex>`: one wrapping of the root key of an encrypted repository.
pub fn key_object_key(id: &[u8; 16]) -> String {
    format!("{KEYS_PREFIX}{}", hex::encode(id))
}

/// Prefix of every key object.
pub const KEYS_PREFIX: &str = "keys/";
