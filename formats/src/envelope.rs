//! The 8-byte header every encoded object except a pack starts with, and the postcard body codec.
//!
//! ```text
//! 0..5  b"CAIRN"
//! 5     object kind (see `Kind`)
//! 6..8  format version, u16 little-endian (1)
//! 8..   postcard body
//! ```

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::FormatError;

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;

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
        }
    }
}

pub(crate) fn encode<T: Serialize>(kind: Kind, value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(MAGIC);
    out.push(kind as u8);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    postcard::to_io(value, &mut out).expect("invariant: writing to a Vec cannot fail");
    out
}

pub(crate) fn decode<T: DeserializeOwned>(kind: Kind, bytes: &[u8]) -> Result<T, FormatError> {
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
    if version != FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion {
            what,
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    decode_body(what, &bytes[HEADER_LEN..])
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
