//! The narrow store contract every backend implements, and opening a store from a URL.
//!
//! Keys are `/`-separated relative names (see `cairn_formats::*_key`). Content-addressed objects
//! are written with [`PutMode::Create`]; heads with [`PutMode::Update`] (compare-and-swap on the
//! version a [`Store::get`] returned) or `Create` for the first head. Nothing else is mutable.

mod buffers;
mod count;
mod fault;
mod gcs;
mod local;
mod retry;
mod s3;

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::{Error, Result};

pub use count::{request_counts, CountingStore, RequestCounts};
pub use fault::{parse_duration, parse_duration_arg, FaultPlan, FaultStats, FaultStore};
pub use gcs::{GcsOptions, GcsStore};
pub use local::LocalStore;
pub use retry::{RetryPolicy, RetryStats, RetryStore};
pub use s3::{S3Options, S3Store};

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
    /// When the object was written, by the store's clock (S3 `LastModified`, GCS `updated`, the
    /// local file's mtime); what garbage collection ages objects by.
    pub modified: Option<cairn_formats::Timestamp>,
}

/// A timestamp from seconds and nanoseconds, if valid.
pub(crate) fn timestamp(secs: i64, nanos: u32) -> Option<cairn_formats::Timestamp> {
    let t = cairn_formats::Timestamp { secs, nanos };
    t.is_valid().then_some(t)
}

/// A timestamp from a system time.
pub(crate) fn system_timestamp(t: std::time::SystemTime) -> Option<cairn_formats::Timestamp> {
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    timestamp(i64::try_from(d.as_secs()).ok()?, d.subsec_nanos())
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

    /// Bytes a restore should ask for in one ranged read: small where requests are free, larger
    /// where each has a price and a first-byte latency.
    fn read_size(&self) -> u64 {
        1 << 20
    }
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

/// Where a cloud store's keys live: a bucket and a key prefix (empty, or ending in `/`).
#[derive(Clone, Debug)]
pub(crate) struct BucketPath {
    pub bucket: String,
    pub prefix: String,
}

impl BucketPath {
    /// The object name of a store key.
    pub fn object(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The store key of a listed object name, if it lies under the prefix.
    pub fn relative<'a>(&self, name: &'a str) -> Option<&'a str> {
        name.strip_prefix(self.prefix.as_str())
    }

    /// `scheme://bucket/prefix`, without a trailing slash: the store's location.
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}/{}", self.bucket, self.prefix.trim_end_matches('/'))
            .trim_end_matches('/')
            .to_string()
    }

    /// `scheme://bucket/object` of a store key, for messages.
    pub fn object_url(&self, scheme: &str, key: &str) -> String {
        format!("{scheme}://{}/{}", self.bucket, self.object(key))
    }
}

/// A key prefix as a directory: empty, or ending in exactly one `/`.
pub(crate) fn dir_prefix(prefix: &str) -> String {
    let p = prefix.trim_end_matches('/');
    if p.is_empty() {
        String::new()
    } else {
        format!("{p}/")
    }
}

/// A ranged read that came back with fewer bytes than asked for although the server answered:
/// the object is shorter than the range.
pub(crate) fn check_range_len(key: &str, range: &Range<u64>, got: usize) -> Result<()> {
    let want = range.end - range.start;
    if got as u64 == want {
        return Ok(());
    }
    Err(Error::Corrupt {
        object: key.to_string(),
        detail: format!("range {range:?} returned {got} of {want} bytes"),
    })
}

/// A body that broke off or ended before its announced length: the connection dropped, so the
/// request may be repeated.
pub(crate) fn body_error(key: &str, detail: String) -> Error {
    Error::Store {
        key: key.to_string(),
        detail,
        retryable: true,
    }
}

/// How [`open_store_with`] builds a store: backend tuning, retries, and injected faults.
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    /// Retries, deadlines and the bound on requests in flight (remote stores, or any store with
    /// faults injected).
    pub retry: RetryPolicy,
    /// Faults to inject (tests and drills).
    pub faults: Option<FaultPlan>,
    /// S3 tuning.
    pub s3: S3Options,
    /// GCS tuning.
    pub gcs: GcsOptions,
    /// Refuse, before they reach the store, requests this grant does not allow (`CAIRN_GRANT`:
    /// a self-check that a pod needs no more than its credential's role).
    pub grant: Option<crate::access::Grant>,
}

