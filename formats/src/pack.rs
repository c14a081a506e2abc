//! Packs: immutable objects holding many blobs, with a self-describing trailer.
//!
//! ```text
//! 0..8        b"CAIRNPK" 0x01            header (magic + pack layout version)
//! 8..T        blob bytes, back to back    (each compressed or raw, see `Codec`)
//! T..F        trailer: postcard(PackTrailer)
//! F..F+4      trailer length, u32 LE
//! F+4..F+36   BLAKE3 of the trailer bytes
//! F+36..F+44  b"CAIRNPK" 0x01            footer magic
//! ```
//!
//! The trailer lists every blob with its offset, so any index can be rebuilt from packs alone, and
//! a reader can fetch the last few KiB of a pack to learn what it holds.

use serde::{Deserialize, Serialize};

use crate::envelope::decode_body;
use crate::{BlobId, FormatError, RepoKeys};

const WHAT: &str = "pack";

/// Header and footer magic of a version-1 (plaintext) pack.
pub const PACK_MAGIC: &[u8; 8] = b"CAIRNPK\x01";
/// Header and footer magic of a version-2 (sealed) pack: every blob and the trailer are sealed.
pub const PACK_MAGIC_V2: &[u8; 8] = b"CAIRNPK\x02";
/// Bytes before the first blob.
pub const PACK_HEADER_LEN: u64 = 8;
/// Bytes after the trailer: length, checksum, magic.
pub const PACK_FOOTER_LEN: u64 = 4 + 32 + 8;

/// Whether a pack holds file data or trees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PackKind {
    /// File chunks.
    Data,
    /// Tree blobs.
    Meta,
}

impl PackKind {
    /// The store directory name for this kind (`data` or `meta`).
    pub fn dir(self) -> &'static str {
        match self {
            PackKind::Data => "data",
            PackKind::Meta => "meta",
        }
    }
}

/// How a blob's stored bytes map to its content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Codec {
    /// Stored as is.
    Raw,
    /// One zstd frame.
    Zstd,
}

/// Where one blob lives inside a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PackEntry {
    /// The blob's id (BLAKE3 of its uncompressed bytes).
    pub id: BlobId,
    /// Offset of the stored bytes from the start of the pack.
    pub offset: u64,
    /// Stored (possibly compressed) length.
    pub stored_len: u32,
    /// Uncompressed length.
    pub raw_len: u32,
    /// How the stored bytes decode.
    pub codec: Codec,
}

impl PackEntry {
    /// The byte range of the stored blob within its pack.
    pub fn range(&self) -> std::ops::Range<u64> {
        self.offset..self.offset + u64::from(self.stored_len)
    }
}

/// The pack trailer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackTrailer {
    /// What the pack holds.
    pub kind: PackKind,
    /// The blobs, in increasing offset order.
    pub blobs: Vec<PackEntry>,
}

impl PackTrailer {
    /// Appends the trailer and footer to a pack body that starts with [`PACK_MAGIC`], or sealed
    /// with `keys` to one that starts with [`PACK_MAGIC_V2`].
    pub fn append_to(&self, keys: Option<&RepoKeys>, pack: &mut Vec<u8>) {
        self.append_with(keys, pack, None);
    }

    /// [`PackTrailer::append_to`] sealing with a given salt: for golden files only.
    #[doc(hidden)]
    pub fn append_with(
        &self,
        keys: Option<&RepoKeys>,
        pack: &mut Vec<u8>,
        salt: Option<&[u8; crate::SALT_LEN]>,
    ) {
        let start = pack.len();
        let magic = match keys {
            None => {
                postcard::to_io(self, &mut *pack).expect("invariant: writing to a Vec cannot fail");
                PACK_MAGIC
            }
            Some(k) => {
                let plain = postcard::to_stdvec(self).expect("invariant: writing to a Vec cannot fail");
                pack.extend_from_slice(&match salt {
                    Some(s) => k.seal_trailer_with(self.kind, &plain, s),
                    None => k.seal_trailer(self.kind, &plain),
                });
                PACK_MAGIC_V2
            }
        };
        let len = pack.len() - start;
        let sum = *blake3::hash(&pack[start..]).as_bytes();
        pack.extend_from_slice(&(len as u32).to_le_bytes());
        pack.extend_from_slice(&sum);
        pack.extend_from_slice(magic);
    }

