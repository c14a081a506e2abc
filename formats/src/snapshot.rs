//! Snapshot manifests (immutable) and workspace heads (the only mutable objects).

use serde::{Deserialize, Serialize};

use crate::envelope::{self, Kind};
use crate::{BlobId, FormatError, IndexId, Meta, SnapshotId, Timestamp};

/// Counters recorded with each snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStats {
    /// Regular files.
    pub files: u64,
    /// Directories, the root included.
    pub dirs: u64,
    /// Symlinks, FIFOs and devices.
    pub others: u64,
    /// Sum of regular file sizes.
    pub bytes: u64,
    /// Files whose content was read (not served by the stat cache).
    pub files_read: u64,
    /// Bytes read from files.
    pub bytes_read: u64,
    /// Blobs this backup added to the repository.
    pub new_blobs: u64,
    /// Uncompressed bytes of the new blobs.
    pub new_bytes: u64,
    /// Bytes of packs this backup uploaded.
    pub uploaded_bytes: u64,
    /// Entries left out because they could not be read or kept changing.
    pub skipped: u64,
}

/// A snapshot manifest, stored create-only at `snapshots/<workspace>/<id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The workspace this snapshot belongs to.
    pub workspace: String,
    /// When the backup started (writer's clock).
    pub time: Timestamp,
    /// The writer's host name.
    pub host: String,
    /// The directory that was backed up, as given (raw bytes).
    pub source: Vec<u8>,
    /// The root tree.
    pub root: BlobId,
    /// Metadata of the root directory itself.
    pub root_meta: Meta,
    /// The snapshot this one was incremental to, if any.
    pub parent: Option<SnapshotId>,
    /// The base snapshot a workspace was bootstrapped or forked from, if any.
    pub base: Option<SnapshotId>,
    /// Index records that together locate every blob this snapshot references.
    pub index: Vec<IndexId>,
    /// Counters.
    pub stats: SnapshotStats,
    /// Free-form tags.
    pub tags: Vec<String>,
}

impl Manifest {
    /// Encodes with the object header.
    pub fn encode(&self) -> Vec<u8> {
        envelope::encode(Kind::Manifest, self)
    }

    /// Decodes and validates.
    ///
    /// # Errors
    /// Any [`FormatError`] for bytes that are not a valid manifest.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let m: Manifest = envelope::decode(Kind::Manifest, bytes)?;
        validate_workspace(&m.workspace)
            .map_err(|_| FormatError::malformed("snapshot manifest", "invalid workspace name"))?;
        if !m.time.is_valid() {
            return Err(FormatError::malformed(
                "snapshot manifest",
                "time nanoseconds out of range",
            ));
        }
        Ok(m)
    }
}

/// The head of a workspace, stored at `heads/<workspace>` and replaced only by compare-and-swap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The latest sealed snapshot.
    pub snapshot: SnapshotId,
    /// That snapshot's time, so listing heads needs no manifest reads.
    pub time: Timestamp,
}

impl Head {
    /// Encodes with the object header.
    pub fn encode(&self) -> Vec<u8> {
        envelope::encode(Kind::Head, self)
    }

    /// Decodes.
    ///
    /// # Errors
    /// Any [`FormatError`] for bytes that are not a valid head.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        envelope::decode(Kind::Head, bytes)
    }
}

/// Checks a workspace name: 1 to 128 of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`.
///
/// # Errors
/// [`FormatError::Invalid`] naming the rule.
pub fn validate_workspace(name: &str) -> Result<(), FormatError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(FormatError::Invalid {
            what: "workspace name",
            value: name.to_string(),
            reason: "use 1-128 of A-Z a-z 0-9 . _ -, not starting with . or -",
        })
    }
}
