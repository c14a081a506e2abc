//! The repository config: written once by `init`, create-only, never changed.

use serde::{Deserialize, Serialize};

use crate::envelope::{self, Kind};
use crate::{FormatError, RepoId, Timestamp};

/// FastCDC chunk-size limits in bytes. Pinned forever: changing them breaks dedup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// Smallest chunk (except a file's last).
    pub min: u32,
    /// Target average chunk.
    pub avg: u32,
    /// Largest chunk.
    pub max: u32,
}

impl Default for ChunkerParams {
    fn default() -> Self {
        ChunkerParams {
            min: 256 << 10,
            avg: 1 << 20,
            max: 4 << 20,
        }
    }
}

impl ChunkerParams {
    /// Checks the limits FastCDC (2020) accepts.
    ///
    /// # Errors
    /// [`FormatError::Invalid`] naming the first limit out of range.
    pub fn validate(&self) -> Result<(), FormatError> {
        let bad = |reason| FormatError::Invalid {
            what: "chunker parameters",
            value: format!("{}/{}/{}", self.min, self.avg, self.max),
            reason,
        };
        if !(64..=1 << 20).contains(&self.min) {
            return Err(bad("min must be 64 B..1 MiB"));
        }
        if !(256..=4 << 20).contains(&self.avg) {
            return Err(bad("avg must be 256 B..4 MiB"));
        }
        if !(1024..=16 << 20).contains(&self.max) {
            return Err(bad("max must be 1 KiB..16 MiB"));
        }
        if !(self.min <= self.avg && self.avg <= self.max) {
            return Err(bad("need min <= avg <= max"));
        }
        if !(self.min.is_multiple_of(2) && self.avg.is_multiple_of(2) && self.max.is_multiple_of(2)) {
            return Err(bad("sizes must be even"));
        }
        Ok(())
    }
}

/// How blobs are compressed. Each blob records its own codec, so this only steers writers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compression {
    /// zstd level for new blobs; 0 disables compression.
    pub zstd_level: i32,
}

impl Default for Compression {
    fn default() -> Self {
        Compression { zstd_level: 3 }
    }
}

/// Target sizes of packs in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackTargets {
    /// Data packs (file chunks).
    pub data: u32,
    /// Metadata packs (trees).
    pub meta: u32,
}

impl Default for PackTargets {
    fn default() -> Self {
        // 8 MiB data packs: few enough objects (128 per GiB) for cheap listing and requests,
        // small enough that a backup's packs in flight stay well under restic's memory.
        PackTargets {
            data: 8 << 20,
            meta: 4 << 20,
        }
    }
}

/// Encryption at rest: `None` in version 1, `Aes256Gcm` in version 2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Encryption {
    /// Version 1: blobs are stored in the clear; ids are plain BLAKE3.
    None,
    /// Version 2: everything but this config and the key objects is sealed with AES-256-GCM
    /// under keys derived from a random root key (see `seal.rs`); blob ids are keyed BLAKE3 and
    /// the chunker's gear table is seeded from the root key.
    Aes256Gcm,
}

/// The repository config object, stored at `config`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfig {
    /// Random id, fixed at init. Names the local cache directory.
    pub id: RepoId,
    /// When `init` ran (client clock; informational).
    pub created: Timestamp,
    /// Chunk-size limits.
    pub chunker: ChunkerParams,
    /// Compression for new blobs.
    pub compression: Compression,
    /// Pack size targets.
    pub packs: PackTargets,
    /// Encryption mode.
    pub encryption: Encryption,
}

impl RepoConfig {
    /// Encodes with the object header.
    pub fn encode(&self) -> Vec<u8> {
        envelope::encode_version(Kind::Config, self.version(), self)
    }

    /// The format version of the repository: 1 plaintext, 2 encrypted.
    pub fn version(&self) -> u16 {
        match self.encryption {
            Encryption::None => crate::envelope::PLAIN_VERSION,
            Encryption::Aes256Gcm => crate::FORMAT_VERSION,
        }
    }

    /// Decodes and validates.
    ///
    /// # Errors
    /// Any [`FormatError`] for bytes that are not a valid version-1 config.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let (c, version): (RepoConfig, u16) = envelope::decode_versioned(Kind::Config, bytes)?;
        if version != c.version() {
            return Err(FormatError::malformed(
                "repository config",
                format!("a version-{version} config with encryption {:?}", c.encryption),
            ));
        }
        c.chunker.validate()?;
        if c.packs.data < 1 << 10 || c.packs.meta < 1 << 10 {
            return Err(FormatError::malformed(
                "repository config",
                "pack targets below 1 KiB",
            ));
        }
        if !(0..=22).contains(&c.compression.zstd_level) {
            return Err(FormatError::malformed(
                "repository config",
                "zstd level outside 0..=22",
            ));
        }
        Ok(c)
    }
}
