//! The daemon: opening the repository, interval checkpoints, the final flush, the control socket.
//!
//! One checkpoint runs at a time. An interval tick while a checkpoint runs joins it. A flush while
//! a flush runs joins it (so preStop's `sidecar flush` and SIGTERM never back up twice at once); a
//! flush while an interval checkpoint runs cancels that checkpoint and starts the final one at
//! once, because the grace period is short and a cancelled backup is harmless: its snapshot is
//! never sealed, and the packs it uploaded are adopted by the next backup.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, Context};
use cairn_engine::{
    backup, default_cache_dir, unix_now, BackupOptions, Heartbeat, HeartbeatWriter, Progress, Repo,
};
use futures::future::{BoxFuture, FutureExt, Shared};
use rand::Rng;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::OnceCell;
use tokio::task::AbortHandle;

use crate::hook::Hook;
use crate::metrics::{Metrics, Run};
use crate::{http, RunArgs};

/// Why a checkpoint runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Interval,
    Flush,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Interval => "interval",
            Kind::Flush => "flush",
        }
    }
}

/// How a checkpoint ended, as the JSON line `sidecar flush` prints.
type Outcome = Arc<(bool, serde_json::Value)>;

struct Running {
    id: u64,
    kind: Kind,
    done: Shared<BoxFuture<'static, Outcome>>,
    abort: AbortHandle,
}

/// The daemon's shared state.
pub struct Daemon {
    args: RunArgs,
    repo: OnceCell<Repo>,
    ready: AtomicBool,
    pub metrics: Metrics,
    running: Mutex<Option<Running>>,
    next_id: AtomicU64,
    host: String,
    started: u64,
    /// The last sealed snapshot and when, for heartbeats.
    last: Mutex<Option<(String, u64)>>,
}

impl Daemon {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Opens the repository, retrying transient failures (credentials can take seconds to appear
    /// on a new pod) with backoff; a bad URL or a missing repository is final.
    async fn open_repo(&self) -> anyhow::Result<()> {
        let repo = Repo::open_waiting(&self.args.store, &self.args.keys(), None, |e, delay| {
            tracing::warn!(error = %e, retry_in = ?delay, "repository not reachable yet");
        })
        .await
        .context("cannot open the repository")?;
        let _ = self.repo.set(repo);
        self.ready.store(true, Ordering::Relaxed);
        tracing::info!(store = %self.args.store, workspace = %self.args.workspace, "repository open; ready");
        Ok(())
    }

    fn next_wait(&self) -> Duration {
        let j = self.args.jitter.clamp(0.0, 1.0);
        let f = if j > 0.0 {
            rand::thread_rng().gen_range(1.0 - j..=1.0 + j)
        } else {
            1.0
        };
        self.args.interval.mul_f64(f)
    }

    /// Starts a checkpoint of `kind`, or joins the one running (see the module docs).
    fn checkpoint(self: &Arc<Self>, kind: Kind) -> Shared<BoxFuture<'static, Outcome>> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = running.as_ref() {
            if kind == Kind::Interval || r.kind == Kind::Flush {
                return r.done.clone();
            }
            tracing::info!("cancelling the interval checkpoint in progress for the final flush");
            r.abort.abort();
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let me = self.clone();
        let task = tokio::spawn(async move {
            let out = me.run_checkpoint(kind).await;
            let mut running = me.running.lock().unwrap_or_else(|p| p.into_inner());
            if running.as_ref().is_some_and(|r| r.id == id) {
                *running = None;
            }
            out
        });
        let abort = task.abort_handle();
        let done = async move {
            task.await.unwrap_or_else(|e| {
                let why = if e.is_cancelled() {
                    "cancelled for the final flush"
                } else {
                    "the checkpoint task panicked"
                };
                Arc::new((false, json!({ "ok": false, "kind": kind.name(), "error": why })))
            })
        }
        .boxed()
        .shared();
        *running = Some(Running {
            id,
            kind,
            done: done.clone(),
            abort,
        });
        done
    }

