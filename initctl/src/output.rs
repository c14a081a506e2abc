//! Reporting: logs, progress bars, human and JSON output, exit codes.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use cairn_engine::{Error, Progress};
use indicatif::{ProgressBar, ProgressStyle};

use crate::{exit, Global};

/// Logs go to stderr: text for people, JSON for pods (`--log-format json`). `RUST_LOG` overrides
/// the level (default `warn`).
pub fn init_logging(g: &Global) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if g.log_format == "json" {
        builder.json().init();
    } else {
        builder.with_target(false).init();
    }
}

/// Maps an error to an exit code by its engine cause.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    match e.downcast_ref::<Error>() {
        Some(Error::NoRepository { .. }) => exit::NO_REPOSITORY,
        Some(Error::Mismatch { .. }) => exit::VERIFY_FAILED,
        _ => exit::FAILED,
    }
}

/// A progress bar on a TTY, fed from the engine's counters; nothing otherwise.
pub struct Bar {
    bar: Option<ProgressBar>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Bar {
    /// Starts a bar that shows `what` and the counters.
    pub fn start(g: &Global, what: &'static str, progress: Arc<Progress>) -> Bar {
        if g.quiet || g.json || !std::io::stderr().is_terminal() {
            return Bar {
                bar: None,
                task: None,
            };
        }
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {prefix} {msg} [{elapsed_precise}] {binary_bytes_per_sec}",
            )
            .expect("invariant: template is valid"),
        );
        bar.set_prefix(what);
        let b = bar.clone();
        let task = tokio::spawn(async move {
            loop {
                let s = progress.snapshot();
                let total = if s.total_bytes > 0 {
                    format!(" / {}", indicatif::HumanBytes(s.total_bytes))
                } else {
                    String::new()
                };
                b.set_position(s.bytes);
                b.set_message(format!(
                    "{} entries, {}{total}, {} transferred",
                    s.entries,
                    indicatif::HumanBytes(s.bytes),
                    indicatif::HumanBytes(s.transferred)
                ));
                b.tick();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Bar {
            bar: Some(bar),
            task: Some(task),
        }
    }

    /// Removes the bar.
    pub fn finish(self) {
        if let Some(t) = self.task {
            t.abort();
        }
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}

/// Human-readable bytes.
pub fn bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

/// Prints a JSON value on stdout.
pub fn json(v: &serde_json::Value) {
    println!("{v}");
}

/// Throughput in MB/s (decimal) of `n` bytes over `d`.
pub fn mbps(n: u64, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 {
        n as f64 / s / 1e6
    } else {
        0.0
    }
}
