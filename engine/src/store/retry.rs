//! Retries, per-request timeouts and a bound on requests in flight, around any store.
//!
//! Every request that fails with a retryable error (throttling such as S3's 503 SlowDown or a 429,
//! a 5xx, a timeout, a connection reset, a body cut short) is repeated after a full-jitter
//! exponential backoff, up to a number of attempts. Each attempt has a deadline that grows with the
//! bytes it moves, so a slow large upload is not cut off while a hung small request is.
//!
//! A write whose attempt failed may still have landed (the response was lost). If a later attempt
//! then reports "already exists" or "changed concurrently", the object is read back: if it holds
//! exactly the bytes this write carried, the write succeeded and its version is returned. Heads
//! carry a snapshot id and a time, so identical bytes mean this writer's head.

use std::future::Future;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rand::Rng;
use tokio::sync::Semaphore;

use super::{GetResult, ObjectMeta, PutMode, Store, Version};
use crate::{Error, Result};

/// How [`RetryStore`] retries and bounds requests.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts per request, the first included.
    pub attempts: u32,
    /// Backoff before the second attempt (the cap doubles each time; the delay is uniform below it).
    pub base_delay: Duration,
    /// Largest backoff.
    pub max_delay: Duration,
    /// Deadline of one attempt that moves little data.
    pub request_timeout: Duration,
    /// Bytes per second every transfer is assumed to reach at least; extends the deadline of
    /// attempts that move more data.
    pub min_throughput: u64,
    /// Requests in flight at once through this store.
    pub max_in_flight: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 10,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            min_throughput: 1 << 20,
            max_in_flight: 64,
        }
    }
}

impl RetryPolicy {
    fn timeout_for(&self, bytes: u64) -> Duration {
        self.request_timeout + Duration::from_secs(bytes / self.min_throughput.max(1))
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max_delay);
        rand::thread_rng().gen_range(Duration::ZERO..=cap)
    }
}

/// Counters of a [`RetryStore`], for reports and tests.
#[derive(Debug, Default)]
pub struct RetryStats {
    /// Attempts made (first attempts included).
    pub attempts: AtomicU64,
    /// Attempts repeated after a retryable failure.
    pub retries: AtomicU64,
    /// Writes found to have landed although their attempt failed.
    pub resolved_writes: AtomicU64,
}

/// A store that retries, times out and bounds the requests of another.
#[derive(Debug)]
pub struct RetryStore {
    inner: Arc<dyn Store>,
    policy: RetryPolicy,
    permits: Semaphore,
    stats: RetryStats,
}

impl RetryStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>, policy: RetryPolicy) -> Self {
        RetryStore {
            inner,
            permits: Semaphore::new(policy.max_in_flight.max(1)),
            policy,
            stats: RetryStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> &RetryStats {
        &self.stats
    }

    /// Runs `op` until it succeeds, fails for good, or runs out of attempts. Returns the result
    /// and whether any attempt failed retryably before it (a write may then have landed).
    async fn run<T, F, Fut>(&self, key: &str, bytes: u64, mut op: F) -> (Result<T>, bool)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let deadline = self.policy.timeout_for(bytes);
        let mut failed_before = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.stats.attempts.fetch_add(1, Ordering::Relaxed);
            let result = {
                let _permit = self.permits.acquire().await;
                match tokio::time::timeout(deadline, op()).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::Store {
                        key: key.to_string(),
                        detail: format!("no answer within {deadline:?}"),
                        retryable: true,
                    }),
                }
            };
            match result {
                Err(e) if e.is_retryable() => {
                    if attempt >= self.policy.attempts {
                        let e = match e {
                            Error::Store { key, detail, .. } => Error::Store {
                                key,
                                detail: format!("{detail} (gave up after {attempt} attempts)"),
                                retryable: true,
                            },
                            e => e,
                        };
                        return (Err(e), failed_before);
                    }
                    tracing::debug!(key, attempt, error = %e, "store request failed; retrying");
                    failed_before = true;
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(self.policy.backoff(attempt)).await;
                }
                r => return (r, failed_before),
            }
        }
    }
}

#[async_trait]
impl Store for RetryStore {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<Version> {
        let (result, failed_before) = self
            .run(key, data.len() as u64, || {
                self.inner.put(key, data.clone(), mode.clone())
            })
            .await;
        match result {
            Err(e @ (Error::AlreadyExists { .. } | Error::Conflict { .. })) if failed_before => {
                // An earlier attempt may have landed: if the object holds our bytes, it did.
                match self.get(key).await {
                    Ok(cur) if cur.data == data => {
                        self.stats.resolved_writes.fetch_add(1, Ordering::Relaxed);
                        Ok(cur.version)
                    }
                    _ => Err(e),
                }
            }
            r => r,
        }
    }

    async fn get(&self, key: &str) -> Result<GetResult> {
        self.run(key, 0, || self.inner.get(key)).await.0
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let want = range.end.saturating_sub(range.start);
        self.run(key, want, || async {
            let data = self.inner.get_range(key, range.clone()).await?;
            if data.len() as u64 != want {
                // A body cut short on the way: ask again.
                return Err(Error::Store {
                    key: key.to_string(),
                    detail: format!("short read: {} of {want} bytes of range {range:?}", data.len()),
                    retryable: true,
                });
            }
            Ok(data)
        })
        .await
        .0
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.run(key, 0, || self.inner.head(key)).await.0
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.run(prefix, 0, || self.inner.list(prefix)).await.0
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.run(key, 0, || self.inner.delete(key)).await.0
    }

    fn location(&self) -> String {
        self.inner.location()
    }

    fn read_size(&self) -> u64 {
        self.inner.read_size()
    }
}