    async fn run_checkpoint(&self, kind: Kind) -> Outcome {
        let started = Instant::now();
        let result = match kind {
            Kind::Flush => {
                match tokio::time::timeout(self.args.flush_deadline, self.backup_with_hooks()).await {
                    Ok(r) => r,
                    Err(_) => Err(anyhow!(
                    "the final checkpoint did not finish within --flush-deadline {:?}; the previous snapshot \
                     stays the latest",
                    self.args.flush_deadline
                )),
                }
            }
            Kind::Interval => self.backup_with_hooks().await,
        };
        let seconds = started.elapsed().as_secs_f64();
        self.metrics.duration.observe(seconds);
        let out = match result {
            Ok(r) => {
                let s = &r.stats;
                self.metrics.checkpoints.get_or_create(&labels(kind, "ok")).inc();
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                self.metrics.last_success.set(now);
                if let Ok(mut last) = self.last.lock() {
                    *last = Some((r.snapshot.to_hex(), unix_now()));
                }
                self.metrics.bytes_read.inc_by(s.bytes_read);
                self.metrics.bytes_uploaded.inc_by(s.uploaded_bytes);
                self.metrics
                    .bytes_deduplicated
                    .inc_by(s.bytes_read.saturating_sub(s.new_bytes));
                self.metrics.files_read.inc_by(s.files_read);
                self.metrics.files.set(i64::try_from(s.files).unwrap_or(i64::MAX));
                let c = &r.consistency;
                let mode = if c.point_in_time { "point_in_time" } else { "live" };
                self.metrics
                    .consistency
                    .get_or_create(&crate::metrics::Consistency { mode: mode.into() })
                    .inc();
                // A checkpoint of an idle workspace found unchanged is point in time unfrozen.
                if c.freezes > 0 {
                    self.metrics.frozen.observe(c.frozen_seconds);
                }
                let v = json!({
                    "ok": true,
                    "kind": kind.name(),
                    "snapshot": r.snapshot.to_hex(),
                    "is_head": r.is_head,
                    "parent": r.parent.map(|p| p.to_hex()),
                    "files": s.files,
                    "files_read": s.files_read,
                    "bytes_read": s.bytes_read,
                    "uploaded_bytes": s.uploaded_bytes,
                    "skipped": s.skipped,
                    "point_in_time": c.point_in_time,
                    "frozen_seconds": c.frozen_seconds,
                    "prepass_seconds": c.prepass_seconds,
                    "freezes": c.freezes,
                    "not_point_in_time_because": c.fallback,
                    "seconds": seconds,
                });
                for w in &r.warnings {
                    tracing::warn!(warning = %w, "checkpoint warning");
                }
                tracing::info!(
                    kind = kind.name(),
                    snapshot = %r.snapshot.to_hex(),
                    files_read = s.files_read,
                    uploaded_bytes = s.uploaded_bytes,
                    point_in_time = c.point_in_time,
                    frozen_ms = c.frozen_seconds * 1e3,
                    prepass_ms = c.prepass_seconds * 1e3,
                    seconds,
                    "checkpoint sealed"
                );
                (true, v)
            }
            Err(e) => {
                self.metrics
                    .checkpoints
                    .get_or_create(&labels(kind, "error"))
                    .inc();
                let msg = format!("{e:#}");
                tracing::error!(kind = kind.name(), error = %msg, seconds, "checkpoint failed");
                (
                    false,
                    json!({ "ok": false, "kind": kind.name(), "error": msg, "seconds": seconds }),
                )
            }
        };
        Arc::new(out)
    }

    async fn backup_with_hooks(&self) -> anyhow::Result<cairn_engine::BackupReport> {
        let repo = self
            .repo
            .get()
            .ok_or_else(|| anyhow!("the repository is not open yet"))?;
        if let Some(cmd) = &self.args.pre_hook {
            self.hook("pre", cmd).run().await?;
        }
        let opts = BackupOptions {
            max_session: cairn_engine::max_session_from_env(),
            dedup_fetches: cairn_engine::dedup_fetches_from_env(),
            workspace: self.args.workspace.clone(),
            source: self.args.source.clone(),
            cache_dir: self.args.cache_dir.clone().unwrap_or_else(default_cache_dir),
            tags: vec![],
            host: Some(self.host.clone()),
            freeze: cairn_engine::FreezeOptions {
                mode: self.args.freeze,
                deadline: self.args.freeze_deadline,
                hold: cairn_engine::freeze_hold_from_env().map_err(anyhow::Error::msg)?,
                prepass: self.args.prepass,
            },
        };
        let result = backup(repo, &opts, Arc::new(Progress::default())).await;
        if let Some(cmd) = &self.args.post_hook {
            if let Err(e) = self.hook("post", cmd).run().await {
                tracing::warn!(error = format!("{e:#}"), "post-checkpoint hook failed");
            }
        }
        Ok(result?)
    }

    fn hook<'a>(&'a self, which: &'a str, cmd: &'a str) -> Hook<'a> {
        Hook {
            which,
            cmd,
            workspace: &self.args.workspace,
            source: &self.args.source,
            timeout: self.args.hook_timeout,
            env: &self.args.hook_env,
            user: self.args.hook_user,
        }
    }

    /// Writes a heartbeat; failures are logged, never fatal.
    async fn beat(&self, writer: &HeartbeatWriter, state: &str) {
        let Some(repo) = self.repo.get() else { return };
        let last = self.last.lock().ok().and_then(|l| l.clone());
        let hb = Heartbeat {
            workspace: self.args.workspace.clone(),
            host: self.host.clone(),
            state: state.into(),
            started: self.started,
            time: unix_now(),
            last_snapshot: last.as_ref().map(|l| l.0.clone()),
            last_success: last.map(|l| l.1),
            interval: Some(self.args.heartbeat_interval.as_secs().max(1)),
        };
        if let Err(e) = writer.beat(repo, &hb).await {
            tracing::warn!(error = %e, "heartbeat not written");
        }
    }

    /// The final checkpoint, joining one in progress.
    async fn flush(self: &Arc<Self>) -> Outcome {
        self.checkpoint(Kind::Flush).await
    }
}

