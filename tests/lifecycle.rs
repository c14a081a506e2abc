//! Pod lifecycle with real processes and real signals: the `sidecar` daemon's final checkpoint on
//! SIGTERM, `sidecar flush` (preStop) shared by concurrent callers, interval checkpoints, hooks,
//! health and metrics; and a backup killed with SIGKILL mid-way.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// A repository on a local store, a workspace, and a running `sidecar run`.
struct Pod {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Pod {
    fn store(&self) -> String {
        self.dir.path().join("store").display().to_string()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ws(&self) -> PathBuf {
        self.path("ws")
    }

    fn socket(&self) -> PathBuf {
        self.path("sidecar.sock")
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CAIRN_STORE", self.store()),
            ("CAIRN_CACHE_DIR", self.path("cache").display().to_string()),
            ("CAIRN_WORKSPACE", "agent".into()),
        ]
    }

    /// A new repository and workspace (not yet running a sidecar).
    fn new() -> Pod {
        let dir = tempfile::tempdir().expect("tempdir");
        let pod = Pod {
            dir,
            port: 0,
            child: None,
        };
        let o = pod.initctl(&["init"]);
        assert!(o.status.success(), "init: {}", stderr(&o));
        build_everything_tree(&pod.ws(), 21);
        pod
    }

    /// Starts `sidecar run` with `extra` flags and waits until it is ready.
    fn start(&mut self, extra: &[&str]) {
        self.port = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let mut cmd = Command::new(bin_path("sidecar"));
        cmd.arg("run")
            .arg("--source")
            .arg(self.ws())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--control-socket")
            .arg(self.socket())
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.envs(self.env());
        self.child = Some(cmd.spawn().expect("start sidecar"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_get(self.port, "/readyz").0 != 200 {
            assert!(Instant::now() < deadline, "sidecar never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` and waits for the daemon to exit.
    fn stop(&mut self, signal: rustix::process::Signal) -> Output {
        let child = self.child.take().expect("running");
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, signal).expect("signal");
        child.wait_with_output().expect("wait")
    }

    fn metrics(&self) -> String {
        http_get(self.port, "/metrics").1
    }

    fn flush(&self) -> Output {
        Command::new(bin_path("sidecar"))
            .arg("flush")
            .arg("--control-socket")
            .arg(self.socket())
            .output()
            .expect("sidecar flush")
    }

    /// `initctl` with this pod's store, cache and workspace.
    fn initctl(&self, args: &[&str]) -> Output {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        initctl(args, &env)
    }

    fn restore_to(&self, out: &Path) {
        let o = self.initctl(&["restore", out.to_str().expect("utf-8")]);
        assert!(o.status.success(), "restore: {}", stderr(&o));
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// GET over HTTP/1.1; (status, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    );
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn json_line(o: &Output) -> serde_json::Value {
    let out = stdout(o);
    let line = out.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}; stderr {}", stderr(o)))
}

#[test]
fn sigterm_takes_a_final_checkpoint_that_the_next_pod_restores() {
    let mut pod = Pod::new();
    pod.start(&[
        "--interval",
        "0",
        "--log-format",
        "json",
        "--host",
        "pod-a",
        "--heartbeat-interval",
        "100ms",
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = pod.initctl(&["heartbeats", "--workspace", "agent"]);
        if stdout(&o).contains("pod-a") && stdout(&o).contains("running") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no heartbeat: {} {}",
            stdout(&o),
            stderr(&o)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(http_get(pod.port, "/healthz").0, 200);
    // The agent works: edits after the sidecar started.
    write(
        &pod.ws().join("src/new-work.rs"),
        b"fn main() { println!(\"unsaved\"); }\n",
    );
    std::fs::remove_file(pod.ws().join("tiny")).ok();
    let o = pod.stop(rustix::process::Signal::TERM);
    assert!(o.status.success(), "sidecar exit: {:?} {}", o.status, stderr(&o));
    let v = json_line(&o);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["kind"], "flush");
    // The last heartbeat says the pod stopped after sealing that snapshot.
    let hb = pod.initctl(&["heartbeats", "--json"]);
    let hb: serde_json::Value = serde_json::from_str(&stdout(&hb)).expect("json");
    assert_eq!(hb[0]["host"], "pod-a", "{hb}");
    assert_eq!(hb[0]["state"], "stopped", "{hb}");
    assert_eq!(hb[0]["last_snapshot"], v["snapshot"], "{hb}");
    // Structured logs: every stderr line is a JSON object.
    for line in stderr(&o).lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("log line {line:?}: {e}"));
    }

    // A new pod restores exactly what the old one had.
    let out = pod.path("next-pod");
    pod.restore_to(&out);
    assert_same_tree(&pod.ws(), &out);
}

#[test]
fn concurrent_flushes_share_one_checkpoint_with_hooks_and_metrics() {
    let mut pod = Pod::new();
    // Files younger than the stat cache's 2 s racy window are re-read by the next backup; let
    // the fresh workspace age past it, so the last assertion can say "nothing re-read".
    std::thread::sleep(Duration::from_millis(2100));
    let hooks = pod.path("hooks.log");
    let pre = format!("echo pre-$CAIRN_HOOK >> {}; sleep 1", hooks.display());
    let post = format!("echo post-$CAIRN_HOOK >> {}", hooks.display());
    pod.start(&[
        "--interval",
        "0",
        "--log-format",
        "text",
        "--pre-hook",
        &pre,
        "--post-hook",
        &post,
    ]);
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| pod.flush());
        std::thread::sleep(Duration::from_millis(300));
        let b = s.spawn(|| pod.flush());
        (a.join().expect("flush a"), b.join().expect("flush b"))
    });
    let (va, vb) = (json_line(&a), json_line(&b));
    assert!(a.status.success() && b.status.success(), "{va} {vb}");
    assert_eq!(
        va["snapshot"], vb["snapshot"],
        "the second flush joined the first"
    );
    assert_eq!(
        std::fs::read_to_string(&hooks).expect("hooks ran"),
        "pre-pre\npost-post\n"
    );
    let m = pod.metrics();
    assert!(
        m.contains(r#"cairn_checkpoints_total{kind="flush",result="ok"} 1"#),
        "{m}"
    );
    assert!(m.contains("cairn_last_success_timestamp_seconds"), "{m}");
    assert!(m.contains("cairn_uploaded_bytes_total"), "{m}");

    // The final checkpoint on SIGTERM after preStop's flush reads nothing new.
    let o = pod.stop(rustix::process::Signal::TERM);
    assert!(o.status.success(), "{}", stderr(&o));
    let v = json_line(&o);
    assert_eq!(v["files_read"], 0, "{v}");
    assert_eq!(v["parent"], va["snapshot"], "{v}");
}

#[test]
fn interval_checkpoints_run_on_their_own_and_a_failing_hook_fails_one() {
    let mut pod = Pod::new();
    let flag = pod.path("fail-next");
    let pre = format!("test ! -e {}", flag.display());
    pod.start(&[
        "--interval",
        "200ms",
        "--jitter",
        "0",
        "--log-format",
        "text",
        "--pre-hook",
        &pre,
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pod
        .metrics()
        .contains(r#"cairn_checkpoints_total{kind="interval",result="ok"} 2"#)
    {
        assert!(
            Instant::now() < deadline,
            "no interval checkpoints: {}",
            pod.metrics()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    write(&flag, b"");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pod.metrics().contains(r#"kind="interval",result="error""#) {
        assert!(
            Instant::now() < deadline,
            "the failing hook did not fail a checkpoint: {}",
            pod.metrics()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The final checkpoint runs the same hook: it fails, and the daemon says so with its exit code.
    let o = pod.stop(rustix::process::Signal::TERM);
    assert!(!o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("pre-checkpoint hook"), "{}", stderr(&o));
}

#[test]
fn sigkill_mid_backup_leaves_the_previous_snapshot_latest_and_the_next_backup_works() {
    let pod = Pod::new();
    let ws = pod.ws();
    let o = pod.initctl(&["backup", ws.to_str().expect("utf-8")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let first = stdout(&o).trim().to_string();
    let before = pod.path("before");
    copy_tree(&ws, &before);
    write(&ws.join("big.bin"), &random_bytes(77, 24 << 20));

    // Every store request takes 150 ms, so the kill lands long before the head could move.
    let mut cmd = Command::new(initctl_path());
    cmd.arg("backup").arg(&ws).env("CAIRN_FAULTS", "latency=150ms");
    cmd.envs(pod.env());
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("backup");
    std::thread::sleep(Duration::from_millis(700));
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::KILL,
    )
    .expect("SIGKILL");
    let mut child = child;
    let status = child.wait().expect("wait");
    assert!(!status.success(), "the backup was killed, not finished");

    let o = pod.initctl(&["snapshots", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    let ids: Vec<String> = v
        .as_array()
        .expect("array")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(
        ids,
        std::slice::from_ref(&first),
        "only the first snapshot exists"
    );
    let out = pod.path("after-kill");
    pod.restore_to(&out);
    assert_same_tree(&before, &out);

    let o = pod.initctl(&["backup", ws.to_str().expect("utf-8")]);
    assert!(o.status.success(), "the next backup works: {}", stderr(&o));
    let out = pod.path("after-next");
    pod.restore_to(&out);
    assert_same_tree(&ws, &out);
}

#[test]
fn flush_without_a_daemon_and_a_sidecar_without_a_repository_fail_clearly() {
    let o = Command::new(bin_path("sidecar"))
        .args(["flush", "--control-socket", "/nonexistent/cairn.sock"])
        .output()
        .expect("flush");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no sidecar daemon listening"),
        "{}",
        stderr(&o)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let o = Command::new(bin_path("sidecar"))
        .args([
            "run",
            "--workspace",
            "w",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "text",
        ])
        .arg("--store")
        .arg(dir.path().join("empty"))
        .arg("--source")
        .arg(dir.path())
        .arg("--control-socket")
        .arg(dir.path().join("s.sock"))
        .output()
        .expect("run");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no Cairn repository"), "{}", stderr(&o));
}
