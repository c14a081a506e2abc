//! The 8-byte header every encoded object except a pack starts with, and the postcard body codec.
//!
//! ```text
//! 0..5  b"CAIRN"
//! 5     object kind (see `Kind`)
//! 6..8  format version, u16 little-endian (1 plaintext, 2 sealed)
//! 8..   postcard body (version 2: sealed, see `seal.rs`)
//! ```
//!
//! Encoders write version 1, the plaintext layout. A version-2 repository seals that encoding
//! (`RepoKeys::seal_object` sets the version to 2 and seals the body); opening gives back the
//! header with version 2 and the body, which the decoders here read like version 1.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::FormatError;

/// The newest format version this build writes and reads (2: sealed). It reads version 1 too.
pub const FORMAT_VERSION: u16 = 2;
/// The version of plaintext repositories and of the plaintext layout every encoder writes.
pub const PLAIN_VERSION: u16 = 1;

pub(crate) const MAGIC: &[u8; 5] = b"CAIRN";
pub(crate) const HEADER_LEN: usize = 8;

/// Object kinds, as stored in byte 5 of the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Config = 1,
    Tree = 2,
    Manifest = 3,
    Head = 4,
    Index = 5,
    Segment = 6,
    Move = 7,
    Key = 8,
}

impl Kind {
    fn what(self) -> &'static str {
        match self {
            Kind::Config => "repository config",
            Kind::Tree => "tree",
            Kind::Manifest => "snapshot manifest",
            Kind::Head => "workspace head",
            Kind::Index => "index record",
            Kind::Segment => "index segment",
            Kind::Move => "move table",
            Kind::Key => "key object",
        }
    }
}

pub(crate) fn encode<T: Serialize>(kind: Kind, value: &T) -> Vec<u8> {
    encode_version(kind, PLAIN_VERSION, value)
}

pub(crate) fn encode_version<T: Serialize>(kind: Kind, version: u16, value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(MAGIC);
    out.push(kind as u8);
    out.extend_from_slice(&version.to_le_bytes());
    postcard::to_io(value, &mut out).expect("invariant: writing to a Vec cannot fail");
    out
}

pub(crate) fn decode<T: DeserializeOwned>(kind: Kind, bytes: &[u8]) -> Result<T, FormatError> {
    decode_versioned(kind, bytes).map(|(v, _)| v)
}

/// Decodes, returning the header's version too (1 or 2).
pub(crate) fn decode_versioned<T: DeserializeOwned>(
    kind: Kind,
    bytes: &[u8],
) -> Result<(T, u16), FormatError> {
    let what = kind.what();
    if bytes.len() < HEADER_LEN || &bytes[..5] != MAGIC {
        return Err(FormatError::BadMagic { what });
    }
    if bytes[5] != kind as u8 {
        return Err(FormatError::WrongKind {
            what,
            expected: kind as u8,
            found: bytes[5],
        });
    }
    let version = u16::from_le_bytes([bytes[6], bytes[7]]);
    if !(PLAIN_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(FormatError::UnsupportedVersion {
            what,
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    Ok((decode_body(what, &bytes[HEADER_LEN..])?, version))
}

pub(crate) fn decode_body<T: DeserializeOwned>(what: &'static str, body: &[u8]) -> Result<T, FormatError> {
    let (value, rest) =
        postcard::take_from_bytes(body).map_err(|e| FormatError::malformed(what, e.to_string()))?;
    if !rest.is_empty() {
        return Err(FormatError::malformed(
            what,
            format!("{} trailing bytes", rest.len()),
        ));
    }
    Ok(value)
}
