//! Content ids: 32-byte BLAKE3 digests wrapped in newtypes so a pack id is never used as a blob id.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::FormatError;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The BLAKE3 digest of `data`.
            pub fn of(data: &[u8]) -> Self {
                $name(*blake3::hash(data).as_bytes())
            }

            /// The raw digest bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Lower-case hex, 64 characters.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The first 8 hex characters, for humans.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }

            /// The two-hex-digit fan-out directory used in store keys.
            pub fn fanout(&self) -> String {
                hex::encode(&self.0[..1])
            }

            /// Parses from a slice of exactly 32 bytes.
            ///
            /// # Errors
            /// [`FormatError::Malformed`] if the slice is not 32 bytes long.
            pub fn from_slice(b: &[u8]) -> Result<Self, FormatError> {
                let arr: [u8; 32] = b
                    .try_into()
                    .map_err(|_| FormatError::malformed($what, format!("id of {} bytes, expected 32", b.len())))?;
                Ok($name(arr))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = FormatError;
            fn from_str(s: &str) -> Result<Self, FormatError> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).map_err(|_| FormatError::Invalid {
                    what: $what,
                    value: s.to_string(),
                    reason: "expected 64 hex digits",
                })?;
                Ok($name(out))
            }
        }
    };
}

id_type!(
    /// The id of a blob (a file chunk or a tree): BLAKE3 of its uncompressed bytes.
    BlobId,
    "blob id"
);
id_type!(
    /// The id of a pack: BLAKE3 of the whole pack object.
    PackId,
    "pack id"
);
id_type!(
    /// The id of a snapshot: BLAKE3 of its encoded manifest.
    SnapshotId,
    "snapshot id"
);
id_type!(
    /// The id of an index record: BLAKE3 of its encoded bytes.
    IndexId,
    "index record id"
);

/// A random 16-byte repository id, fixed at `init`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RepoId(pub [u8; 16]);

impl RepoId {
    /// Lower-case hex, 32 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepoId({})", self.to_hex())
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}
