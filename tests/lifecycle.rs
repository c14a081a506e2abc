//! Pod lifecycle with real processes and real signals: the `sidecar` daemon's final checkpoint on
//! SIGTERM, `sidecar flush` (preStop) shared by concurrent callers, interval checkpoints, hooks,
//! health and metrics; and a backup killed with SIGKILL mid-way.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::servers::free_port;
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
        // Hooks run as nobody: they may look around the pod directory and write in hooks/.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(pod.dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::create_dir(pod.path("hooks")).expect("mkdir");
        std::fs::set_permissions(pod.path("hooks"), std::fs::Permissions::from_mode(0o777)).expect("chmod");
        pod
    }

    /// Starts `sidecar run` with `extra` flags and waits until it is ready.
    fn start(&mut self, extra: &[&str]) {
        self.start_env(extra, &[]);
    }

    /// [`Pod::start`] with more environment variables for the daemon.
    fn start_env(&mut self, extra: &[&str], env: &[(&str, &str)]) {
        self.port = free_port();
        let mut cmd = cairn_command("sidecar");
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
        cmd.envs(self.env()).envs(env.iter().copied());
        self.child = Some(cmd.spawn().expect("start sidecar"));
        wait_ready(self.port, Instant::now() + Duration::from_secs(20));
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
        cairn_command("sidecar")
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

    /// The workspace's first snapshot: `initctl backup` of the pod's tree.
    fn backup_ws(&self) {
        let o = self.initctl(&["backup", self.ws().to_str().expect("utf-8")]);
        assert!(o.status.success(), "backup: {}", stderr(&o));
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

/// Waits until the sidecar on `port` answers `/readyz` with 200, failing at `deadline`.
fn wait_ready(port: u16, deadline: Instant) {
    while http_get(port, "/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "sidecar never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GET over HTTP/1.1; (status, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    http(port, "GET", path)
}

/// One HTTP/1.1 request without a body; (status, body).
fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
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
    // The daemon and the next pod's restore hold themselves to the writer grant of their
    // workspace (what a least-privilege credential allows): heartbeats, checkpoints and the
    // restore need nothing more.
    let grant = ("CAIRN_GRANT", "writer:agent");
    pod.start_env(
        &[
            "--interval",
            "0",
            "--log-format",
            "json",
            "--host",
            "pod-a",
            "--heartbeat-interval",
            "100ms",
        ],
        &[grant],
    );
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
    // The HTTP port (which the agent reaches over localhost) is read-only: no method but GET is
    // served, no path but health, readiness and metrics, and nothing it is sent takes a
    // checkpoint; control goes through the Unix socket only.
    for (method, path) in [
        ("POST", "/healthz"),
        ("POST", "/flush"),
        ("GET", "/flush"),
        ("POST", "/checkpoint"),
        ("PUT", "/metrics"),
        ("DELETE", "/readyz"),
        ("POST", "/"),
    ] {
        let (status, _) = http(pod.port, method, path);
        assert!(
            status == 404 || status == 405,
            "{method} {path} answered {status}"
        );
    }
    let listed = pod.initctl(&["snapshots", "--workspace", "agent", "--json"]);
    assert_eq!(stdout(&listed).trim(), "[]", "an HTTP request took a checkpoint");
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
    let mut env = pod.env();
    env.push((grant.0, grant.1.into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let o = initctl(&["restore", out.to_str().expect("utf-8")], &env);
    assert!(
        o.status.success(),
        "restore within the writer grant: {}",
        stderr(&o)
    );
    assert_same_tree(&pod.ws(), &out);
    // The same grant refuses another workspace's backup before anything reaches the store,
    // naming the key and the grant.
    let mut other = env.clone();
    other.retain(|(k, _)| *k != "CAIRN_WORKSPACE");
    other.push(("CAIRN_WORKSPACE", "someone-else"));
    let o = initctl(&["backup", out.to_str().expect("utf-8")], &other);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("access denied") && stderr(&o).contains("writer:agent"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn concurrent_flushes_share_one_checkpoint_with_hooks_and_metrics() {
    let mut pod = Pod::new();
    // A file stamped within a timestamp tick of its read is re-read by the next backup; let the
    // fresh workspace age past it, so the last assertion can say "nothing re-read".
    std::thread::sleep(Duration::from_millis(200));
    let hooks = pod.path("hooks/hooks.log");
    let cwd = pod.path("hooks/hook-cwd.log");
    let pre = format!(
        "echo pre-$CAIRN_HOOK >> {}; pwd -P > {}; sleep 1",
        hooks.display(),
        cwd.display()
    );
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
    // Hooks run in the workspace root, entered through the sidecar's own descriptor.
    assert_eq!(
        std::fs::read_to_string(&cwd).expect("hook cwd").trim(),
        pod.ws().canonicalize().expect("ws").to_str().expect("utf-8")
    );
    let m = pod.metrics();
    assert!(
        m.contains(r#"cairn_checkpoints_total{kind="flush",result="ok"} 1"#),
        "{m}"
    );
    assert!(m.contains("cairn_last_success_timestamp_seconds"), "{m}");
    assert!(m.contains("cairn_uploaded_bytes_total"), "{m}");
    let puts = m
        .lines()
        .find(|l| l.starts_with(r#"cairn_store_requests_total{op="put"}"#))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(
        puts.is_some_and(|n| n >= 4),
        "packs, record, manifest, head were put: {m}"
    );

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
fn hooks_get_no_store_credentials_and_are_killed_with_their_children_past_their_timeout() {
    // A credential name in --hook-env is refused before anything runs.
    let o = cairn_command("sidecar")
        .args(["run", "--hook-env", "PGPASSWORD,AWS_SECRET_ACCESS_KEY"])
        .args([
            "--store",
            "/nonexistent",
            "--workspace",
            "w",
            "--source",
            "/nonexistent",
        ])
        .output()
        .expect("sidecar");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("AWS_SECRET_ACCESS_KEY") && stderr(&o).contains("never passed to hooks"),
        "{}",
        stderr(&o)
    );

    let mut pod = Pod::new();
    let (env_out, flag, pid) = (
        pod.path("hooks/hook.env"),
        pod.path("hang"),
        pod.path("hooks/child.pid"),
    );
    let id_out = pod.path("hooks/id");
    use std::os::unix::fs::PermissionsExt;
    // The repository's key file as a pod mounts its Secret: root's, mode 0400.
    let secret = pod.path("secret.key");
    std::fs::copy(test_key(), &secret).expect("copy the key file");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o400)).expect("chmod");
    let pre = format!(
        "env > {env}; id -u > {id}; cat /proc/1/environ /proc/$PPID/environ {secret} >> {id} 2>&1; \
         if [ -e {flag} ]; then sleep 600 & echo $! > {pid}; wait; fi",
        env = env_out.display(),
        id = id_out.display(),
        secret = secret.display(),
        flag = flag.display(),
        pid = pid.display()
    );
    pod.start_env(
        &["--interval", "0", "--log-format", "text"],
        &[
            ("CAIRN_PRE_HOOK", &pre),
            ("CAIRN_HOOK_TIMEOUT", "1s"),
            ("CAIRN_HOOK_ENV", "PGPASSWORD"),
            ("AWS_SECRET_ACCESS_KEY", "store-secret-sentinel"),
            ("GOOGLE_APPLICATION_CREDENTIALS", "/secret/sentinel.json"),
            ("PGPASSWORD", "hook-may-see-this"),
            ("CAIRN_KEY_FILE", secret.to_str().expect("utf-8")),
        ],
    );
    let o = pod.flush();
    assert!(o.status.success(), "{}", json_line(&o));
    let env = std::fs::read_to_string(&env_out).expect("the hook ran");
    assert!(
        !env.contains("sentinel"),
        "a store credential reached the hook: {env}"
    );
    assert!(
        !env.contains("CAIRN_STORE") && !env.contains("CAIRN_KEY_FILE"),
        "{env}"
    );
    assert!(env.contains("PGPASSWORD=hook-may-see-this"), "{env}");
    assert!(env.contains("CAIRN_HOOK=pre"), "{env}");
    // As nobody, without the sidecar's privileges: its environment is not readable either.
    let id = std::fs::read_to_string(&id_out).expect("id ran");
    assert_eq!(id.lines().next(), Some("65534"), "{id}");
    assert!(
        !id.contains("sentinel"),
        "the hook read the sidecar's environment: {id}"
    );
    let secrets = [
        std::fs::read(test_key()).expect("key file"),
        crate::encryption::root_key_of(Path::new(&pod.store()), test_key()),
    ];
    crate::encryption::assert_no_key_material("the hook", id.as_bytes(), &secrets);
    crate::encryption::assert_no_key_material("the hook's environment", env.as_bytes(), &secrets);

    // A hook that hangs, with a child in the background: the checkpoint fails at the timeout, and
    // the child dies with the hook.
    write(&flag, b"");
    let t = Instant::now();
    let o = pod.flush();
    assert!(!o.status.success());
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    let v = json_line(&o);
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("did not finish within")),
        "{v}"
    );
    let child: i32 = std::fs::read_to_string(&pid)
        .expect("the hook's child started")
        .trim()
        .parse()
        .expect("pid");
    let deadline = Instant::now() + Duration::from_secs(10);
    // Gone, or a zombie nobody reaps (PID 1 of this machine does not): either way not running.
    while std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    }) {
        assert!(Instant::now() < deadline, "the hook's child {child} still runs");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::remove_file(&flag).expect("rm");
    let metrics = pod.metrics();
    let o = pod.stop(rustix::process::Signal::TERM);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut out = o.stdout.clone();
    out.extend_from_slice(&o.stderr);
    out.extend_from_slice(metrics.as_bytes());
    crate::encryption::assert_no_key_material("the sidecar's logs and metrics", &out, &secrets);
    // Its heartbeat is sealed: the bucket does not say what the pod is doing.
    let beats = walk(&pod.dir.path().join("store/heartbeats"));
    assert!(!beats.is_empty(), "no heartbeat written");
    for b in beats {
        let bytes = std::fs::read(&b).expect("heartbeat");
        assert!(
            !String::from_utf8_lossy(&bytes).contains("\"state\""),
            "{} is readable",
            b.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
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
    let mut cmd = cairn_command("initctl");
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
    let o = cairn_command("sidecar")
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
    let o = cairn_command("sidecar")
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

/// Another sidecar on the pod's repository: its own volume, host name, socket and port.
struct Sidecar {
    socket: PathBuf,
    child: Option<Child>,
}

impl Sidecar {
    fn start(pod: &Pod, host: &str, source: &Path) -> Sidecar {
        let port = free_port();
        let socket = pod.path(&format!("{host}.sock"));
        let mut cmd = cairn_command("sidecar");
        cmd.arg("run")
            .arg("--source")
            .arg(source)
            .args(["--interval", "0", "--heartbeat-interval", "1s", "--host", host])
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--control-socket")
            .arg(&socket)
            .arg("--cache-dir")
            .arg(pod.path(&format!("cache-{host}")))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.envs(pod.env());
        let child = Some(cmd.spawn().expect("start sidecar"));
        let deadline = Instant::now() + Duration::from_secs(20);
        wait_ready(port, deadline);
        // Ready; wait for its first heartbeat so other pods can see it.
        loop {
            let o = pod.initctl(&["heartbeats", "--workspace", "agent"]);
            if stdout(&o).contains(host) {
                break;
            }
            assert!(Instant::now() < deadline, "no heartbeat from {host}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Sidecar { socket, child }
    }

    fn flush(&self) -> serde_json::Value {
        let o = cairn_command("sidecar")
            .arg("flush")
            .arg("--control-socket")
            .arg(&self.socket)
            .output()
            .expect("sidecar flush");
        assert!(o.status.success(), "flush: {}", stderr(&o));
        json_line(&o)
    }

    fn stop(&mut self, signal: rustix::process::Signal) -> Output {
        let child = self.child.take().expect("running");
        rustix::process::kill_process(rustix::process::Pid::from_child(&child), signal).expect("signal");
        child.wait_with_output().expect("wait")
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Pod {
    /// The init container: `initctl restore --json` of the latest snapshot into `vol`.
    fn init(&self, vol: &Path, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["restore", "--json"];
        args.extend_from_slice(extra);
        args.push(vol.to_str().expect("utf-8"));
        let o = self.initctl(&args);
        assert!(o.status.success(), "init: {}", stderr(&o));
        serde_json::from_str(&stdout(&o)).expect("json")
    }

    fn head(&self) -> String {
        let o = self.initctl(&["snapshots", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
        let heads: Vec<_> = v
            .as_array()
            .expect("list")
            .iter()
            .filter(|s| s["head"] == true)
            .map(|s| s["id"].as_str().expect("id").to_string())
            .collect();
        assert_eq!(heads.len(), 1, "{v}");
        heads[0].clone()
    }
}

fn marker(vol: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(vol.join(".cairn-snapshot")).expect("marker")).expect("json")
}

#[test]
fn node_loss_keeps_every_edit_and_the_init_step_rerun_is_a_no_op() {
    let pod = Pod::new();
    pod.backup_ws();
    let vol = pod.path("vol");
    assert_eq!(pod.init(&vol, &[])["action"], "restore");
    assert_eq!(pod.init(&vol, &[])["action"], "none");

    // The sidecar checkpoints; the marker follows it.
    let mut sc = Sidecar::start(&pod, "pod-a", &vol);
    let cp = sc.flush();
    assert_eq!(cp["ok"], true, "{cp}");
    assert_eq!(marker(&vol)["snapshot"], cp["snapshot"]);
    assert_eq!(
        pod.init(&vol, &["--host", "pod-a"])["action"],
        "none",
        "in sync after a checkpoint"
    );

    // Edits after the last checkpoint, then the node dies: SIGKILL, no final snapshot.
    write(&vol.join("src/after-checkpoint.rs"), b"fn unsaved() {}\n");
    std::fs::remove_file(vol.join("empty")).expect("rm");
    std::fs::rename(vol.join("src"), vol.join("source")).expect("mv");
    let _ = sc.stop(rustix::process::Signal::KILL);
    let edited = pod.path("edited");
    copy_tree(&vol, &edited);

    // The pod comes back on the surviving volume (same pod name): the edits are saved, not lost.
    let v = pod.init(&vol, &["--host", "pod-a"]);
    assert_eq!(v["action"], "backup", "{v}");
    assert_eq!(v["is_head"], true, "{v}");
    assert_same_tree(&edited, &vol);
    let again = pod.path("again");
    pod.restore_to(&again);
    assert_same_tree(&edited, &again);
    assert_eq!(pod.init(&vol, &["--host", "pod-a"])["action"], "none");
    // --local-changes keep starts on the volume as it is, and says what is unsaved.
    write(&vol.join("later.txt"), b"later\n");
    let v = pod.init(&vol, &["--local-changes", "keep"]);
    assert_eq!(v["action"], "kept", "{v}");
    assert!(
        v["message"].as_str().expect("message").contains("later.txt"),
        "{v}"
    );
    for d in [&vol, &edited, &again, &pod.ws()] {
        make_writable(d);
    }
}

#[test]
fn a_volume_one_session_behind_fetches_only_what_differs() {
    let pod = Pod::new();
    pod.backup_ws();
    let (a, b) = (pod.path("vol-a"), pod.path("vol-b"));
    pod.init(&a, &[]);
    pod.init(&b, &[]);
    // Another pod works on b: edits, a new file, a deletion, a renamed directory.
    let mut big = std::fs::read(b.join("assets/big.bin")).expect("big");
    big.extend_from_slice(b"appended by the agent");
    write(&b.join("assets/big.bin"), &big);
    write(&b.join("new.txt"), b"new\n");
    std::fs::remove_file(b.join("empty")).expect("rm");
    std::fs::rename(b.join("assets"), b.join("media")).expect("mv");
    let o = pod.initctl(&["backup", b.to_str().expect("utf-8")]);
    assert!(o.status.success(), "{}", stderr(&o));

    let v = pod.init(&a, &[]);
    assert_eq!(v["action"], "update", "{v}");
    assert_eq!(v["update"], true, "{v}");
    let (fetched, reused) = (
        v["fetched"].as_u64().expect("n"),
        v["reused"].as_u64().expect("n"),
    );
    // The renamed directory's unchanged file comes from disk; the edited one (a single chunk)
    // and the new one are all that is fetched, out of a 7 MiB workspace.
    assert!(reused >= 300 << 10, "renamed files come from disk: {v}");
    assert!(
        fetched < big.len() as u64 + (64 << 10),
        "only what differs is fetched: {v}"
    );
    assert_same_tree(&b, &a);
    assert!(!a.join(".cairn-staging").exists() && !a.join(".cairn-restoring").exists());
    assert_eq!(pod.init(&a, &[])["action"], "none");

    // The restore seeded the stat cache: a backup of the volume right after reads no file.
    let o = pod.initctl(&["backup", "--json", a.to_str().expect("utf-8")]);
    let r: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(r["files_read"], 0, "{r}");
    for d in [&a, &b, &pod.ws()] {
        make_writable(d);
    }
}

#[test]
fn an_interrupted_restore_is_finished_by_the_next_run() {
    let pod = Pod::new();
    pod.backup_ws();
    let vol = pod.path("vol");
    let mut cmd = cairn_command("initctl");
    cmd.args(["restore", vol.to_str().expect("utf-8")])
        .envs(pod.env())
        .env("CAIRN_FAULTS", "latency=150ms")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("initctl");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !vol.join(".cairn-restoring").exists() {
        assert!(Instant::now() < deadline, "the restore never began");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");
    assert!(
        cairn_engine::read_marker(&vol).is_none(),
        "an interrupted restore never looks finished"
    );
    // Something the snapshot does not have, left on the half-restored volume.
    write(&vol.join("leftover"), b"x");

    let v = pod.init(&vol, &[]);
    assert_eq!(v["action"], "restore", "{v}");
    assert!(v["notes"].to_string().contains("interrupted"), "{v}");
    assert_same_tree(&pod.ws(), &vol);
    assert!(!vol.join(".cairn-restoring").exists());
    make_writable(&vol);
    make_writable(&pod.ws());
}

#[test]
fn a_new_pod_waits_for_the_previous_pods_final_snapshot_then_starts_degraded_if_it_never_comes() {
    let pod = Pod::new();
    pod.backup_ws();
    let old = pod.path("old");
    pod.init(&old, &[]);
    let mut sc = Sidecar::start(&pod, "pod-a", &old);
    write(&old.join("last-words.txt"), b"sealed by the final flush\n");

    // The replacement pod starts while the old one is still terminating.
    let new = pod.path("new");
    let mut cmd = cairn_command("initctl");
    cmd.args(["restore", "--json", "--host", "pod-b", "--wait-previous", "30s"])
        .arg(&new)
        .envs(pod.env())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let waiting = cmd.spawn().expect("initctl");
    std::thread::sleep(Duration::from_millis(800));
    let out = sc.stop(rustix::process::Signal::TERM);
    assert!(out.status.success(), "final flush: {}", stderr(&out));
    let o = waiting.wait_with_output().expect("wait");
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(
        (v["action"].as_str(), v["degraded"].as_bool()),
        (Some("restore"), Some(false)),
        "{v}"
    );
    assert!(
        v["notes"].to_string().contains("sealed its final snapshot"),
        "{v}"
    );
    assert_eq!(
        std::fs::read(new.join("last-words.txt")).expect("the final snapshot was restored"),
        b"sealed by the final flush\n"
    );

    // A pod that never seals (it keeps running): the wait is bounded and the start degraded.
    let _still = Sidecar::start(&pod, "pod-b", &new);
    let third = pod.path("third");
    let v = pod.init(&third, &["--host", "pod-c", "--wait-previous", "1s"]);
    assert_eq!(
        (v["action"].as_str(), v["degraded"].as_bool()),
        (Some("restore"), Some(true)),
        "{v}"
    );
    assert!(third.join("last-words.txt").exists());
    for d in [&old, &new, &third, &pod.ws()] {
        make_writable(d);
    }
}

#[test]
fn two_pods_of_one_workspace_never_hide_each_others_sealed_snapshots() {
    let pod = Pod::new();
    pod.backup_ws();
    let (a, b) = (pod.path("vol-a"), pod.path("vol-b"));
    pod.init(&a, &[]);
    pod.init(&b, &[]);
    let (sa, sb) = (
        Sidecar::start(&pod, "pod-a", &a),
        Sidecar::start(&pod, "pod-b", &b),
    );
    let mut sealed = Vec::new();
    for round in 0..4 {
        write(
            &a.join(format!("a-{round}.txt")),
            format!("a {round}\n").as_bytes(),
        );
        write(
            &b.join(format!("b-{round}.txt")),
            format!("b {round}\n").as_bytes(),
        );
        let (ra, rb) = std::thread::scope(|s| {
            let ha = s.spawn(|| sa.flush());
            let hb = s.spawn(|| sb.flush());
            (ha.join().expect("a"), hb.join().expect("b"))
        });
        let snap = |r: &serde_json::Value| r["snapshot"].as_str().expect("sealed").to_string();
        let (ia, ib) = (snap(&ra), snap(&rb));
        // The head is one of the two and never the older (times are listed to the second); the
        // other stays listed and restorable.
        let o = pod.initctl(&["snapshots", "--json"]);
        let list: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
        let time = |id: &str| {
            list.as_array()
                .expect("list")
                .iter()
                .find(|s| s["id"] == id)
                .unwrap_or_else(|| panic!("{id} is listed"))["time"]
                .as_str()
                .expect("time")
                .to_string()
        };
        let head = pod.head();
        let other = if head == ia {
            &ib
        } else {
            assert_eq!(head, ib, "round {round}: the head is one of the two: {ra} {rb}");
            &ia
        };
        assert!(
            time(&head) >= time(other),
            "round {round}: the head moved back in time"
        );
        sealed.push((ia, a.clone()));
        sealed.push((ib, b.clone()));
    }
    // Every sealed snapshot restores; the last of each pod equals its volume.
    for (id, vol) in sealed.iter().rev().take(2) {
        let out = pod.path(&format!("check-{}", &id[..8]));
        let o = pod.initctl(&["restore", "--snapshot", id, out.to_str().expect("utf-8")]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_same_tree(vol, &out);
        make_writable(&out);
    }
    for d in [&a, &b, &pod.ws()] {
        make_writable(d);
    }
}

/// Copies a tree with `cp -a` (modes, times, links).
fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(st.success());
}

#[test]
fn init_retries_a_store_that_refuses_it_while_credentials_warm_up() {
    let pod = Pod::new();
    pod.backup_ws();
    let run = |faults: &str, wait: &str, vol: &Path| {
        let mut env = pod.env();
        env.push(("CAIRN_FAULTS", faults.into()));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        initctl(
            &["restore", "--store-wait", wait, vol.to_str().expect("utf-8")],
            &env,
        )
    };
    // Every request is refused (403) for the first 1.5 s of the process, then the store answers.
    let vol = pod.path("vol");
    let o = run("outage=1500ms", "30s", &vol);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("store not reachable yet"), "{}", stderr(&o));
    assert_same_tree(&pod.ws(), &vol);
    // A wait shorter than the outage fails, naming the refusal, and leaves no volume behind.
    let short = pod.path("short");
    let o = run("outage=10s", "300ms", &short);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("credentials not ready"), "{}", stderr(&o));
    assert!(!short.exists());
    make_writable(&vol);
    make_writable(&pod.ws());
}

/// The example manifests parse and wire the pod as deploy/README.md says (the YAML is checked with
/// PyYAML from the test servers' virtualenv).
#[test]
fn deploy_manifests_parse_and_wire_the_pod_as_documented() {
    let check = r#"
import sys, yaml
root = sys.argv[1]
pod = yaml.safe_load(open(root + "/deploy/pod.yaml"))
spec = pod["spec"]
init = {c["name"]: c for c in spec["initContainers"]}
restore, sidecar = init["restore"], init["cairn-sidecar"]
env = lambda c: {e["name"]: e.get("value") for e in c["env"]}
assert [c["name"] for c in spec["initContainers"]] == ["restore", "cairn-sidecar"], "restore runs first"
assert restore["command"] == ["initctl", "restore"] and "restartPolicy" not in restore
assert env(restore)["CAIRN_TARGET"] == "/workspace"
assert sidecar["restartPolicy"] == "Always", "a native sidecar"
assert sidecar["command"] == ["tini", "--", "sidecar", "run"], "an init reaps what hooks leave"
assert sidecar["lifecycle"]["preStop"]["exec"]["command"] == ["sidecar", "flush"]
assert env(restore)["CAIRN_CACHE_DIR"] == env(sidecar)["CAIRN_CACHE_DIR"], "the restore seeds the sidecar's cache"
deadline = int(env(sidecar)["CAIRN_FLUSH_DEADLINE"].rstrip("s"))
assert deadline < spec["terminationGracePeriodSeconds"], "the flush ends before SIGKILL"
assert int(env(restore)["CAIRN_WAIT_PREVIOUS"].rstrip("s")) >= spec["terminationGracePeriodSeconds"]
assert env(sidecar)["CAIRN_CONTROL_SOCKET"].startswith("/run/cairn/")
assert env(restore)["CAIRN_BROKER_URL"] == env(sidecar)["CAIRN_BROKER_URL"]
list(yaml.safe_load_all(open(root + "/deploy/serviceaccount.yaml")))
cron = yaml.safe_load(open(root + "/deploy/gc-cronjob.yaml"))
assert cron["spec"]["concurrencyPolicy"] == "Forbid"
gc = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
assert gc["command"] == ["initctl", "gc", "--tenants"] and env(gc)["CAIRN_GC_PROTECT"] == "6h"
print("ok")
"#;
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let root = Path::new(&dir).join("..");
    let o = Command::new(crate::support::servers::venv_python())
        .arg("-c")
        .arg(check)
        .arg(&root)
        .output()
        .expect("python");
    assert!(o.status.success() && stdout(&o).trim() == "ok", "{}", stderr(&o));
}