impl StoreOptions {
    /// Defaults, adjusted by the environment: `CAIRN_STORE_RETRIES` (attempts per request),
    /// `CAIRN_STORE_TIMEOUT` (deadline of a small request, e.g. `30s`), `CAIRN_STORE_MAX_REQUESTS`
    /// (requests in flight), `CAIRN_FAULTS` (a [`FaultPlan`]), `CAIRN_S3_PATH_STYLE`, and
    /// `STORAGE_EMULATOR_HOST` for GCS, and `CAIRN_GRANT` (`writer:WORKSPACE`, `writer`, `reader` or
    /// `gc`).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming the variable whose value does not parse.
    pub fn from_env() -> Result<Self> {
        let mut o = StoreOptions::default();
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let bad = |name: &str, v: &str, want: &str| Error::Invalid(format!("{name}={v:?}: expected {want}"));
        let at_least_1 = |name: &str, v: &str, want: &str| {
            v.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| bad(name, v, want))
        };
        if let Some(v) = var("CAIRN_STORE_RETRIES") {
            let n = at_least_1("CAIRN_STORE_RETRIES", &v, "a number of attempts, at least 1")?;
            o.retry.attempts = u32::try_from(n).unwrap_or(u32::MAX);
        }
        if let Some(v) = var("CAIRN_STORE_TIMEOUT") {
            o.retry.request_timeout = parse_duration(&v)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| bad("CAIRN_STORE_TIMEOUT", &v, "a duration like 30s"))?;
        }
        if let Some(v) = var("CAIRN_STORE_MAX_REQUESTS") {
            o.retry.max_in_flight = at_least_1("CAIRN_STORE_MAX_REQUESTS", &v, "a number, at least 1")?;
        }
        if let Some(v) = var("CAIRN_FAULTS") {
            o.faults = Some(v.parse()?);
        }
        if let Some(v) = var("CAIRN_S3_PATH_STYLE") {
            o.s3.path_style = Some(match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => return Err(bad("CAIRN_S3_PATH_STYLE", &v, "true or false")),
            });
        }
        if let Some(v) = var("STORAGE_EMULATOR_HOST") {
            o.gcs.endpoint = Some(v);
        }
        if let Some(v) = var("CAIRN_GRANT") {
            o.grant = Some(
                v.parse()
                    .map_err(|e| Error::Invalid(format!("CAIRN_GRANT={v:?}: {e}")))?,
            );
        }
        Ok(o)
    }
}

/// Opens a store from a location, with options from the environment ([`StoreOptions::from_env`]).
///
/// # Errors
/// As [`open_store_with`].
pub async fn open_store(location: &str) -> Result<Arc<dyn Store>> {
    open_store_with(location, StoreOptions::from_env()?).await
}