fn labels(kind: Kind, result: &str) -> Run {
    Run {
        kind: kind.name().into(),
        result: result.into(),
    }
}

/// Runs the daemon until SIGTERM (or SIGINT), then takes the final checkpoint and returns its
/// result.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    crate::hook::check_env_names(&args.hook_env)?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let host = cairn_engine::pod_host(args.host.clone());
    let heartbeat = HeartbeatWriter::new(&args.workspace, &host).context("--host")?;
    // A sidecar killed (with its freeze guard) while a checkpoint held the workspace frozen left
    // the agent's writes blocked: thaw first (logged if it was).
    cairn_engine::thaw_leftover(&args.cache_dir.clone().unwrap_or_else(default_cache_dir));
    let d = Arc::new(Daemon {
        args: args.clone(),
        repo: OnceCell::new(),
        ready: AtomicBool::new(false),
        metrics: Metrics::new(),
        running: Mutex::new(None),
        next_id: AtomicU64::new(0),
        host,
        started: unix_now(),
        last: Mutex::new(None),
    });

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    tracing::info!(listen = %args.listen, "serving /healthz /readyz /metrics");
    let app = http::router(d.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "health server stopped");
        }
    });

    let _ = std::fs::remove_file(&args.control_socket);
    let control = UnixListener::bind(&args.control_socket)
        .with_context(|| format!("--control-socket {}: cannot bind", args.control_socket.display()))?;
    let dc = d.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = control.accept().await {
            let d = dc.clone();
            tokio::spawn(async move { serve_control(d, conn).await });
        }
    });

    tokio::select! {
        r = d.open_repo() => r?,
        _ = term.recv() => { tracing::info!("SIGTERM before the repository opened; nothing to flush"); return Ok(()) }
        _ = int.recv() => return Ok(()),
    }

    let heartbeat = Arc::new(heartbeat);
    let every = args.heartbeat_interval;
    let beating = (!every.is_zero()).then(|| {
        let (d, hb) = (d.clone(), heartbeat.clone());
        tokio::spawn(async move {
            loop {
                d.beat(&hb, "running").await;
                tokio::time::sleep(every).await;
            }
        })
    });

    loop {
        let wait = d.next_wait();
        tokio::select! {
            _ = tokio::time::sleep(wait), if !args.interval.is_zero() => {
                // Runs in its own task; this loop keeps listening for signals meanwhile.
                drop(d.checkpoint(Kind::Interval));
            }
            _ = term.recv() => { tracing::info!("SIGTERM: final checkpoint"); break }
            _ = int.recv() => { tracing::info!("SIGINT: final checkpoint"); break }
        }
    }
    let out = d.flush().await;
    let _ = std::fs::remove_file(&args.control_socket);
    // No "running" beat may follow the last one. A beat cut off here either landed before the
    // final one or fails its compare-and-swap against it.
    if let Some(task) = beating {
        task.abort();
        let _ = task.await;
    }
    d.beat(&heartbeat, if out.0 { "stopped" } else { "stopped-unflushed" })
        .await;
    println!("{}", out.1);
    if out.0 {
        Ok(())
    } else {
        Err(anyhow!("final checkpoint failed: {}", out.1["error"]))
    }
}

/// One control connection: a `flush` line in, one JSON line out.
async fn serve_control(d: Arc<Daemon>, conn: UnixStream) {
    let (r, mut w) = conn.into_split();
    let mut line = String::new();
    if BufReader::new(r).read_line(&mut line).await.is_err() {
        return;
    }
    let reply = match line.trim() {
        "flush" => d.flush().await.1.to_string(),
        other => {
            json!({ "ok": false, "error": format!("unknown request {other:?}; expected flush") }).to_string()
        }
    };
    let _ = w.write_all(format!("{reply}\n").as_bytes()).await;
}

/// Client side of `sidecar flush`: returns whether the flush sealed a snapshot, and its JSON line.
pub async fn request_flush(socket: &Path) -> anyhow::Result<(bool, String)> {
    let conn = UnixStream::connect(socket).await.with_context(|| {
        format!(
            "{}: no sidecar daemon listening (is `sidecar run` up, with the same --control-socket?)",
            socket.display()
        )
    })?;
    let (r, mut w) = conn.into_split();
    w.write_all(b"flush\n")
        .await
        .context("sending the flush request")?;
    let mut line = String::new();
    BufReader::new(r)
        .read_line(&mut line)
        .await
        .context("reading the daemon's answer")?;
    let line = line.trim().to_string();
    let v: serde_json::Value =
        serde_json::from_str(&line).with_context(|| format!("daemon answered {line:?}"))?;
    Ok((v["ok"] == true, line))
}
