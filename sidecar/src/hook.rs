//! Quiesce hooks: `sh -c` commands the pod spec sets around each checkpoint.
//!
//! A hook runs in the workspace root, entered by descriptor, with a minimal environment (none of the
//! sidecar's store configuration), as an unprivileged user (`--hook-user`, default `nobody`; via
//! util-linux's `setpriv` with `--no-new-privs`, so no setuid or file-capability binary raises it
//! again), in a process group of its own, and under a timeout: past it, or when the checkpoint it
//! belongs to is cancelled, the whole group is killed, so a hook that hangs cannot hold the next
//! checkpoint or outlive the pod's grace period. Run as root (`--hook-user 0`), a hook holds every
//! privilege of the sidecar: it could read the sidecar's credentials from `/proc/1/environ` or the
//! token files, and it works in a directory the agent controls.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;

/// What a hook inherits from the sidecar's environment; anything else only if `--hook-env` names
/// it.
const INHERITED: &[&str] = &["PATH", "LANG", "LC_ALL", "TZ", "HOSTNAME"];

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

/// Who hooks run as: `UID[:GID]` (GID defaults to UID), or `0` for the sidecar's own user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HookUser(pub Option<(u32, u32)>);

impl std::str::FromStr for HookUser {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{s:?}: give a numeric UID[:GID] (65534:65534 is nobody; 0 runs hooks as the sidecar's user)"
            )
        };
        let (u, g) = match s.split_once(':') {
            Some((u, g)) => (u, g),
            None => (s, s),
        };
        let (u, g): (u32, u32) = (u.parse().map_err(|_| bad())?, g.parse().map_err(|_| bad())?);
        Ok(HookUser((u != 0).then_some((u, g))))
    }
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
    /// Who it runs as.
    pub user: HookUser,
}

impl Hook<'_> {
    /// Runs the hook; an error if it fails, cannot start or does not finish in time.
    ///
    /// Errors name the hook (`pre` or `post`), never its command line: an operator may have put a
    /// password in it, and errors reach logs and `sidecar flush`'s JSON.
    pub async fn run(&self) -> anyhow::Result<()> {
        let (which, cmd) = (self.which, self.cmd);
        // The root is opened once without following a symlink, and the hook enters it through
        // that descriptor (`/proc/self/fd/N`, which the child resolves in its own copy of the
        // descriptor table before it execs): the agent cannot make it start anywhere else.
        let root = cairn_engine::WorkspaceDir::open(self.source)
            .with_context(|| format!("{which}-checkpoint hook: opening {}", self.source.display()))?;
        // The working directory is entered before the exec, as the sidecar; setpriv then drops to
        // the hook's user (a process that changed its user cannot open its own /proc/self/fd).
        let mut c = match self.user.0 {
            Some((uid, gid)) if cairn_engine::is_root() => {
                let mut c = tokio::process::Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .args(["--clear-groups", "--no-new-privs", "--", "sh"]);
                c
            }
            _ => tokio::process::Command::new("sh"),
        };
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
        let mut child = c.spawn().with_context(|| {
            format!("{which}-checkpoint hook: cannot start sh (or setpriv, for --hook-user)")
        })?;
        let mut group = Group(child.id());
        let status = match tokio::time::timeout(self.timeout, child.wait()).await {
            Ok(status) => status.with_context(|| format!("{which}-checkpoint hook"))?,
            Err(_) => anyhow::bail!(
                "{which}-checkpoint hook did not finish within {:?} (--hook-timeout); \
                 it and the processes it started were killed",
                self.timeout
            ),
        };
        // It ended on its own: what it left running in the background is its business.
        group.0 = None;
        if !status.success() {
            anyhow::bail!("{which}-checkpoint hook failed ({status})");
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
