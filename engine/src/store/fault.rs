//! Fault injection around a real store, for tests and drills: latency on every request, failed
//! requests, writes that land but whose response is lost, and bodies cut short.
//!
//! A plan is written as `errors=0.05,latency=20ms,truncate=0.01,seed=7` (every field optional) and
//! reaches the binaries through `CAIRN_FAULTS`. Failures are retryable errors, as a dropped
//! connection or a 503 would be; a `RetryStore` above this one is what makes them survivable.

use std::ops::Range;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{GetResult, ObjectMeta, PutMode, Store, Version};
use crate::{Error, Result};

/// What to inject.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultPlan {
    /// Probability that a request fails (half of failed writes land before failing).
    pub error_rate: f64,
    /// Delay before every request.
    pub latency: Duration,
    /// Probability that a successful read returns a body cut short.
    pub truncate_rate: f64,
    /// Seed for the random choices (fixed runs for tests); random if absent.
    pub seed: Option<u64>,
    /// Every request fails, as refused credentials do (not retryable), until this long after the
    /// process first parsed a plan: a new pod whose credentials are not there yet.
    pub outage: Duration,
}

/// When this process first parsed a fault plan (the start of an `outage`).
static FAULTS_SINCE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

impl FromStr for FaultPlan {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let mut plan = FaultPlan::default();
        let bad = |what: &str| {
            Error::Invalid(format!(
                "fault plan {s:?}: {what}; expected e.g. errors=0.05,latency=20ms,truncate=0.01,seed=7,outage=2s"
            ))
        };
        for field in s.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            let (name, value) = field.split_once('=').ok_or_else(|| bad(field))?;
            let rate = |v: &str| {
                v.parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| bad(&format!("{name} must be a probability between 0 and 1")))
            };
            match name {
                "errors" => plan.error_rate = rate(value)?,
                "truncate" => plan.truncate_rate = rate(value)?,
                "latency" => {
                    plan.latency = parse_duration(value).ok_or_else(|| bad("latency like 20ms or 1s"))?
                }
                "seed" => plan.seed = Some(value.parse().map_err(|_| bad("seed must be an integer"))?),
                "outage" => {
                    plan.outage = parse_duration(value).ok_or_else(|| bad("outage like 2s"))?;
                    FAULTS_SINCE.get_or_init(std::time::Instant::now);
                }
                _ => return Err(bad(&format!("unknown field {name:?}"))),
            }
        }
        Ok(plan)
    }
}

/// Parses `250ms`, `2s`, `1m` or a number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((s, ""), |i| s.split_at(i));
    let n: f64 = num.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

/// [`parse_duration`] for command-line arguments: the error names the value and the form.
///
/// # Errors
/// A message for anything [`parse_duration`] refuses.
pub fn parse_duration_arg(s: &str) -> std::result::Result<Duration, String> {
    parse_duration(s).ok_or_else(|| format!("{s:?}: expected a duration like 30s, 5m or 6h"))
}

/// Counts of what was injected.
#[derive(Debug, Default)]
pub struct FaultStats {
    /// Requests seen.
    pub requests: AtomicU64,
    /// Requests failed.
    pub errors: AtomicU64,
    /// Failed writes that had landed first.
    pub landed_then_failed: AtomicU64,
    /// Reads cut short.
    pub truncated: AtomicU64,
}

/// A store that injects faults into the requests of another.
#[derive(Debug)]
pub struct FaultStore {
    inner: Arc<dyn Store>,
    plan: Mutex<FaultPlan>,
    rng: Mutex<StdRng>,
    stats: FaultStats,
}

