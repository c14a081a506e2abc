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

/// Logs one finished request (at debug level, target `cairn::requests`).
fn log<T>(op: &str, key: &str, started: Instant, r: &Result<T>, bytes: impl Fn(&T) -> usize) {
    if tracing::enabled!(target: "cairn::requests", tracing::Level::DEBUG) {
        let ms = started.elapsed().as_secs_f64() * 1e3;
        match r {
            Ok(v) => tracing::debug!(target: "cairn::requests", op, key, bytes = bytes(v), ms),
            Err(e) => tracing::debug!(target: "cairn::requests", op, key, ms, error = %e),
        }
    }
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
        add(&COUNTS.put, 1);
        let (len, started) = (data.len(), Instant::now());
        add(&COUNTS.bytes_up, len as u64);
        let r = self.inner.put(key, data, mode).await;
        log("put", key, started, &r, |_| len);
        r
    }

    async fn get(&self, key: &str) -> Result<GetResult> {
        add(&COUNTS.get, 1);
        let started = Instant::now();
        let r = self.inner.get(key).await;
        log("get", key, started, &r, |r| r.data.len());
        let r = r?;
        add(&COUNTS.bytes_down, r.data.len() as u64);
        Ok(r)
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        add(&COUNTS.get_range, 1);
        let started = Instant::now();
        let r = self.inner.get_range(key, range).await;
        log("get_range", key, started, &r, Bytes::len);
        let r = r?;
        add(&COUNTS.bytes_down, r.len() as u64);
        Ok(r)
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        add(&COUNTS.head, 1);
        let started = Instant::now();
        let r = self.inner.head(key).await;
        log("head", key, started, &r, |_| 0);
        r
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        add(&COUNTS.list, 1);
        let started = Instant::now();
        let r = self.inner.list(prefix).await;
        log("list", prefix, started, &r, Vec::len);
        r
    }

    async fn delete(&self, key: &str) -> Result<()> {
        add(&COUNTS.delete, 1);
        let started = Instant::now();
        let r = self.inner.delete(key).await;
        log("delete", key, started, &r, |_| 0);
        r
    }

    fn location(&self) -> String {
        self.inner.location()
    }

    fn read_size(&self) -> u64 {
        self.inner.read_size()
    }
}
