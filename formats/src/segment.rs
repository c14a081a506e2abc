//! Compacted index segments and pack moves: what garbage collection writes so that backups can
//! deduplicate against every workspace's data, and readers can find blobs whose pack was repacked.

use serde::{Deserialize, Serialize};

use crate::envelope::{self, Kind};
use crate::{BlobId, FormatError, IndexId, PackEntry, PackId, PackKind, PACK_HEADER_LEN};

/// The most shard bits a segment set uses (65,536 segments).
pub const MAX_SHARD_BITS: u8 = 16;

/// The shard of `id` among `2^bits`: the id's leading `bits` bits.
pub fn shard_of(id: &BlobId, bits: u8) -> u32 {
    shard_of_bytes(id.as_bytes(), bits)
}

/// The shard of a 32-byte id among `2^bits`: its leading `bits` bits.
pub fn shard_of_bytes(b: &[u8; 32], bits: u8) -> u32 {
    if bits == 0 {
        return 0;
    }
    let lead = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    lead >> (32 - u32::from(bits.min(MAX_SHARD_BITS)))
}

/// Checks that `shard` is one of `2^bits` shards, and `bits` at most [`MAX_SHARD_BITS`].
fn check_shard(what: &'static str, bits: u8, shard: u32) -> Result<(), FormatError> {
    if bits > MAX_SHARD_BITS || u64::from(shard) >= 1u64 << bits {
        return Err(FormatError::malformed(
            what,
            format!("shard {shard} of {bits} bits"),
        ));
    }
    Ok(())
}

/// A pack a segment locates blobs in, and the index record that lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentPack {
    /// The pack.
    pub pack: PackId,
    /// Data or metadata.
    pub kind: PackKind,
    /// Total pack length in bytes.
    pub size: u64,
    /// Slot in [`IndexSegment::records`] of a live record that lists the pack.
    pub record: u32,
}

/// One blob of a segment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentBlob {
    /// Slot in [`IndexSegment::packs`].
    pub pack: u32,
    /// Where in that pack.
    pub entry: PackEntry,
}

/// One shard of a compacted index: every blob whose id falls in the shard that the live index
/// records of one garbage-collection run locate, sorted by id, each with the record to cite.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexSegment {
    /// How many leading id bits select the shard.
    pub shard_bits: u8,
    /// This shard.
    pub shard: u32,
    /// The records cited.
    pub records: Vec<IndexId>,
    /// The packs.
    pub packs: Vec<SegmentPack>,
    /// The blobs, strictly increasing by id.
    pub blobs: Vec<SegmentBlob>,
}

impl IndexSegment {
    /// Encodes with the object header.
    pub fn encode(&self) -> Vec<u8> {
        envelope::encode(Kind::Segment, self)
    }

    /// Decodes and validates: slots in range, blobs sorted, in this shard and inside their pack.
    ///
    /// # Errors
    /// Any [`FormatError`].
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        const WHAT: &str = "index segment";
        let s: IndexSegment = envelope::decode(Kind::Segment, bytes)?;
        check_shard(WHAT, s.shard_bits, s.shard)?;
        for p in &s.packs {
            if p.record as usize >= s.records.len() {
                return Err(FormatError::malformed(
                    WHAT,
                    "pack names a record slot out of range",
                ));
            }
        }
        let mut prev: Option<&BlobId> = None;
        for b in &s.blobs {
            let Some(p) = s.packs.get(b.pack as usize) else {
                return Err(FormatError::malformed(
                    WHAT,
                    "blob names a pack slot out of range",
                ));
            };
            if b.entry.offset.saturating_add(u64::from(b.entry.stored_len)) > p.size {
                return Err(FormatError::malformed(
                    WHAT,
                    format!("blob {} lies beyond the end of its pack", b.entry.id.short()),
                ));
            }
            if shard_of(&b.entry.id, s.shard_bits) != s.shard {
                return Err(FormatError::malformed(
                    WHAT,
                    format!("blob {} is not in shard {}", b.entry.id.short(), s.shard),
                ));
            }
            if prev.is_some_and(|p| p >= &b.entry.id) {
                return Err(FormatError::malformed(
                    WHAT,
                    "blobs not strictly increasing by id",
                ));
            }
            prev = Some(&b.entry.id);
        }
        Ok(s)
    }
}

/// One contiguous range of a repacked pack and where it is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovePiece {
    /// Offset in the old pack.
    pub offset: u64,
    /// Length.
    pub len: u64,
    /// Offset in the new pack.
    pub at: u64,
}

