//! Cairn's engine: everything that does work.
//!
//! A backup walks a directory in parallel, splits changed files into content-defined chunks
//! (FastCDC), names each by its BLAKE3 hash, compresses new ones with zstd, and packs them into
//! large immutable pack objects; trees describe directories; a manifest seals a snapshot; the
//! workspace head moves to it by compare-and-swap. A restore reads the head, the manifest, the
//! index records and trees it names, then fetches pack ranges in parallel and writes verified
//! bytes at their offsets. See `ARCHITECTURE.md` at the repository root for the code map and the
//! invariants, and `formats/FORMAT.md` for the on-store format.
//!
//! Design notes:
//! - CPU work (hashing, chunking, compression, decompression) runs on rayon or tokio's blocking
//!   threads; store I/O runs on tokio. Every queue between them is bounded.
//! - The local index (RocksDB) is a cache: blob locations, pack coverage, and a stat cache that
//!   lets an incremental backup skip reading unchanged files. Losing it costs time only.
//! - Store writes are create-only for content-addressed objects; only heads change, by
//!   compare-and-swap.

#![warn(missing_docs)]

pub mod access;
mod backup;
pub mod broker;
mod browse;
mod check;
mod chunker;
mod compact;
mod compress;
mod drill;
mod error;
mod forget;
mod fork;
mod gc;
mod heartbeat;
mod index;
mod keys;
mod meta;
mod pack;
mod progress;
mod repack;
mod repo;
mod restore;
mod stats;
mod store;
mod tag;
mod tree;
mod verify;
mod volume;

pub use backup::{
    backup, freezable, freeze_hold_from_env, hostname, max_session_from_env, thaw_leftover, BackupOptions,
    BackupReport, Consistency, Freezable, FreezeMode, FreezeOptions, MAX_DEPTH, MAX_RECORDS,
};
pub use browse::{
    diff, entry_size, join as join_path, normalize_path, split_path, Change, Difference, SnapshotView,
};
pub use check::{check, CheckReport};
pub use chunker::{chunk_reader, chunk_slice, ChunkReadError};
pub use compact::{dedup_fetches_from_env, CompactSet, GlobalDedup};
pub use compress::{decode_blob, encode_blob, EncodedBlob};
pub use drill::{drill, DrillReport};
pub use error::{Error, Result};
pub use forget::{forget, forget_workspace, Decision, ForgetReport, KeepPolicy, SnapshotFilter};
pub use fork::{fork, ForkReport};
pub use gc::{gc, Condemned, GcOptions, GcReport, GcState, GcView, GC_LEASE_KEY, GC_STATE_KEY};
pub use heartbeat::{
    heartbeat_key, heartbeat_objects, heartbeats, heartbeats_from, pod_host, unix_now, Heartbeat,
    HeartbeatWriter, HEARTBEATS_PREFIX,
};
pub use index::{BlobLocation, LocalIndex, PackInfo, StatEntry};
pub use keys::{Crypt, KeyInfo, KeySource, NewKey, KEY_FILE_ENV};
pub use meta::{is_root, no_core_dumps, raise_fd_limit};
pub use pack::{FinishedPack, PackBuilder};
pub use progress::{Progress, ProgressSnapshot};
pub use repack::RepackReport;
pub use repo::{
    default_cache_dir, tenant_repositories, IndexHandle, InitOptions, Locations, Repo, SnapshotInfo,
};
pub use restore::{restore, restore_with_trees, RestoreOptions, RestoreReport};
pub use stats::{stats, RepoStats};
pub use store::{
    check_conditional_writes, open_store, open_store_with, parse_duration, parse_duration_arg,
    request_counts, CountingStore, FaultPlan, FaultStats, FaultStore, GcsOptions, GcsStore, GetResult,
    LocalStore, ObjectMeta, PutMode, RequestCounts, RetryPolicy, RetryStats, RetryStore, S3Options, S3Store,
    Store, StoreExt, StoreOptions, Version,
};
pub use tag::{tag, TagChange, TagReport};
pub use tree::SnapshotTrees;
pub use verify::{verify_dir, VerifyReport};
pub use volume::dir::{same_entry, Dir as WorkspaceDir, Mismatch, OpenedFile, Stat};
pub use volume::{
    adopt_volume, inspect, is_volume_file, local_changes, mark_empty, read_marker, LocalChanges,
    RestoreMarker, VolumeState, RESTORING_MARKER, STAGING_DIR,
};

/// Re-export of the format crate, so binaries need one dependency.
pub use cairn_formats as formats;

/// Name of the completion marker a restore writes at the root of its target, last (see
/// [`RestoreMarker`]). Backups leave it out, with the other names [`is_volume_file`] lists.
pub const RESTORE_MARKER: &str = ".cairn-snapshot";
