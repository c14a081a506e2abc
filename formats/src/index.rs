//! Index records: which pack holds which blob, written once per backup session.

use serde::{Deserialize, Serialize};

use crate::envelope::{self, Kind};
use crate::{FormatError, PackEntry, PackId, PackKind};

/// The blobs of one pack, as recorded in an index record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexPack {
    /// The pack.
    pub pack: PackId,
    /// Data or metadata.
    pub kind: PackKind,
    /// Total pack length in bytes.
    pub size: u64,
    /// Blobs of that pack this record vouches for (all of them, for a pack the session wrote).
    pub blobs: Vec<PackEntry>,
}

/// An immutable index record, stored at `index/records/<hh>/<id>`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexRecord {
    /// Packs and their blobs.
    pub packs: Vec<IndexPack>,
}

impl IndexRecord {
    /// Encodes with the object header.
    pub fn encode(&self) -> Vec<u8> {
        envelope::encode(Kind::Index, self)
    }

    /// Decodes and validates.
    ///
    /// # Errors
    /// Any [`FormatError`]: bad header, undecodable body, a blob outside its pack's size.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let r: IndexRecord = envelope::decode(Kind::Index, bytes)?;
        for p in &r.packs {
            for b in &p.blobs {
                if b.offset.saturating_add(u64::from(b.stored_len)) > p.size {
                    return Err(FormatError::malformed(
                        "index record",
                        format!(
                            "blob {} lies beyond the end of pack {}",
                            b.id.short(),
                            p.pack.short()
                        ),
                    ));
                }
            }
        }
        Ok(r)
    }
}