/// Where the blobs of a repacked pack are now: ranges of the old pack (whole blobs), copied byte
/// for byte into the new pack. A small pack moves whole (one piece: its blob region); a mostly
/// empty one moves only its live blobs (one piece per run of live blobs). A blob of the old pack
/// not covered by a piece is gone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackMove {
    /// The pack that was repacked (and then deleted).
    pub from: PackId,
    /// Its kind (the new pack has the same).
    pub kind: PackKind,
    /// The pack holding the blobs now.
    pub to: PackId,
    /// That pack's length.
    pub to_size: u64,
    /// The ranges moved, increasing and disjoint in both packs.
    pub pieces: Vec<MovePiece>,
}

impl PackMove {
    /// Checks the pieces: inside both packs, increasing, disjoint.
    ///
    /// # Errors
    /// [`FormatError::Malformed`] naming the problem.
    pub fn validate(&self) -> Result<(), FormatError> {
        let m = self;
        let bad = |d: String| Err(FormatError::malformed("pack move", d));
        if m.from == m.to {
            return bad("moves a pack onto itself".into());
        }
        let (mut old_end, mut new_end) = (PACK_HEADER_LEN, PACK_HEADER_LEN);
        for p in &m.pieces {
            if p.offset < old_end || p.at < new_end || p.at.saturating_add(p.len) > m.to_size {
                return bad(format!(
                    "piece {}+{} -> {} overlaps, is out of order or lies beyond the new pack of {} bytes",
                    p.offset, p.len, p.at, m.to_size
                ));
            }
            old_end = p.offset.saturating_add(p.len);
            new_end = p.at + p.len;
        }
        Ok(())
    }

    /// The pieces that overlap `range` of the old pack, as (old range, new offset) clipped to
    /// `range`; `None` if no piece does.
    pub fn map(&self, range: &std::ops::Range<u64>) -> Option<Vec<(std::ops::Range<u64>, u64)>> {
        let out: Vec<_> = self
            .pieces
            .iter()
            .filter(|p| p.offset < range.end && p.offset + p.len > range.start)
            .map(|p| {
                let start = p.offset.max(range.start);
                let end = (p.offset + p.len).min(range.end);
                (start..end, p.at + (start - p.offset))
            })
            .collect();
        (!out.is_empty()).then_some(out)
    }

    /// Whether `range` of the old pack lies entirely inside one piece (a blob that moved).
    pub fn covers(&self, range: &std::ops::Range<u64>) -> bool {
        self.pieces
            .iter()
            .any(|p| p.offset <= range.start && range.end <= p.offset + p.len)
    }

    /// The end of the last piece in the old pack (header length if none).
    pub fn old_end(&self) -> u64 {
        self.pieces.last().map_or(PACK_HEADER_LEN, |p| p.offset + p.len)
    }
}

/// A move as garbage collection keeps it: with the store time since which no live index record
/// lists the old pack (the move is dropped once that is longer ago than the protection window).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveEntry {
    /// The move.
    pub mv: PackMove,
    /// Unix seconds by the store's clock since the old pack is unlisted, if it is.
    pub unused_since: Option<i64>,
}

/// One shard of a compacted set's move table: the moves of every repacked pack whose id falls in
/// the shard, sorted by old pack id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveTable {
    /// How many leading id bits select the shard.
    pub shard_bits: u8,
    /// This shard.
    pub shard: u32,
    /// The moves.
    pub moves: Vec<MoveEntry>,
}

impl MoveTable {
    /// Encodes with the object header.
    pub fn encode(&self) -> Vec<u8> {
        envelope::encode(Kind::Move, self)
    }

    /// Decodes and validates: every move valid and in this shard, strictly increasing by old pack.
    ///
    /// # Errors
    /// Any [`FormatError`].
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        const WHAT: &str = "move table";
        let t: MoveTable = envelope::decode(Kind::Move, bytes)?;
        check_shard(WHAT, t.shard_bits, t.shard)?;
        let mut prev: Option<&PackId> = None;
        for e in &t.moves {
            e.mv.validate()?;
            if shard_of_bytes(e.mv.from.as_bytes(), t.shard_bits) != t.shard {
                return Err(FormatError::malformed(
                    WHAT,
                    format!("pack {} is not in shard {}", e.mv.from.short(), t.shard),
                ));
            }
            if prev.is_some_and(|p| p >= &e.mv.from) {
                return Err(FormatError::malformed(
                    WHAT,
                    "moves not strictly increasing by pack",
                ));
            }
            prev = Some(&e.mv.from);
        }
        Ok(t)
    }
}