impl FaultStore {
    /// Wraps `inner` with `plan`.
    pub fn new(inner: Arc<dyn Store>, plan: FaultPlan) -> Self {
        let rng = match plan.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_entropy(),
        };
        FaultStore {
            inner,
            plan: Mutex::new(plan),
            rng: Mutex::new(rng),
            stats: FaultStats::default(),
        }
    }

    /// Changes the plan from the next request on (an outage starting or ending).
    pub fn set_plan(&self, plan: FaultPlan) {
        if let Ok(mut p) = self.plan.lock() {
            *p = plan;
        }
    }

    fn plan(&self) -> FaultPlan {
        self.plan.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// What was injected so far.
    pub fn stats(&self) -> &FaultStats {
        &self.stats
    }

    fn roll(&self, p: f64) -> bool {
        p > 0.0
            && self
                .rng
                .lock()
                .map(|mut r| r.gen_bool(p.min(1.0)))
                .unwrap_or(false)
    }

    /// Counts the request, waits the latency, fails it during an outage, and returns the plan to
    /// apply to it.
    async fn enter(&self, key: &str) -> Result<FaultPlan> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let plan = self.plan();
        if !plan.latency.is_zero() {
            tokio::time::sleep(plan.latency).await;
        }
        if FAULTS_SINCE.get().is_some_and(|t| t.elapsed() < plan.outage) {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
            return Err(Error::Store {
                key: key.to_string(),
                detail: "injected fault: 403 AccessDenied (credentials not ready yet)".into(),
                retryable: false,
            });
        }
        Ok(plan)
    }

    fn fail(&self, key: &str, what: &str) -> Error {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        Error::Store {
            key: key.to_string(),
            detail: format!("injected fault: {what}"),
            retryable: true,
        }
    }
}

#[async_trait]
impl Store for FaultStore {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<Version> {
        let plan = self.enter(key).await?;
        if self.roll(plan.error_rate) {
            if self.roll(0.5) {
                self.stats.landed_then_failed.fetch_add(1, Ordering::Relaxed);
                let _ = self.inner.put(key, data, mode).await;
                return Err(self.fail(key, "connection reset after the upload (response lost)"));
            }
            return Err(self.fail(key, "upload failed: connection reset"));
        }
        self.inner.put(key, data, mode).await
    }

    async fn get(&self, key: &str) -> Result<GetResult> {
        let plan = self.enter(key).await?;
        if self.roll(plan.error_rate) {
            return Err(self.fail(key, "503 SlowDown"));
        }
        let r = self.inner.get(key).await?;
        if !r.data.is_empty() && self.roll(plan.truncate_rate) {
            // What a backend reports when the body ends before its Content-Length.
            self.stats.truncated.fetch_add(1, Ordering::Relaxed);
            return Err(self.fail(
                key,
                &format!("body ended after {} of {} bytes", r.data.len() / 2, r.data.len()),
            ));
        }
        Ok(r)
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let plan = self.enter(key).await?;
        if self.roll(plan.error_rate) {
            return Err(self.fail(key, "connection reset"));
        }
        let data = self.inner.get_range(key, range).await?;
        if !data.is_empty() && self.roll(plan.truncate_rate) {
            // Handed up short, as a careless client would: the layer above must notice.
            self.stats.truncated.fetch_add(1, Ordering::Relaxed);
            return Ok(data.slice(..data.len() / 2));
        }
        Ok(data)
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let plan = self.enter(key).await?;
        if self.roll(plan.error_rate) {
            return Err(self.fail(key, "500 InternalError"));
        }
        self.inner.head(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let plan = self.enter(prefix).await?;
        if self.roll(plan.error_rate) {
            return Err(self.fail(prefix, "429 Too Many Requests"));
        }
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let plan = self.enter(key).await?;
        if self.roll(plan.error_rate) {
            if self.roll(0.5) {
                let _ = self.inner.delete(key).await;
            }
            return Err(self.fail(key, "connection reset"));
        }
        self.inner.delete(key).await
    }

    fn location(&self) -> String {
        self.inner.location()
    }

    fn read_size(&self) -> u64 {
        self.inner.read_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_and_bad_ones_are_named() {
        let p: FaultPlan = "errors=0.05, latency=20ms,truncate=0.01,seed=7"
            .parse()
            .expect("plan");
        assert_eq!(p.error_rate, 0.05);
        assert_eq!(p.latency, Duration::from_millis(20));
        assert_eq!(p.truncate_rate, 0.01);
        assert_eq!(p.seed, Some(7));
        assert_eq!("".parse::<FaultPlan>().expect("empty plan"), FaultPlan::default());
        for bad in ["errors=2", "latency=fast", "bogus=1", "errors"] {
            let e = bad.parse::<FaultPlan>().expect_err(bad).to_string();
            assert!(e.contains(bad), "{e}");
        }
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("-1s"), None);
    }
}
