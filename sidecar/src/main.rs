//! `sidecar`: Cairn's in-pod daemon.
//!
//! `sidecar run` lives as long as the pod: it takes an incremental checkpoint of the workspace
//! every `--interval` (with jitter, so a fleet does not fire at once), serves `/healthz`,
//! `/readyz` and Prometheus `/metrics`, and on SIGTERM takes a final checkpoint under
//! `--flush-deadline` and exits with its result. `sidecar flush` (for a preStop exec hook) asks the
//! running daemon for a final checkpoint over a Unix socket and waits for it; flushes that arrive
//! while one runs share it.

mod daemon;
mod hook;
mod http;
mod metrics;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "sidecar",
    version,
    about = "Cairn in-pod daemon: interval checkpoints, final flush on SIGTERM, health and metrics"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon (the container's main process).
    Run(Box<RunArgs>),
    /// Ask the running daemon for a final checkpoint and wait for it (preStop hook).
    Flush(FlushArgs),
}

/// How the daemon runs.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The repository: a directory, file://, s3:// or gs:// URL.
    #[arg(long, env = "CAIRN_STORE")]
    pub store: String,
    /// The key file of an encrypted repository (a mounted Kubernetes Secret): at least 32 random
    /// bytes. Hooks never see it: `CAIRN_` variables are not passed to them.
    #[arg(long, env = "CAIRN_KEY_FILE")]
    pub key_file: Option<std::path::PathBuf>,
    /// The workspace name.
    #[arg(long, short, env = "CAIRN_WORKSPACE")]
    pub workspace: String,
    /// The workspace directory (the shared volume).
    #[arg(long, env = "CAIRN_SOURCE")]
    pub source: PathBuf,
    /// Where the local index lives (outside the workspace; the init container's cache dir).
    #[arg(long, env = "CAIRN_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Time between checkpoints, e.g. 5m; 0 turns interval checkpoints off.
    #[arg(long, env = "CAIRN_INTERVAL", default_value = "5m", value_parser = cairn_engine::parse_duration_arg)]
    pub interval: Duration,
    /// Spread of each interval, as a fraction (0.1 = plus or minus 10 %).
    #[arg(long, env = "CAIRN_JITTER", default_value_t = 0.1)]
    pub jitter: f64,
    /// Deadline of the final checkpoint on SIGTERM or flush; keep it under the pod's
    /// terminationGracePeriodSeconds.
    #[arg(long, env = "CAIRN_FLUSH_DEADLINE", default_value = "25s", value_parser = cairn_engine::parse_duration_arg)]
    pub flush_deadline: Duration,
    /// Address of the health and metrics server.
    #[arg(long, env = "CAIRN_LISTEN", default_value = "0.0.0.0:9090")]
    pub listen: String,
    /// Unix socket `sidecar flush` talks to.
    #[arg(long, env = "CAIRN_CONTROL_SOCKET", default_value = "/tmp/cairn-sidecar.sock")]
    pub control_socket: PathBuf,
    /// Shell command run before each checkpoint (e.g. a database checkpoint); if it fails, the
    /// checkpoint fails.
    #[arg(long, env = "CAIRN_PRE_HOOK")]
    pub pre_hook: Option<String>,
    /// Shell command run after each checkpoint, whatever its outcome.
    #[arg(long, env = "CAIRN_POST_HOOK")]
    pub post_hook: Option<String>,
    /// The longest a hook may run; past it, it and every process it started are killed and (for
    /// the pre-hook) the checkpoint fails.
    #[arg(long, env = "CAIRN_HOOK_TIMEOUT", default_value = "30s", value_parser = cairn_engine::parse_duration_arg)]
    pub hook_timeout: Duration,
    /// Who hooks run as: UID[:GID], default nobody (65534); 0 runs them with all the sidecar's
    /// privileges.
    #[arg(long, env = "CAIRN_HOOK_USER", default_value = "65534:65534")]
    pub hook_user: crate::hook::HookUser,
    /// Names of variables passed to hooks besides PATH, LANG, LC_ALL, TZ and HOSTNAME
    /// (comma-separated); the store's (AWS_*, GOOGLE_*, CAIRN_*) never are.
    #[arg(long, env = "CAIRN_HOOK_ENV", value_delimiter = ',')]
    pub hook_env: Vec<String>,
    /// Freeze the workspace's file system while a checkpoint fixes its instant: auto (where the
    /// workspace is a file system of its own), always, or never.
    #[arg(long, env = "CAIRN_FREEZE", default_value = "auto")]
    pub freeze: cairn_engine::FreezeMode,
    /// The longest a freeze may last; past it the file system is thawed and the checkpoint reads
    /// the volume live.
    #[arg(long, env = "CAIRN_FREEZE_DEADLINE", default_value = "2s", value_parser = cairn_engine::parse_duration_arg)]
    pub freeze_deadline: Duration,
    /// Before freezing, read what changed since the last checkpoint live, so the file system stays
    /// frozen only to copy what changed since (false: everything changed is copied frozen).
    #[arg(long, env = "CAIRN_PREPASS", default_value_t = true, action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub prepass: bool,
    /// Time between heartbeats (`heartbeats/<workspace>/<host>` in the store); 0 turns them off.
    #[arg(long, env = "CAIRN_HEARTBEAT_INTERVAL", default_value = "60s", value_parser = cairn_engine::parse_duration_arg)]
    pub heartbeat_interval: Duration,
    /// This pod's name in heartbeats and snapshots (default: $HOSTNAME, the pod name).
    #[arg(long, env = "CAIRN_HOST")]
    pub host: Option<String>,
    /// Log format on stderr: json (for pods) or text.
    #[arg(long, env = "CAIRN_LOG_FORMAT", default_value = "json")]
    pub log_format: String,
}

#[derive(Args, Debug)]
struct FlushArgs {
    /// Unix socket of the running daemon.
    #[arg(long, env = "CAIRN_CONTROL_SOCKET", default_value = "/tmp/cairn-sidecar.sock")]
    control_socket: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cairn_engine::raise_fd_limit();
    cairn_engine::no_core_dumps();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sidecar: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.cmd {
        Command::Run(args) => {
            init_logging(&args.log_format);
            match rt.block_on(daemon::run(*args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "sidecar stopped with an error");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Flush(args) => match rt.block_on(daemon::request_flush(&args.control_socket)) {
            Ok((ok, line)) => {
                println!("{line}");
                if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("sidecar flush: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.with_target(false).init();
    }
}

impl RunArgs {
    /// Where the repository's key comes from.
    pub fn keys(&self) -> cairn_engine::KeySource {
        cairn_engine::KeySource::from_path(self.key_file.clone())
    }
}
