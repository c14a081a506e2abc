//! `initctl`: the init-container restore and the operator CLI of Cairn.
//!
//! Thin by design: parse flags (every one also read from the environment), call the engine, report
//! for humans or as JSON, and map errors to exit codes.

mod cmd;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, Parser, Subcommand};

/// Exit codes, documented in the README.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The command failed.
    pub const FAILED: u8 = 1;
    /// Bad usage (from clap).
    pub const USAGE: u8 = 2;
    /// A snapshot was sealed, but some entries could not be read and were left out.
    pub const INCOMPLETE: u8 = 3;
    /// Verification found damage or a mismatch (check, drill).
    pub const VERIFY_FAILED: u8 = 4;
    /// No repository at the given store.
    pub const NO_REPOSITORY: u8 = 10;
}

#[derive(Parser, Debug)]
#[command(
    name = "initctl",
    version,
    about = "Cairn: content-addressed workspace backup and restore"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    cmd: Command,
}

/// Flags every command takes.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// The repository: a directory path, file://, s3://BUCKET[/PREFIX] or gs://BUCKET[/PREFIX].
    #[arg(
        long,
        global = true,
        env = "CAIRN_STORE",
        default_value = "",
        hide_default_value = true
    )]
    pub store: String,
    /// Where the local index lives (outside the workspace).
    #[arg(long, global = true, env = "CAIRN_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true, env = "CAIRN_JSON", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub json: bool,
    /// No progress bars or summaries, only results and errors.
    #[arg(long, short, global = true, env = "CAIRN_QUIET", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    pub quiet: bool,
    /// Log format on stderr: text or json.
    #[arg(long, global = true, env = "CAIRN_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// The key file of an encrypted repository: at least 32 random bytes (a mounted Kubernetes
    /// Secret, say). Never the key itself on the command line or in the environment.
    #[arg(long, global = true, env = "CAIRN_KEY_FILE")]
    pub key_file: Option<PathBuf>,
}

impl Global {
    /// Where the repository's key comes from.
    pub fn keys(&self) -> cairn_engine::KeySource {
        cairn_engine::KeySource::from_path(self.key_file.clone())
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a repository in an empty store (encrypted unless --plaintext).
    Init(cmd::init::InitArgs),
    /// Manage the wrappings of an encrypted repository's key: list, add, remove.
    #[command(subcommand)]
    Key(cmd::key::KeyCommand),
    /// Back up a workspace directory as a new snapshot.
    Backup(cmd::backup::BackupArgs),
    /// Restore a snapshot into a directory.
    Restore(cmd::restore::RestoreArgs),
    /// List snapshots.
    Snapshots(cmd::snapshots::SnapshotsArgs),
    /// List a snapshot's directory (or, with -R, everything below it), like `ls -l`.
    Ls(cmd::browse::LsArgs),
    /// Find a snapshot's entries by a glob on their name or path.
    Find(cmd::browse::FindArgs),
    /// What changed between two snapshots: added, removed, modified, metadata only.
    Diff(cmd::browse::DiffArgs),
    /// A file's bytes from a snapshot on stdout, or a directory as a tar stream.
    Dump(cmd::browse::DumpArgs),
    /// Restore a snapshot into a scratch directory and verify every byte, with timings.
    Drill(cmd::drill::DrillArgs),
    /// Verify the repository's structure (and with --read-data, every byte).
    Check(cmd::check::CheckArgs),
    /// List the heartbeats of running (and stopped) sidecars.
    Heartbeats(cmd::heartbeats::HeartbeatsArgs),
    /// Create a workspace from another's snapshot, without copying data.
    Fork(cmd::fork::ForkArgs),
    /// Forget snapshots by retention rules, or a whole workspace.
    Forget(cmd::forget::ForgetArgs),
    /// Delete data no snapshot references, safely while backups run.
    Gc(cmd::gc::GcArgs),
    /// Repository size, logical size, dedup ratio, objects, workspaces, snapshots.
    Stats(cmd::stats::StatsArgs),
    /// Change a snapshot's tags: --set, --add, --remove (its id changes).
    Tag(cmd::tag::TagArgs),
    /// Print the cloud policy of a role (writer, reader, gc) on a repository, as JSON to apply.
    Policy(cmd::policy::PolicyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    output::init_logging(&cli.global);
    cairn_engine::raise_fd_limit();
    cairn_engine::no_core_dumps();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("initctl: cannot start the runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    let g = cli.global;
    let result = rt.block_on(async {
        match cli.cmd {
            Command::Init(a) => cmd::init::run(&g, a).await,
            Command::Policy(a) => cmd::policy::run(&g, a).await,
            Command::Tag(a) => cmd::tag::run(&g, a).await,
            Command::Key(a) => cmd::key::run(&g, a).await,
            Command::Backup(a) => cmd::backup::run(&g, a).await,
            Command::Restore(a) => cmd::restore::run(&g, a).await,
            Command::Snapshots(a) => cmd::snapshots::run(&g, a).await,
            Command::Ls(a) => cmd::browse::ls(&g, a).await,
            Command::Find(a) => cmd::browse::find(&g, a).await,
            Command::Diff(a) => cmd::browse::diff_cmd(&g, a).await,
            Command::Dump(a) => cmd::browse::dump(&g, a).await,
            Command::Drill(a) => cmd::drill::run(&g, a).await,
            Command::Check(a) => cmd::check::run(&g, a).await,
            Command::Heartbeats(a) => cmd::heartbeats::run(&g, a).await,
            Command::Fork(a) => cmd::fork::run(&g, a).await,
            Command::Forget(a) => cmd::forget::run(&g, a).await,
            Command::Gc(a) => cmd::gc::run(&g, a).await,
            Command::Stats(a) => cmd::stats::run(&g, a).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = output::exit_code(&e);
            if g.json {
                println!(
                    "{}",
                    serde_json::json!({ "error": format!("{e:#}"), "exit_code": code })
                );
            }
            eprintln!("initctl: error: {e:#}");
            ExitCode::from(code)
        }
    }
}
