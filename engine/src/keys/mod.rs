//! Encryption at rest (format version 2): sealing every object with the repository's keys, and
//! the key objects that wrap its root key.
//!
//! [`Crypt`] is what every read and write of a repository goes through: in a plaintext (version 1)
//! repository it is the identity and blob ids are plain BLAKE3; in an encrypted one it seals and
//! opens with the keys `cairn_formats::RepoKeys` derives from the root key. The root key exists in
//! this process only inside zeroizing buffers, and is never printed (its `Debug` says so).

mod keyring;
mod kms;

use std::borrow::Cow;
use std::sync::Arc;

use cairn_formats::{BlobId, FormatError, RepoKeys, PLAIN_VERSION};

use crate::{Error, Result};

pub(crate) use keyring::{create_key_object, info as keyring_info, list as keyring_list, unlock};
pub use keyring::{KeyInfo, KeySource, NewKey, KEY_FILE_ENV};

/// How a repository's objects are sealed: not at all (version 1) or with its keys (version 2).
#[derive(Clone, Debug, Default)]
pub struct Crypt(Option<Arc<RepoKeys>>);

impl Crypt {
    /// A plaintext repository's.
    pub fn plain() -> Crypt {
        Crypt(None)
    }

    /// An encrypted repository's.
    pub fn sealed(keys: RepoKeys) -> Crypt {
        Crypt(Some(Arc::new(keys)))
    }

    /// The keys, for an encrypted repository.
    pub fn keys(&self) -> Option<&RepoKeys> {
        self.0.as_deref()
    }

    /// Whether objects are sealed.
    pub fn is_encrypted(&self) -> bool {
        self.0.is_some()
    }

    /// A blob's id: keyed BLAKE3 when encrypted, plain BLAKE3 otherwise.
    pub fn blob_id(&self, data: &[u8]) -> BlobId {
        match &self.0 {
            Some(k) => k.blob_id(data),
            None => BlobId::of(data),
        }
    }

    /// The chunker's gear seed (0, FastCDC's own table, when plaintext).
    pub fn chunker_seed(&self) -> u64 {
        self.0.as_ref().map_or(0, |k| k.chunker_seed())
    }

    /// Seals an encoded object for `binding` (its store key, or the prefix for objects named by
    /// the hash of their stored bytes); plaintext repositories store the encoding as is.
    pub fn seal(&self, binding: &str, plain: Vec<u8>) -> Vec<u8> {
        match &self.0 {
            Some(k) => k.seal_object(binding, &plain),
            None => plain,
        }
    }

    /// Seals a JSON document of operational state stored at `key` (`gc/state`, a heartbeat);
    /// plaintext repositories store the JSON as is.
    pub fn seal_json(&self, key: &str, json: Vec<u8>) -> Vec<u8> {
        match &self.0 {
            Some(k) => k.seal_state(key, &json),
            None => json,
        }
    }

    /// Opens what [`Crypt::seal_json`] stored at `key`.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming `key` if it does not open.
    pub fn open_json<'a>(&self, key: &str, what: &'static str, stored: &'a [u8]) -> Result<Cow<'a, [u8]>> {
        match &self.0 {
            Some(k) => k
                .open_state(what, key, stored)
                .map(Cow::Owned)
                .map_err(|e| sealed_error(key, e)),
            None => Ok(Cow::Borrowed(stored)),
        }
    }

    /// Opens a stored object read from `key` (bound to `binding`) into its encoding.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming `key`: a header of the wrong version for this repository, or a
    /// sealed object that does not authenticate.
    pub fn open<'a>(
        &self,
        key: &str,
        what: &'static str,
        binding: &str,
        stored: &'a [u8],
    ) -> Result<Cow<'a, [u8]>> {
        // The object header's version, if `stored` has one.
        let version = (stored.len() >= 8 && &stored[..5] == b"CAIRN")
            .then(|| u16::from_le_bytes([stored[6], stored[7]]));
        let misplaced = |found: &str| Error::Corrupt {
            object: key.to_string(),
            detail: format!(
                "{what}: {found}: planted or damaged, never written by Cairn; run `initctl check`"
            ),
        };
        match (&self.0, version) {
            (Some(_), Some(PLAIN_VERSION)) => Err(misplaced(
                "a plaintext (version 1) object in an encrypted repository",
            )),
            (Some(k), _) => k
                .open_object(what, binding, stored)
                .map(Cow::Owned)
                .map_err(|e| sealed_error(key, e)),
            (None, Some(v)) if v != PLAIN_VERSION => {
                Err(misplaced("a sealed (version 2) object in a plaintext repository"))
            }
            (None, _) => Ok(Cow::Borrowed(stored)),
        }
    }
}

/// The error for an object that fails to open: names it and says what to do.
pub(crate) fn sealed_error(key: &str, e: FormatError) -> Error {
    let hint = if matches!(e, FormatError::Sealed { .. }) {
        "; the repository's key opened, so this object was damaged or planted: run `initctl check`, and restore from an older snapshot if it is one a snapshot needs"
    } else {
        ""
    };
    Error::Corrupt {
        object: key.to_string(),
        detail: format!("{e}{hint}"),
    }
}
