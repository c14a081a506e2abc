//! Errors from decoding and validating on-store objects.
//!
//! Policy: decoding never panics and never trusts a length it has not checked against the input.
//! Every error names the kind of object that failed (`what`) so the engine can add the store key
//! and tell an operator which object is damaged. Nothing here does I/O, so there is no retryable
//! variant: a format error is permanent for the bytes it was given.

use thiserror::Error;

/// A decoding or validation failure of on-store bytes.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FormatError {
    /// The bytes do not start with the Cairn object header.
    #[error("{what}: not a Cairn object (bad magic bytes)")]
    BadMagic {
        /// The kind of object that was expected.
        what: &'static str,
    },
    /// The header names another kind of object.
    #[error("{what}: expected object kind {expected}, found kind {found}")]
    WrongKind {
        /// The kind of object that was expected.
        what: &'static str,
        /// The kind byte expected.
        expected: u8,
        /// The kind byte found.
        found: u8,
    },
    /// The object was written by a newer (or unknown) format version.
    #[error("{what}: format version {found} is not supported by this build (it reads version {supported}); upgrade cairn")]
    UnsupportedVersion {
        /// The kind of object.
        what: &'static str,
        /// The version found in the header.
        found: u16,
        /// The version this build reads.
        supported: u16,
    },
    /// The body does not decode, or decodes to values that break the format's rules.
    #[error("{what}: malformed: {detail}")]
    Malformed {
        /// The kind of object.
        what: &'static str,
        /// What is wrong, for a human.
        detail: String,
    },
    /// A checksum or content id does not match the bytes.
    #[error("{what}: checksum mismatch (the bytes are corrupt)")]
    Checksum {
        /// The kind of object.
        what: &'static str,
    },
    /// A sealed (version 2) item does not authenticate.
    #[error("{what}: does not authenticate: sealed under another key, damaged, or moved or copied here from another place or repository")]
    Sealed {
        /// The kind of object.
        what: &'static str,
    },
    /// A user-supplied name or value is not acceptable.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// What kind of value.
        what: &'static str,
        /// The offending value, printable.
        value: String,
        /// Why it is refused and what is allowed.
        reason: &'static str,
    },
}

impl FormatError {
    pub(crate) fn malformed(what: &'static str, detail: impl Into<String>) -> Self {
        FormatError::Malformed {
            what,
            detail: detail.into(),
        }
    }
}
