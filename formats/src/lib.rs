//! Cairn's on-store format, versions 1 (plaintext) and 2 (sealed): the types, their encodings,
//! the sealing, and the key layout.
//!
//! This crate does no I/O and has no async: it turns bytes into validated values and back.
//! Every decoder returns an error on malformed input and never panics, whatever the bytes; the
//! property tests and golden files in `tests/` hold it to that. The prose specification is
//! `FORMAT.md` next to this crate; a change to any encoded byte is a format break and needs a new
//! version number.
//!
//! Design decisions:
//! - Bodies are [postcard](https://docs.rs/postcard) (a stable, documented, compact serde wire
//!   format) behind an 8-byte header naming the object kind and format version.
//! - Ids are BLAKE3 of the exact stored bytes, so every object verifies itself; blob ids are
//!   BLAKE3 of their plaintext (version 1) or keyed BLAKE3 (version 2).
//! - Version 2 seals every object but the config and key objects with AES-256-GCM (`seal.rs`).
//! - Tree decoding validates names (one component, no `..`, no `/`, no NUL, sorted, unique), so a
//!   crafted snapshot cannot describe a path outside its root.

#![warn(missing_docs)]

mod config;
mod envelope;
mod error;
mod id;
mod index;
mod keyobj;
mod keys;
mod pack;
mod seal;
mod segment;
mod snapshot;
mod time;
mod tree;

pub use config::{ChunkerParams, Compression, Encryption, PackTargets, RepoConfig};
pub use envelope::{FORMAT_VERSION, PLAIN_VERSION};
pub use error::FormatError;
pub use id::{BlobId, IndexId, PackId, RepoId, SnapshotId};
pub use index::{IndexPack, IndexRecord};
pub use keyobj::{KeyObject, KeyWrap};
pub use keys::{
    head_key, index_key, key_object_key, move_table_key, pack_key, pack_prefix, segment_key, snapshot_key,
    snapshot_prefix, COMPACT_PREFIX, CONFIG_KEY, HEADS_PREFIX, INDEX_PREFIX, KEYS_PREFIX,
};
pub use pack::{
    Codec, PackEntry, PackKind, PackTrailer, PACK_FOOTER_LEN, PACK_HEADER_LEN, PACK_MAGIC, PACK_MAGIC_V2,
};
pub use seal::{FileKek, RepoKeys, RootKey, MIN_KEY_FILE_LEN, SALT_LEN, SEAL_OVERHEAD, STATE_KIND, TAG_LEN};
pub use segment::{
    shard_of, shard_of_bytes, IndexSegment, MoveEntry, MovePiece, MoveTable, PackMove, SegmentBlob,
    SegmentPack, MAX_SHARD_BITS,
};
pub use snapshot::{validate_workspace, Head, Manifest, SnapshotStats};
pub use time::Timestamp;
pub use tree::{validate_name, Entry, Extent, Meta, Node, Tree, Xattr, MAX_NAME_LEN};
