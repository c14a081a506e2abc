//! Counters an operation updates as it goes, for progress bars and reports.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters. Cheap to update from any thread; read with [`Progress::snapshot`].
#[derive(Debug, Default)]
pub struct Progress {
    /// Entries (files, directories, links) visited.
    pub entries: AtomicU64,
    /// Bytes of file content processed (read on backup, written on restore).
    pub bytes: AtomicU64,
    /// Bytes sent to or fetched from the store.
    pub transferred: AtomicU64,
    /// Total bytes expected, when known (restore).
    pub total_bytes: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// See [`Progress::entries`].
    pub entries: u64,
    /// See [`Progress::bytes`].
    pub bytes: u64,
    /// See [`Progress::transferred`].
    pub transferred: u64,
    /// See [`Progress::total_bytes`].
    pub total_bytes: u64,
}

impl Progress {
    /// Reads every counter.
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            entries: self.entries.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            transferred: self.transferred.load(Ordering::Relaxed),
            total_bytes: self.total_bytes.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
