//! Heartbeats: one small JSON object per running sidecar, `heartbeats/<workspace>/<host>`, so an
//! operator can tell live workspaces from dead ones (`initctl heartbeats`).
//!
//! Each object is written only by the pod named in its key, by compare-and-swap on the version it
//! wrote last (create the first time); a pod that restarts with the same name takes the object
//! over after one read. Heartbeats are operational state, not backup data: JSON, outside the
//! versioned format (sealed like every object in an encrypted repository), never read by backup;
//! a restore reads them to wait for a previous pod, and skips one that does not open or parse.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::store::{PutMode, Store, Version};
use crate::{Error, Repo, Result};

/// Prefix of every heartbeat key.
pub const HEARTBEATS_PREFIX: &str = "heartbeats/";

/// What a sidecar reports about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The workspace.
    pub workspace: String,
    /// The pod (host name).
    pub host: String,
    /// `running`, or `stopped` after the final checkpoint.
    pub state: String,
    /// Unix seconds when the sidecar started (the pod's clock).
    pub started: u64,
    /// Unix seconds of this beat (the pod's clock).
    pub time: u64,
    /// The last snapshot this sidecar sealed.
    pub last_snapshot: Option<String>,
    /// Unix seconds of that snapshot.
    pub last_success: Option<u64>,
    /// Seconds between this sidecar's beats.
    #[serde(default)]
    pub interval: Option<u64>,
}

impl Heartbeat {
    /// Whether the sidecar that wrote this is still running at `now` (Unix seconds): it has not
    /// reported `stopped`, and it beat within two of its intervals plus ten seconds (a pod whose
    /// node died stops beating and goes stale; pod clocks are assumed roughly in sync).
    pub fn is_live(&self, now: u64) -> bool {
        let interval = self.interval.unwrap_or(60).max(1);
        self.state == "running" && now.saturating_sub(self.time) <= 2 * interval + 10
    }
}

/// Seconds since the Unix epoch, by this machine's clock.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// This pod's name in heartbeats: `explicit` (`--host`), else `$HOSTNAME` (the pod name in
/// Kubernetes), else `sidecar`.
pub fn pod_host(explicit: Option<String>) -> String {
    explicit
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sidecar".into())
}

/// The key of a heartbeat.
pub fn heartbeat_key(workspace: &str, host: &str) -> String {
    format!("{HEARTBEATS_PREFIX}{workspace}/{host}")
}

/// Writes one pod's heartbeat, remembering the version it wrote.
#[derive(Debug)]
pub struct HeartbeatWriter {
    key: String,
    version: Mutex<Option<Version>>,
}

impl HeartbeatWriter {
    /// A writer for `workspace` on `host` (host names with `/` are refused).
    ///
    /// # Errors
    /// [`Error::Invalid`] for an empty host or one with `/`.
    pub fn new(workspace: &str, host: &str) -> Result<Self> {
        if host.is_empty() || host.contains('/') || host.starts_with('.') {
            return Err(Error::Invalid(format!(
                "{host:?} is not usable as a heartbeat host name"
            )));
        }
        Ok(HeartbeatWriter {
            key: heartbeat_key(workspace, host),
            version: Mutex::new(None),
        })
    }

    /// Writes `hb`.
    ///
    /// # Errors
    /// Store errors.
    pub async fn beat(&self, repo: &Repo, hb: &Heartbeat) -> Result<()> {
        let store = repo.store().as_ref();
        let data = Bytes::from(repo.crypt().seal_json(
            &self.key,
            serde_json::to_vec(hb).map_err(|e| Error::Invalid(e.to_string()))?,
        ));
        let mut version = self.version.lock().await;
        for _ in 0..2 {
            let mode = version.clone().map_or(PutMode::Create, PutMode::Update);
            match store.put(&self.key, data.clone(), mode).await {
                Ok(v) => {
                    *version = Some(v);
                    return Ok(());
                }
                // Written by an earlier life of this pod: take it over from its current version.
                Err(Error::AlreadyExists { .. } | Error::Conflict { .. }) => {
                    *version = match store.get(&self.key).await {
                        Ok(cur) => Some(cur.version),
                        Err(Error::NotFound { .. }) => None,
                        Err(e) => return Err(e),
                    };
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict {
            key: self.key.clone(),
        })
    }
}

/// Every heartbeat in the repository (of one workspace if given), by key. One that does not open or
/// parse (damaged, or planted by someone who may write the bucket) is skipped with a warning, so
/// it cannot stop a restore.
///
/// # Errors
/// Store errors.
pub async fn heartbeats(repo: &Repo, workspace: Option<&str>) -> Result<Vec<Heartbeat>> {
    let raw = heartbeat_objects(repo.store(), workspace).await?;
    Ok(heartbeats_from(repo, raw))
}

/// Decodes heartbeat objects read by [`heartbeat_objects`], as [`heartbeats`] does.
pub fn heartbeats_from(repo: &Repo, raw: Vec<(String, Bytes)>) -> Vec<Heartbeat> {
    raw.into_iter()
        .filter_map(|(key, data)| {
            let parsed = repo.crypt().open_json(&key, "heartbeat", &data).and_then(|json| {
                serde_json::from_slice::<Heartbeat>(&json).map_err(|e| Error::Corrupt {
                    object: key.clone(),
                    detail: e.to_string(),
                })
            });
            match parsed {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "heartbeat skipped");
                    None
                }
            }
        })
        .collect()
}

/// The heartbeat objects of a store not opened as a repository yet (so the listing can share a
/// round trip with reading the repository's config), undecoded: [`heartbeats_from`] opens them.
///
/// # Errors
/// Store errors.
pub async fn heartbeat_objects(
    store: &Arc<dyn Store>,
    workspace: Option<&str>,
) -> Result<Vec<(String, Bytes)>> {
    let prefix = match workspace {
        Some(ws) => format!("{HEARTBEATS_PREFIX}{ws}/"),
        None => HEARTBEATS_PREFIX.to_string(),
    };
    let mut out = Vec::new();
    for o in store.list(&prefix).await? {
        let got = match store.get(&o.key).await {
            Ok(g) => g,
            Err(Error::NotFound { .. }) => continue,
            Err(e) => return Err(e),
        };
        out.push((o.key.clone(), got.data));
    }
    Ok(out)
}
