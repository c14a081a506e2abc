//! Quiesce hooks: `sh -c` commands the pod spec sets around each checkpoint.
//!
//! A hook runs in the workspace root, entered by descriptor, with a minimal environment (never the
//! sidecar's store credentials), in a process group of its own, and under a timeout: past it, or
//! when the checkpoint it belongs to is cancelled, the whole group is killed, so a hook that hangs
//! or leaves a child behind cannot hold the next checkpoint or outlive the pod's grace period.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;

/// What a hook inherits from the sidecar's environment; anything else only if `--hook-env` names
/// it.
const INHERITED: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TZ", "HOSTNAME"];

/// Prefixes of the variables that carry store credentials; `--hook-env` refuses them.
const CREDENTIALS: &[&str] = &["AWS_", "GOOGLE_", "GCS_", "CLOUDSDK_", "CAIRN_"];

/// Checks `--hook-env` names: a store credential is never handed to a hook.
pub fn check_env_names(names: &[String]) -> anyhow::Result<()> {
    for name in names {
        if name.is_empty() || name.contains('=') {
            anyhow::bail!("--hook-env {name:?}: give variable names, separated by commas");
        }
        if let Some(p) = CREDENTIALS.iter().find(|p| name.starts_with(*p)) {
            anyhow::bail!(
                "--hook-env {name}: variables starting with {p} hold the sidecar's store \
                 configuration and credentials and are never passed to hooks"
            );
        }
    }
    Ok(())
}

/// One hook run.
pub struct Hook<'a> {
    /// `pre` or `post`.
    pub which: &'a str,
    pub cmd: &'a str,
    pub workspace: &'a str,
    pub source: &'a Path,
    pub timeout: Duration,
    /// Extra variables (`--hook-env`) passed through.
    pub env: &'a [String],
}

impl Hook<'_> {
    /// Runs the hook; an error if it fails, cannot start or does not finish in time.
    pub async fn run(&self) -> anyhow::Result<()> {
        let (which, cmd) = (self.which, self.cmd);
        // The root is opened once without following a symlink, and the hook enters it through
        // that descriptor (`/proc/self/fd/N`, which the child resolves in its own copy of the
        // descriptor table before it execs): the agent cannot make it start anywhere else.
        let root = cairn_engine::WorkspaceDir::open(self.source)
            .with_context(|| format!("{which}-checkpoint hook: opening {}", self.source.display()))?;
        let mut c = tokio::process::Command::new("sh");
        c.arg("-c")
            .arg(cmd)
            .current_dir(format!("/proc/self/fd/{}", root.fd().as_raw_fd()))
            .env_clear();
        for name in INHERITED
            .iter()
            .copied()
            .chain(self.env.iter().map(String::as_str))
        {
            if let Some(v) = std::env::var_os(name) {
                c.env(name, v);
            }
        }
        c.env("CAIRN_WORKSPACE", self.workspace)
            .env("CAIRN_SOURCE", self.source)
            .env("CAIRN_HOOK", which)
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = c
            .spawn()
            .with_context(|| format!("{which}-checkpoint hook {cmd:?}: cannot start sh"))?;
        let mut group = Group(child.id());
        let status = match tokio::time::timeout(self.timeout, child.wait()).await {
            Ok(status) => status.with_context(|| format!("{which}-checkpoint hook {cmd:?}"))?,
            Err(_) => anyhow::bail!(
                "{which}-checkpoint hook {cmd:?} did not finish within {:?} (--hook-timeout); \
                 it and the processes it started were killed",
                self.timeout
            ),
        };
        // It ended on its own: what it left running in the background is its business.
        group.0 = None;
        if !status.success() {
            anyhow::bail!("{which}-checkpoint hook {cmd:?} failed ({status})");
        }
        Ok(())
    }
}

/// A hook's process group, killed when dropped while armed (a timeout, or the checkpoint's future
/// dropped by a cancellation or the flush deadline).
struct Group(Option<u32>);

impl Drop for Group {
    fn drop(&mut self) {
        let Some(pid) = self.0.and_then(|p| rustix::process::Pid::from_raw(p as i32)) else {
            return;
        };
        if let Err(e) = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL) {
            tracing::debug!(error = %e, "hook process group already gone");
        }
    }
}
