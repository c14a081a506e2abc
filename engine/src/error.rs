//! The engine's error type.
//!
//! Policy: every error names the thing it is about (a store key, a local path, a workspace or a
//! snapshot) and, where there is one, what the operator can do. Variants are the cases a caller
//! branches on: `NotFound` and `AlreadyExists` and `Conflict` come from the store contract;
//! `Corrupt` means stored bytes failed verification (never retried, never written as right);
//! `Io` carries the local path; `Store` is a backend failure that [`Error::is_retryable`] tells
//! apart from a permanent one. Binaries add context with `anyhow`; the library does not.

use std::path::PathBuf;

use cairn_formats::FormatError;
use thiserror::Error;

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An engine failure.
#[derive(Debug, Error)]
pub enum Error {
    /// The store holds no object at `key`.
    #[error("{key}: not found in the store")]
    NotFound {
        /// The store key.
        key: String,
    },
    /// A create-only write found an object already at `key`.
    #[error("{key}: already exists")]
    AlreadyExists {
        /// The store key.
        key: String,
    },
    /// A compare-and-swap found another version at `key`.
    #[error("{key}: changed concurrently (compare-and-swap lost)")]
    Conflict {
        /// The store key.
        key: String,
    },
    /// Stored bytes failed verification.
    #[error("{object}: corrupt: {detail}")]
    Corrupt {
        /// The store key or blob the bytes belong to.
        object: String,
        /// What failed.
        detail: String,
    },
    /// The store has no repository.
    #[error(
        "{store}: no Cairn repository here (no config object); run `initctl init --store {store}` first"
    )]
    NoRepository {
        /// The store location.
        store: String,
    },
    /// A workspace, snapshot or path the caller named does not exist.
    #[error("{0}")]
    Unknown(String),
    /// The caller's input is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// A local file system operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path operated on.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A backend request failed.
    #[error("{key}: store request failed: {detail}")]
    Store {
        /// The store key (or prefix).
        key: String,
        /// What the backend said.
        detail: String,
        /// Whether repeating the request may succeed.
        retryable: bool,
    },
    /// The credential's grant does not allow this request (refused before it reached the store,
    /// or by the store's policy).
    #[error("{key}: access denied: {detail}")]
    Denied {
        /// The store key (or prefix).
        key: String,
        /// Which grant refused what.
        detail: String,
    },
    /// The local index database failed.
    #[error("local index at {}: {detail}", path.display())]
    Index {
        /// The database directory.
        path: PathBuf,
        /// What RocksDB said.
        detail: String,
    },
    /// Restored data does not match the snapshot (drill, verify).
    #[error("{count} mismatch(es) between the restore and the snapshot, first: {first}")]
    Mismatch {
        /// How many entries differ.
        count: usize,
        /// The first difference, for a human.
        first: String,
    },
}

impl Error {
    /// Whether repeating the operation may succeed (throttling, timeouts, connection resets).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Store { retryable: true, .. })
    }

    /// Wraps an I/O error with its path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Wraps a format error with the key of the object that failed to decode.
    pub fn format(object: impl Into<String>, e: FormatError) -> Self {
        Error::Corrupt {
            object: object.into(),
            detail: e.to_string(),
        }
    }

    /// Whether this is [`Error::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }
}

/// Adds a path to `std::io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
