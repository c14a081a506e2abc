//! Key objects (`keys/<id>`, version 2): one wrapping each of a repository's root key.
//!
//! A repository may hold several (a key file for operators, a KMS key for pods, an old one kept
//! during a rotation): any one opens it, and removing one leaves the others working, as restic's
//! `key` command does. Key objects are the only version-2 objects stored in the clear: they are
//! what opens the rest. The wrapped key is bound (as associated data) to the repository id, the key
//! object's id and the hash of the config bytes, so a key object copied into another repository,
//! or a config swapped under it, does not open.

use serde::{Deserialize, Serialize};

use crate::envelope::{self, Kind};
use crate::{FormatError, RepoId, Timestamp};

/// How the root key is wrapped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyWrap {
    /// AES-256-GCM under a key derived from a key file's bytes (`seal::FileKek`).
    File,
    /// AWS KMS `Encrypt` under this key (id, ARN or alias), with the encryption context
    /// `cairn:repository`, `cairn:key`, `cairn:config` (hex).
    AwsKms {
        /// The KMS key.
        key: String,
    },
}

/// A key object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyObject {
    /// Random id; the object is stored at `keys/<hex id>`.
    pub id: [u8; 16],
    /// When it was added (client clock; informational).
    pub created: Timestamp,
    /// Who added it (host name; informational).
    pub host: String,
    /// How `wrapped` unwraps.
    pub wrap: KeyWrap,
    /// The wrapped root key.
    pub wrapped: Vec<u8>,
}

impl KeyObject {
    /// Encodes (version 2 header, plaintext body).
    pub fn encode(&self) -> Vec<u8> {
        envelope::encode_version(Kind::Key, crate::FORMAT_VERSION, self)
    }

    /// Decodes.
    ///
    /// # Errors
    /// Any [`FormatError`] for bytes that are not a key object.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let (k, version): (KeyObject, u16) = envelope::decode_versioned(Kind::Key, bytes)?;
        if version != crate::FORMAT_VERSION {
            return Err(FormatError::malformed("key object", "key objects are version 2"));
        }
        Ok(k)
    }

    /// The associated data a wrapping is bound to: the repository, this key object's id and the
    /// BLAKE3 hash of the config's stored bytes.
    pub fn binding(repo: RepoId, id: &[u8; 16], config_bytes: &[u8]) -> Vec<u8> {
        let mut a = Vec::with_capacity(8 + 16 + 16 + 32);
        a.extend_from_slice(b"CAIRNKEY");
        a.extend_from_slice(&repo.0);
        a.extend_from_slice(id);
        a.extend_from_slice(blake3::hash(config_bytes).as_bytes());
        a
    }
}