    /// Reads the trailer length from a pack's last [`PACK_FOOTER_LEN`] bytes.
    ///
    /// # Errors
    /// [`FormatError::BadMagic`] if the footer magic is wrong.
    pub fn trailer_len(footer: &[u8]) -> Result<u32, FormatError> {
        if footer.len() < PACK_FOOTER_LEN as usize {
            return Err(FormatError::malformed(WHAT, "shorter than the footer"));
        }
        let f = &footer[footer.len() - PACK_FOOTER_LEN as usize..];
        if &f[36..44] != PACK_MAGIC && &f[36..44] != PACK_MAGIC_V2 {
            return Err(FormatError::BadMagic { what: WHAT });
        }
        Ok(u32::from_le_bytes([f[0], f[1], f[2], f[3]]))
    }

    /// The magic a pack of a repository with `keys` (or without) has.
    pub fn magic(keys: Option<&RepoKeys>) -> &'static [u8; 8] {
        if keys.is_some() {
            PACK_MAGIC_V2
        } else {
            PACK_MAGIC
        }
    }

    /// Decodes the trailer from the tail of a pack of `pack_len` bytes. `tail` must hold at least
    /// the trailer and footer (the whole pack works too).
    ///
    /// # Errors
    /// Any [`FormatError`]: bad magic, checksum mismatch, undecodable trailer, entries out of the
    /// pack's bounds, overlapping or unsorted.
    /// A version-2 pack (`keys` given) has its trailer opened with them; a version-1 pack in a
    /// version-2 repository, or the reverse, is refused.
    pub fn decode_tail(keys: Option<&RepoKeys>, tail: &[u8], pack_len: u64) -> Result<Self, FormatError> {
        let tlen = u64::from(Self::trailer_len(tail)?);
        if &tail[tail.len() - 8..] != Self::magic(keys) {
            return Err(FormatError::malformed(
                WHAT,
                if keys.is_some() {
                    "a plaintext (version 1) pack in an encrypted repository"
                } else {
                    "an encrypted (version 2) pack in a plaintext repository"
                },
            ));
        }
        let need = tlen + PACK_FOOTER_LEN;
        if need > tail.len() as u64 || need + PACK_HEADER_LEN > pack_len {
            return Err(FormatError::malformed(
                WHAT,
                format!("trailer length {tlen} does not fit"),
            ));
        }
        let start = tail.len() - need as usize;
        let body = &tail[start..start + tlen as usize];
        let f = &tail[tail.len() - PACK_FOOTER_LEN as usize..];
        if blake3::hash(body).as_bytes() != &f[4..36] {
            return Err(FormatError::Checksum { what: "pack trailer" });
        }
        let t: PackTrailer = match keys {
            None => decode_body(WHAT, body)?,
            Some(k) => {
                let (kind, plain) = k.open_trailer(body)?;
                let t: PackTrailer = decode_body(WHAT, &plain)?;
                if t.kind != kind {
                    return Err(FormatError::Sealed { what: "pack trailer" });
                }
                t
            }
        };
        let blobs_end = pack_len - need;
        let mut pos = PACK_HEADER_LEN;
        for b in &t.blobs {
            if b.offset < pos || b.offset.saturating_add(u64::from(b.stored_len)) > blobs_end {
                return Err(FormatError::malformed(
                    WHAT,
                    format!(
                        "blob {} at {}+{} out of order or bounds",
                        b.id.short(),
                        b.offset,
                        b.stored_len
                    ),
                ));
            }
            pos = b.offset + u64::from(b.stored_len);
        }
        Ok(t)
    }

    /// Decodes and checks a whole pack's header and trailer.
    ///
    /// # Errors
    /// As [`PackTrailer::decode_tail`], plus a bad header.
    pub fn decode_pack(keys: Option<&RepoKeys>, pack: &[u8]) -> Result<Self, FormatError> {
        if pack.len() < (PACK_HEADER_LEN + PACK_FOOTER_LEN) as usize || &pack[..8] != Self::magic(keys) {
            return Err(FormatError::BadMagic { what: WHAT });
        }
        Self::decode_tail(keys, pack, pack.len() as u64)
    }
}