/// Opens a store from a location: a directory path, a `file://` URL, `s3://BUCKET[/PREFIX]` or
/// `gs://BUCKET[/PREFIX]`. Remote stores (and any store with faults injected) are wrapped in a
/// [`RetryStore`].
///
/// # Errors
/// [`Error::Invalid`] for an unsupported scheme or malformed URL; [`Error::Store`] when a cloud
/// client cannot be set up (no credentials).
pub async fn open_store_with(location: &str, opts: StoreOptions) -> Result<Arc<dyn Store>> {
    if location.is_empty() {
        return Err(Error::Invalid(
            "no store given: pass --store or set CAIRN_STORE (a directory, file://, s3:// or gs:// URL)"
                .into(),
        ));
    }
    let (base, remote): (Arc<dyn Store>, bool) = if let Some(rest) = location.strip_prefix("s3://") {
        let (bucket, prefix) = bucket_and_prefix(location, rest)?;
        (
            Arc::new(S3Store::connect(bucket, &prefix, opts.s3.clone()).await?),
            true,
        )
    } else if let Some(rest) = location.strip_prefix("gs://") {
        let (bucket, prefix) = bucket_and_prefix(location, rest)?;
        (
            Arc::new(GcsStore::connect(bucket, &prefix, opts.gcs.clone()).await?),
            true,
        )
    } else if let Some(path) = location.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(Error::Invalid(format!(
                "{location}: a file:// URL needs an absolute path, e.g. file:///var/lib/cairn"
            )));
        }
        (Arc::new(LocalStore::new(path)), false)
    } else if let Some((scheme, _)) = location.split_once("://") {
        return Err(Error::Invalid(format!(
            "{location}: unsupported store scheme {scheme:?}; use a directory path, file://, s3:// or gs://"
        )));
    } else {
        (Arc::new(LocalStore::new(location)), false)
    };
    let base = match opts.grant {
        Some(grant) => Arc::new(crate::access::GrantStore::new(base, grant)) as Arc<dyn Store>,
        None => base,
    };
    let faulty = opts.faults.is_some();
    let store = match opts.faults {
        Some(plan) => Arc::new(FaultStore::new(base, plan)) as Arc<dyn Store>,
        None => base,
    };
    let store = if remote || faulty {
        Arc::new(RetryStore::new(store, opts.retry)) as Arc<dyn Store>
    } else {
        store
    };
    Ok(Arc::new(CountingStore::new(store)))
}

/// Splits `bucket/some/prefix` into the bucket and a key prefix that is empty or ends in `/`.
fn bucket_and_prefix<'a>(location: &str, rest: &'a str) -> Result<(&'a str, String)> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(Error::Invalid(format!(
            "{location}: no bucket; expected s3://BUCKET[/PREFIX] or gs://BUCKET[/PREFIX]"
        )));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|c| c == "." || c == "..") || prefix.contains("//") {
        return Err(Error::Invalid(format!(
            "{location}: the prefix may not hold empty, . or .. components"
        )));
    }
    Ok((
        bucket,
        if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        },
    ))
}

/// Checks that `store` enforces create-only and compare-and-swap writes, with a probe object
/// that is deleted afterwards. A server that ignores the conditions would let two writers both
/// "win"; Cairn refuses to create a repository there.
///
/// # Errors
/// [`Error::Invalid`] naming the condition the store ignored; store errors as they come.
pub async fn check_conditional_writes(store: &dyn Store) -> Result<()> {
    let key = format!("probe/conditional-writes-{:016x}", rand::random::<u64>());
    let refuse = |what: &str| {
        Error::Invalid(format!(
            "{}: the store ignored {what}. Cairn needs conditional writes (S3: If-None-Match and \
             If-Match, as AWS S3, MinIO and Ceph support; GCS: ifGenerationMatch) so that concurrent \
             writers can never overwrite each other; no repository was created",
            store.location()
        ))
    };
    let outcome = async {
        let v1 = store
            .put(&key, Bytes::from_static(b"probe 1"), PutMode::Create)
            .await?;
        match store
            .put(&key, Bytes::from_static(b"probe 2"), PutMode::Create)
            .await
        {
            Err(Error::AlreadyExists { .. }) => {}
            Ok(_) => {
                return Err(refuse(
                    "a create-only write (If-None-Match: * / ifGenerationMatch=0)",
                ))
            }
            Err(e) => return Err(e),
        }
        // Swap from the version read, then again from that same (now stale, but well formed)
        // version: the second must lose.
        store
            .put(&key, Bytes::from_static(b"probe 3"), PutMode::Update(v1.clone()))
            .await?;
        match store
            .put(&key, Bytes::from_static(b"probe 4"), PutMode::Update(v1))
            .await
        {
            Err(Error::Conflict { .. }) => Ok(()),
            Ok(_) => Err(refuse(
                "a compare-and-swap write with a stale version (If-Match / ifGenerationMatch)",
            )),
            Err(e) => Err(e),
        }
    }
    .await;
    let _ = store.delete(&key).await;
    outcome
}
