//! Request counting: the outermost store layer counts what this process asked of the store (one
//! per call, retries below it not included), for `--json` reports, metrics and benchmarks. With
//! `RUST_LOG=cairn::requests=debug` it also logs each request as it ends: what, which key, how
//! many bytes, how long (retries included).

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;

use super::{GetResult, ObjectMeta, PutMode, Store, Version};
use crate::Result;

#[derive(Default)]
struct Counters {
    get: AtomicU64,
    get_range: AtomicU64,
    put: AtomicU64,
    head: AtomicU64,
    list: AtomicU64,
    delete: AtomicU64,
    bytes_down: AtomicU64,
    bytes_up: AtomicU64,
}

static COUNTS: Counters = Counters {
    get: AtomicU64::new(0),
    get_range: AtomicU64::new(0),
    put: AtomicU64::new(0),
    head: AtomicU64::new(0),
    list: AtomicU64::new(0),
    delete: AtomicU64::new(0),
    bytes_down: AtomicU64::new(0),
    bytes_up: AtomicU64::new(0),
};

/// Store requests this process made so far, over every store it opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RequestCounts {
    /// Whole-object reads.
    pub get: u64,
    /// Ranged reads.
    pub get_range: u64,
    /// Writes.
    pub put: u64,
    /// Metadata reads.
    pub head: u64,
    /// Listings (one per call, however many pages).
    pub list: u64,
    /// Deletes.
    pub delete: u64,
    /// Bytes read.
    pub bytes_down: u64,
    /// Bytes written.
    pub bytes_up: u64,
}

impl RequestCounts {
    /// Every request.
    pub fn total(&self) -> u64 {
        self.get + self.get_range + self.put + self.head + self.list + self.delete
    }
}

/// The counts so far.
pub fn request_counts() -> RequestCounts {
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    RequestCounts {
        get: g(&COUNTS.get),
        get_range: g(&COUNTS.get_range),
        put: g(&COUNTS.put),
        head: g(&COUNTS.head),
        list: g(&COUNTS.list),
        delete: g(&COUNTS.delete),
        bytes_down: g(&COUNTS.bytes_down),
        bytes_up: g(&COUNTS.bytes_up),
    }
}

fn add(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

/// Counts one request in `counter`, runs it, and logs it as it ends (at debug level, target
/// `cairn::requests`) with the bytes `bytes` reads off its result.
async fn request<T>(
    counter: &AtomicU64,
    op: &str,
    key: &str,
    run: impl std::future::Future<Output = Result<T>>,
    bytes: impl Fn(&T) -> usize,
) -> Result<T> {
    add(counter, 1);
    let started = Instant::now();
    let r = run.await;
    if tracing::enabled!(target: "cairn::requests", tracing::Level::DEBUG) {
        let ms = started.elapsed().as_secs_f64() * 1e3;
        match &r {
            Ok(v) => tracing::debug!(target: "cairn::requests", op, key, bytes = bytes(v), ms),
            Err(e) => tracing::debug!(target: "cairn::requests", op, key, ms, error = %e),
        }
    }
    r
}

/// Counts requests into the process-wide counters.
#[derive(Debug)]
pub struct CountingStore {
    inner: Arc<dyn Store>,
}

impl CountingStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        CountingStore { inner }
    }
}

#[async_trait]
impl Store for CountingStore {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<Version> {
        let len = data.len();
        add(&COUNTS.bytes_up, len as u64);
        request(&COUNTS.put, "put", key, self.inner.put(key, data, mode), |_| len).await
    }

    async fn get(&self, key: &str) -> Result<GetResult> {
        let r = request(&COUNTS.get, "get", key, self.inner.get(key), |r| r.data.len()).await?;
        add(&COUNTS.bytes_down, r.data.len() as u64);
        Ok(r)
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let run = self.inner.get_range(key, range);
        let r = request(&COUNTS.get_range, "get_range", key, run, Bytes::len).await?;
        add(&COUNTS.bytes_down, r.len() as u64);
        Ok(r)
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        request(&COUNTS.head, "head", key, self.inner.head(key), |_| 0).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        request(&COUNTS.list, "list", prefix, self.inner.list(prefix), Vec::len).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        request(&COUNTS.delete, "delete", key, self.inner.delete(key), |_| 0).await
    }

    fn location(&self) -> String {
        self.inner.location()
    }

    fn read_size(&self) -> u64 {
        self.inner.read_size()
    }
}
