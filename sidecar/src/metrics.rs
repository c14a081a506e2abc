//! Prometheus metrics of the daemon.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of a checkpoint: why it ran and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Run {
    /// `interval` or `flush`.
    pub kind: String,
    /// `ok` or `error`.
    pub result: String,
}

/// Labels of a store request: which operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Op {
    /// `get`, `get_range`, `put`, `head`, `list` or `delete`.
    pub op: String,
}

/// Every metric the daemon exports.
pub struct Metrics {
    store_requests: Family<Op, Counter>,
    store_bytes: Family<Op, Counter>,
    /// The process-wide request counts already added to the counters.
    seen: std::sync::Mutex<cairn_engine::RequestCounts>,
    registry: Registry,
    pub checkpoints: Family<Run, Counter>,
    pub duration: Histogram,
    pub last_success: Gauge<f64, AtomicU64>,
    pub bytes_read: Counter,
    pub bytes_uploaded: Counter,
    pub bytes_deduplicated: Counter,
    pub files_read: Counter,
    pub files: Gauge,
    pub frozen: Histogram,
    pub consistency: Family<Consistency, Counter>,
}

/// Labels of `cairn_checkpoint_consistency_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Consistency {
    /// `point_in_time` (frozen throughout) or `live` (read as it was changing).
    pub mode: String,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("cairn");
        let checkpoints = Family::<Run, Counter>::default();
        let duration = Histogram::new([0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0]);
        let last_success = Gauge::<f64, AtomicU64>::default();
        let (bytes_read, bytes_uploaded, bytes_deduplicated, files_read) = (
            Counter::default(),
            Counter::default(),
            Counter::default(),
            Counter::default(),
        );
        let files = Gauge::default();
        let frozen = Histogram::new([0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0]);
        let consistency = Family::<Consistency, Counter>::default();
        registry.register(
            "freeze_seconds",
            "How long checkpoints held the workspace's file system frozen",
            frozen.clone(),
        );
        registry.register(
            "checkpoint_consistency",
            "Checkpoints by how their instant was fixed: point_in_time (frozen) or live (no freeze: see the log)",
            consistency.clone(),
        );
        let store_requests = Family::<Op, Counter>::default();
        let store_bytes = Family::<Op, Counter>::default();
        registry.register(
            "store_requests",
            "Requests made to the store, by operation (retries not counted)",
            store_requests.clone(),
        );
        registry.register(
            "store_bytes",
            "Bytes moved to and from the store (op: get or put)",
            store_bytes.clone(),
        );
        registry.register(
            "checkpoints",
            "Checkpoints taken, by kind and result",
            checkpoints.clone(),
        );
        registry.register(
            "checkpoint_duration_seconds",
            "Wall time of checkpoints",
            duration.clone(),
        );
        registry.register(
            "last_success_timestamp_seconds",
            "Unix time of the last checkpoint that sealed a snapshot",
            last_success.clone(),
        );
        registry.register(
            "read_bytes",
            "Bytes read from the workspace by checkpoints",
            bytes_read.clone(),
        );
        registry.register(
            "uploaded_bytes",
            "Bytes uploaded to the store",
            bytes_uploaded.clone(),
        );
        registry.register(
            "deduplicated_bytes",
            "Bytes read that the store already held",
            bytes_deduplicated.clone(),
        );
        registry.register(
            "read_files",
            "Files read (changed since the last checkpoint)",
            files_read.clone(),
        );
        registry.register(
            "workspace_files",
            "Files in the workspace at the last checkpoint",
            files.clone(),
        );
        Metrics {
            store_requests,
            store_bytes,
            seen: std::sync::Mutex::default(),
            registry,
            checkpoints,
            duration,
            last_success,
            bytes_read,
            bytes_uploaded,
            bytes_deduplicated,
            files_read,
            files,
            frozen,
            consistency,
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        self.update_store_counts();
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Adds what the engine's request counters moved since the last scrape.
    fn update_store_counts(&self) {
        let now = cairn_engine::request_counts();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let inc = |family: &Family<Op, Counter>, op: &str, new: u64, old: u64| {
            family
                .get_or_create(&Op { op: op.into() })
                .inc_by(new.saturating_sub(old));
        };
        let r = &self.store_requests;
        inc(r, "get", now.get, seen.get);
        inc(r, "get_range", now.get_range, seen.get_range);
        inc(r, "put", now.put, seen.put);
        inc(r, "head", now.head, seen.head);
        inc(r, "list", now.list, seen.list);
        inc(r, "delete", now.delete, seen.delete);
        inc(&self.store_bytes, "get", now.bytes_down, seen.bytes_down);
        inc(&self.store_bytes, "put", now.bytes_up, seen.bytes_up);
        *seen = now;
    }
}
