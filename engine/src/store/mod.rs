//! The narrow store contract every backend implements, and opening a store from a URL.
//!
//! Keys are `/`-separated relative names (see `cairn_formats::*_key`). Content-addressed objects
//! are written with [`PutMode::Create`]; heads with [`PutMode::Update`] (compare-and-swap on the
//! version a [`Store::get`] returned) or `Create` for the first head. Nothing else is mutable.

mod local;

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{Error, Result};

pub use local::LocalStore;

/// An opaque object version for compare-and-swap (an ETag, a GCS generation, a local digest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Version(pub String);

/// How a put treats an existing object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutMode {
    /// Write only if nothing is at the key; otherwise [`Error::AlreadyExists`].
    Create,
    /// Replace only if the current version is this one; otherwise [`Error::Conflict`].
    /// Versions may be derived from content (S3 ETags, the local store's digest), so rewriting
    /// identical bytes is indistinguishable from no write; heads carry a snapshot id and a time,
    /// so that never matters for them.
    Update(Version),
}

/// Size and version of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The key.
    pub key: String,
    /// Length in bytes.
    pub size: u64,
}

/// An object's bytes and version.
#[derive(Clone, Debug)]
pub struct GetResult {
    /// The content.
    pub data: Bytes,
    /// The version, for a later [`PutMode::Update`].
    pub version: Version,
}

/// An object store holding one repository.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// Writes `data` at `key` under `mode`; returns the new version.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] / [`Error::Conflict`] when the mode's condition fails; [`Error::Store`]
    /// for backend failures.
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<Version>;

    /// Reads a whole object.
    ///
    /// # Errors
    /// [`Error::NotFound`] if absent; [`Error::Store`] for backend failures.
    async fn get(&self, key: &str) -> Result<GetResult>;

    /// Reads bytes `range` of an object. A range past the end is an error, never a short read.
    ///
    /// # Errors
    /// [`Error::NotFound`] if absent; [`Error::Corrupt`] if the object is shorter than the range.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes>;

    /// Size of an object.
    ///
    /// # Errors
    /// [`Error::NotFound`] if absent.
    async fn head(&self, key: &str) -> Result<ObjectMeta>;

    /// Every object whose key starts with `prefix`, in key order.
    ///
    /// # Errors
    /// [`Error::Store`] for backend failures.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;

    /// Deletes an object; deleting an absent one succeeds.
    ///
    /// # Errors
    /// [`Error::Store`] for backend failures.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Where this store is, for messages (never includes credentials).
    fn location(&self) -> String;
}

/// Conveniences on top of [`Store`].
#[async_trait]
pub trait StoreExt: Store {
    /// Writes a content-addressed object: "already exists" counts as success, because the
    /// existing object has the same name and therefore the same content.
    ///
    /// # Errors
    /// As [`Store::put`], except `AlreadyExists`.
    async fn put_immutable(&self, key: &str, data: Bytes) -> Result<()> {
        match self.put(key, data, PutMode::Create).await {
            Ok(_) | Err(Error::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads an object if it exists.
    ///
    /// # Errors
    /// As [`Store::get`], except `NotFound`, which is `Ok(None)`.
    async fn get_opt(&self, key: &str) -> Result<Option<GetResult>> {
        match self.get(key).await {
            Ok(r) => Ok(Some(r)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl<S: Store + ?Sized> StoreExt for S {}

/// Opens a store from a location: a directory path or a `file://` URL.
///
/// # Errors
/// [`Error::Invalid`] for an unsupported scheme or malformed URL.
pub fn open_store(location: &str) -> Result<Arc<dyn Store>> {
    if location.is_empty() {
        return Err(Error::Invalid(
            "no store given: pass --store or set CAIRN_STORE (a directory path or file:// URL)".into(),
        ));
    }
    if let Some(path) = location.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(Error::Invalid(format!(
                "{location}: a file:// URL needs an absolute path, e.g. file:///var/lib/cairn"
            )));
        }
        return Ok(Arc::new(LocalStore::new(path)));
    }
    if let Some((scheme, _)) = location.split_once("://") {
        return Err(Error::Invalid(format!(
            "{location}: unsupported store scheme {scheme:?}; use a directory path or file:// URL"
        )));
    }
    Ok(Arc::new(LocalStore::new(location)))
}
