//! `cairn-guard`, the agent container's entrypoint wrapper, as a real process: it starts the
//! agent's command only once the restore has written the ready file (after the completion
//! marker), forwards signals to it, exits with its status, gives up with a clear message after
//! its timeout, and starts nothing when stopped before the workspace is whole.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

fn guard(ready: &Path, timeout: &str, script: &str) -> Child {
    Command::new(bin_path("cairn-guard"))
        .arg("--ready")
        .arg(ready)
        .arg("--timeout")
        .arg(timeout)
        .args(["--", "sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cairn-guard")
}

fn wait_for(path: &Path, within: Duration) {
    let deadline = Instant::now() + within;
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: rustix::process::Signal) {
    rustix::process::kill_process(rustix::process::Pid::from_child(child), sig).expect("signal");
}

#[test]
fn the_guard_starts_the_agent_only_on_a_whole_workspace_and_passes_its_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store").display().to_string();
    let cache = dir.path().join("cache").display().to_string();
    let env = [
        ("CAIRN_STORE", store.as_str()),
        ("CAIRN_WORKSPACE", "w"),
        ("CAIRN_CACHE_DIR", cache.as_str()),
    ];
    let o = initctl(&["init"], &env);
    assert!(o.status.success(), "init: {}", stderr(&o));
    let src = dir.path().join("src");
    build_everything_tree(&src, 51);
    let o = initctl(&["backup", src.to_str().expect("utf-8")], &env);
    assert!(o.status.success(), "backup: {}", stderr(&o));

    let ws = dir.path().join("ws");
    let ready = dir.path().join("ready");
    let seen = dir.path().join("seen");
    // The agent counts the files it finds when it starts.
    let script = format!(
        "find {} -type f ! -name '.cairn-*' | wc -l > {}; exit 7",
        ws.display(),
        seen.display()
    );
    let mut g = guard(&ready, "30s", &script);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        g.try_wait().expect("try_wait").is_none(),
        "the guard ended before the workspace was ready"
    );
    assert!(!seen.exists(), "the agent started before the workspace was whole");

    // A symlink planted where the temporary ready file goes is replaced, never written through.
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"untouched").expect("victim");
    std::os::unix::fs::symlink(&victim, dir.path().join("ready.tmp")).expect("symlink");
    let o = initctl(
        &[
            "restore",
            "--ready-file",
            ready.to_str().expect("utf-8"),
            ws.to_str().expect("utf-8"),
        ],
        &env,
    );
    assert!(o.status.success(), "restore: {}", stderr(&o));
    assert_eq!(std::fs::read(&victim).expect("victim"), b"untouched");
    let out = g.wait_with_output().expect("guard");
    assert_eq!(
        out.status.code(),
        Some(7),
        "the agent's status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files = walk_files(&src);
    let counted: usize = std::fs::read_to_string(&seen)
        .expect("seen")
        .trim()
        .parse()
        .expect("count");
    assert_eq!(counted, files, "the agent started on a partial workspace");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&ready).expect("ready")).expect("json");
    assert_eq!(v["workspace"], "w");
    assert_eq!(v["snapshot"].as_str().map(str::len), Some(64), "{v}");

    // A later run removes the ready file first, so a stale one starts nothing: here the run
    // fails (no repository) and the file is gone.
    let empty = dir.path().join("no-store").display().to_string();
    let o = initctl(
        &[
            "restore",
            "--ready-file",
            ready.to_str().expect("utf-8"),
            ws.to_str().expect("utf-8"),
        ],
        &[
            ("CAIRN_STORE", empty.as_str()),
            ("CAIRN_WORKSPACE", "w"),
            ("CAIRN_STORE_WAIT", "0s"),
        ],
    );
    assert!(!o.status.success());
    assert!(
        !ready.exists(),
        "a stale ready file survived a restore that did not finish"
    );
    make_writable(&src);
    make_writable(&ws);
}

fn walk_files(root: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let t = e.file_type().expect("type");
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn the_guard_forwards_signals_and_reports_how_the_agent_ended() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ready = dir.path().join("ready");
    std::fs::write(&ready, b"{}").expect("ready");
    let started = dir.path().join("started");
    let g = guard(
        &ready,
        "10s",
        &format!(
            "trap 'exit 42' TERM; touch {}; while :; do sleep 0.05; done",
            started.display()
        ),
    );
    wait_for(&started, Duration::from_secs(10));
    signal(&g, rustix::process::Signal::TERM);
    let out = g.wait_with_output().expect("guard");
    assert_eq!(
        out.status.code(),
        Some(42),
        "SIGTERM reached the agent, which exited 42"
    );

    // Killed by a signal: 128 + the signal, as a shell reports it.
    let g = guard(&ready, "10s", "kill -9 $$");
    assert_eq!(g.wait_with_output().expect("guard").status.code(), Some(137));
}

#[test]
fn the_guard_gives_up_clearly_and_starts_nothing_when_the_workspace_never_comes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ready = dir.path().join("ready");
    let ran = dir.path().join("ran");
    let script = format!("touch {}", ran.display());

    let g = guard(&ready, "300ms", &script);
    let out = g.wait_with_output().expect("guard");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not ready") && err.contains(&ready.display().to_string()),
        "{err}"
    );

    // Stopped while waiting: it ends as a stopped process does and never starts the command.
    let g = guard(&ready, "30s", &script);
    std::thread::sleep(Duration::from_millis(200));
    signal(&g, rustix::process::Signal::TERM);
    assert_eq!(g.wait_with_output().expect("guard").status.code(), Some(143));
    assert!(!ran.exists(), "the command ran without a ready workspace");

    // Bad usage, and a command that does not exist.
    let o = Command::new(bin_path("cairn-guard")).output().expect("guard");
    assert_eq!(o.status.code(), Some(2));
    std::fs::write(&ready, b"{}").expect("ready");
    let o = Command::new(bin_path("cairn-guard"))
        .arg("--ready")
        .arg(&ready)
        .args(["--", "/nonexistent/agent"])
        .output()
        .expect("guard");
    assert_eq!(o.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/agent"));
}
