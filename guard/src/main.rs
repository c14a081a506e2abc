//! `cairn-guard [--ready FILE] [--timeout DURATION] -- COMMAND [ARGS...]`
//!
//! The agent container's entrypoint wrapper: waits until the Cairn side has made the workspace
//! whole (the ready file exists: written, atomically, after the restore's completion marker), then
//! runs the command with the container's stdio, forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1,
//! SIGUSR2 and SIGWINCH to it, and exits with its status (128 + the signal if a signal ended it).
//! A signal that arrives before the workspace is ready ends the guard without starting anything;
//! so does the timeout, with a message that says what it waited for.
//!
//! Flags may also come from `CAIRN_READY_FILE` and `CAIRN_GUARD_TIMEOUT` (`10m`, `30s`, `500ms`).
//! Exit codes: the command's; 1 timed out; 2 bad usage; 126/127 the command could not be started.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, Signal, SignalKind};

const USAGE: &str = "usage: cairn-guard [--ready FILE] [--timeout DURATION] -- COMMAND [ARGS...]";

fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

struct Args {
    ready: PathBuf,
    timeout: Duration,
    command: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut ready = std::env::var_os("CAIRN_READY_FILE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let mut timeout = match std::env::var("CAIRN_GUARD_TIMEOUT") {
        Ok(v) if !v.is_empty() => Some(
            parse_duration(&v)
                .ok_or_else(|| format!("CAIRN_GUARD_TIMEOUT={v:?}: expected a duration like 10m"))?,
        ),
        _ => None,
    };
    let mut it = std::env::args().skip(1);
    let mut command = Vec::new();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--" => {
                command.extend(it.by_ref());
                break;
            }
            "--ready" => ready = Some(it.next().ok_or("--ready needs a file")?.into()),
            "--timeout" => {
                let v = it.next().ok_or("--timeout needs a duration")?;
                timeout = Some(
                    parse_duration(&v)
                        .ok_or_else(|| format!("--timeout {v:?}: expected a duration like 10m"))?,
                );
            }
            "-h" | "--help" => return Err(String::new()),
            _ if a.starts_with('-') => return Err(format!("unknown flag {a}")),
            _ => {
                command.push(a);
                command.extend(it.by_ref());
                break;
            }
        }
    }
    if command.is_empty() {
        return Err("no command to run".into());
    }
    Ok(Args {
        ready: ready.unwrap_or_else(|| PathBuf::from("/cairn-ready/ready")),
        timeout: timeout.unwrap_or(Duration::from_secs(600)),
        command,
    })
}

/// The signals forwarded to the command.
const FORWARDED: [(i32, &str); 7] = [
    (15, "TERM"),
    (2, "INT"),
    (1, "HUP"),
    (3, "QUIT"),
    (10, "USR1"),
    (12, "USR2"),
    (28, "WINCH"),
];

async fn next_signal(streams: &mut [(i32, Signal)]) -> i32 {
    let futs = streams.iter_mut().map(|(n, s)| {
        let n = *n;
        Box::pin(async move {
            s.recv().await;
            n
        })
    });
    futures_select(futs.collect()).await
}

/// The first of `futs` to finish.
async fn futures_select<F: std::future::Future<Output = i32> + Unpin>(mut futs: Vec<F>) -> i32 {
    std::future::poll_fn(move |cx| {
        for f in futs.iter_mut() {
            if let std::task::Poll::Ready(n) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready(n);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

async fn run(args: Args) -> u8 {
    let mut streams: Vec<(i32, Signal)> = Vec::new();
    for (n, name) in FORWARDED {
        match signal(SignalKind::from_raw(n)) {
            Ok(s) => streams.push((n, s)),
            Err(e) => eprintln!("cairn-guard: cannot handle SIG{name}: {e}"),
        }
    }
    // Wait for the workspace.
    let started = Instant::now();
    let mut announced = false;
    while !args.ready.exists() {
        if started.elapsed() >= args.timeout {
            eprintln!(
                "cairn-guard: the workspace is not ready after {:?} ({} does not exist): is the Cairn sidecar \
                 bound to a workspace, and did its restore finish? Not starting {}",
                args.timeout,
                args.ready.display(),
                args.command[0]
            );
            return 1;
        }
        if !announced && started.elapsed() >= Duration::from_secs(2) {
            eprintln!(
                "cairn-guard: waiting for the workspace ({})",
                args.ready.display()
            );
            announced = true;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
            n = next_signal(&mut streams) => {
                eprintln!("cairn-guard: signal {n} before the workspace was ready; not starting {}", args.command[0]);
                return 128 + n as u8;
            }
        }
    }
    let mut child = match tokio::process::Command::new(&args.command[0])
        .args(&args.command[1..])
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cairn-guard: cannot start {}: {e}", args.command[0]);
            return if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
        }
    };
    let pid = child.id();
    loop {
        tokio::select! {
            status = child.wait() => {
                return match status {
                    Ok(s) => {
                        use std::os::unix::process::ExitStatusExt;
                        match (s.code(), s.signal()) {
                            (Some(c), _) => u8::try_from(c).unwrap_or(1),
                            (None, Some(sig)) => 128u8.saturating_add(sig as u8),
                            _ => 1,
                        }
                    }
                    Err(e) => {
                        eprintln!("cairn-guard: waiting for {}: {e}", args.command[0]);
                        1
                    }
                };
            }
            n = next_signal(&mut streams) => {
                forward(pid, n);
            }
        }
    }
}

/// Sends signal `n` to the command (process `pid`).
fn forward(pid: Option<u32>, n: i32) {
    let pid = pid
        .and_then(|p| i32::try_from(p).ok())
        .and_then(rustix::process::Pid::from_raw);
    if let (Some(pid), Some(sig)) = (pid, rustix::process::Signal::from_named_raw(n)) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("cairn-guard: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairn-guard: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    ExitCode::from(rt.block_on(run(args)))
}
