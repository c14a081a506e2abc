//! Point-in-time checkpoints: the workspace's file system frozen (`FIFREEZE`, by util-linux's
//! `fsfreeze`) for as long as it takes to fix the instant, and only where the workspace is a file
//! system of its own.
//!
//! While frozen, a backup walks the volume (reads work, writes block), takes unchanged files from
//! the stat cache, and copies the bytes of changed ones to a staging directory on another file
//! system (the cache volume). Then it thaws, and chunks, compresses and uploads at leisure. So a
//! checkpoint holds every file as it was at one instant, which is what any software that survives
//! a power cut (every serious database) recovers from.
//!
//! The freeze is always released: by the backup itself on every path (a `Drop` too), by a guard
//! process started before the freeze (`sh -c 'timeout DEADLINE cat; fsfreeze -u PATH'`, reading a
//! pipe from this process: it thaws when the deadline passes or when this process dies, even by
//! SIGKILL), and at the next start of a sidecar whose container was killed with its guard (a
//! marker in the cache directory names what to thaw; the freezer's `flock` on `frozen.lock` tells
//! a leftover from a freeze in progress, in this process or another).
//!
//! Freezing another file system than the workspace's own would stall everything on it (an
//! `emptyDir` shares the node's disk), so a volume is frozen only if it is the root of a mount of
//! a whole block-device file system of a type that supports freezing, on another device than the
//! cache directory; otherwise the backup reads the live volume as before, and says why.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

/// When a backup freezes the workspace's file system.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FreezeMode {
    /// Where the workspace is a file system of its own and this process may freeze it; otherwise
    /// read it live, with a warning.
    #[default]
    Auto,
    /// Always: a backup that cannot freeze fails.
    Always,
    /// Never: read the live volume.
    Never,
}

impl std::str::FromStr for FreezeMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(FreezeMode::Auto),
            "always" => Ok(FreezeMode::Always),
            "never" => Ok(FreezeMode::Never),
            _ => Err(format!("{s:?}: use auto, always or never")),
        }
    }
}

/// The freeze settings: `CAIRN_FREEZE` (auto, always, never) and `CAIRN_FREEZE_DEADLINE`
/// (default 2 s).
#[derive(Clone, Copy, Debug)]
pub struct FreezeOptions {
    /// When to freeze.
    pub mode: FreezeMode,
    /// The longest a freeze may last: past it the guard thaws, and the checkpoint is read again,
    /// live (it says so).
    pub deadline: Duration,
    /// For drills and tests of the watchdog: stay frozen this much longer after the capture
    /// (`CAIRN_FREEZE_HOLD`; zero in production).
    pub hold: Duration,
    /// Read what changed since the last checkpoint live first, so the freeze only copies what
    /// changed during that pre-pass (`CAIRN_PREPASS`, default on; see `walk.rs`).
    pub prepass: bool,
}

impl Default for FreezeOptions {
    fn default() -> Self {
        FreezeOptions {
            mode: FreezeMode::Auto,
            deadline: Duration::from_secs(2),
            hold: Duration::ZERO,
            prepass: true,
        }
    }
}

impl FreezeOptions {
    /// From `CAIRN_FREEZE`, `CAIRN_FREEZE_DEADLINE`, `CAIRN_FREEZE_HOLD` and `CAIRN_PREPASS`.
    ///
    /// # Errors
    /// A message naming the variable with a bad value.
    pub fn from_env() -> Result<Self, String> {
        let mut o = FreezeOptions::default();
        if let Ok(v) = std::env::var("CAIRN_FREEZE") {
            o.mode = v.parse().map_err(|e| format!("CAIRN_FREEZE: {e}"))?;
        }
        if let Ok(v) = std::env::var("CAIRN_FREEZE_DEADLINE") {
            o.deadline = crate::store::parse_duration(&v)
                .ok_or_else(|| format!("CAIRN_FREEZE_DEADLINE: {v:?} is not a duration like 2s or 500ms"))?;
        }
        o.hold = hold_from_env()?;
        if let Ok(v) = std::env::var("CAIRN_PREPASS") {
            o.prepass = match v.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => return Err(format!("CAIRN_PREPASS: {v:?} is not true or false")),
            };
        }
        Ok(o)
    }
}

/// `CAIRN_FREEZE_HOLD` (drills and tests only), zero if unset.
///
/// # Errors
/// A message naming the variable if its value is not a duration.
pub fn hold_from_env() -> Result<Duration, String> {
    match std::env::var("CAIRN_FREEZE_HOLD") {
        Ok(v) => crate::store::parse_duration(&v)
            .ok_or_else(|| format!("CAIRN_FREEZE_HOLD: {v:?} is not a duration like 5s")),
        Err(_) => Ok(Duration::ZERO),
    }
}

/// How a backup's instant was fixed, for reports, logs and metrics.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Consistency {
    /// Whether the snapshot holds the workspace as it was at one instant (frozen throughout the
    /// capture).
    pub point_in_time: bool,
    /// Seconds the file system was frozen (0 when it was not).
    pub frozen_seconds: f64,
    /// Seconds of the live pre-pass before the freeze (0 without one).
    pub prepass_seconds: f64,
    /// Whether the file system was frozen: 0 when read live, and for a point-in-time checkpoint
    /// of an idle workspace that the pre-pass found unchanged since its last one.
    pub freezes: u32,
    /// Why the volume was read live (no freeze), or why the freeze did not hold.
    pub fallback: Option<String>,
}

/// A file system that may be frozen for a workspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Freezable {
    /// The mount point (the workspace root).
    pub mount_point: PathBuf,
    /// The file system type.
    pub fstype: String,
}

/// File systems whose kernel driver implements freezing.
const FREEZABLE: &[&str] = &[
    "xfs", "ext4", "ext3", "ext2", "btrfs", "f2fs", "jfs", "nilfs2", "gfs2", "ocfs2",
];

/// Whether the workspace at `source` may be frozen: the root of a mount of a whole file system of a
/// freezable type from a block device, not the device of `cache_dir`. `Err` says why not.
///
/// # Errors
/// The reason, for the fallback warning.
pub fn freezable(source: &Path, cache_dir: &Path) -> Result<Freezable, String> {
    let real = fs::canonicalize(source).map_err(|e| format!("{}: {e}", source.display()))?;
    let info =
        fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    let mount = info
        .lines()
        .rev()
        .filter_map(parse_mountinfo)
        .find(|m| m.mount_point == real)
        .ok_or_else(|| {
            format!(
                "{} is not a mount point: it shares a file system with other data",
                real.display()
            )
        })?;
    let st = fs::metadata(&real).map_err(|e| format!("{}: {e}", real.display()))?;
    let dev = std::os::unix::fs::MetadataExt::dev(&st);
    // btrfs gives each subvolume an anonymous device of its own: no match to expect there.
    if mount.fstype != "btrfs" && (rustix::fs::major(dev), rustix::fs::minor(dev)) != mount.dev {
        return Err(format!(
            "{} is not the file system /proc/self/mountinfo lists there (device {}:{} against {}:{})",
            real.display(),
            rustix::fs::major(dev),
            rustix::fs::minor(dev),
            mount.dev.0,
            mount.dev.1
        ));
    }
    if mount.root != "/" {
        return Err(format!(
            "{} is a bind mount of {} of a larger file system (an emptyDir or hostPath): freezing it would stall its \
             other users",
            real.display(),
            mount.root
        ));
    }
    if !FREEZABLE.contains(&mount.fstype.as_str()) {
        return Err(format!(
            "{} is {}, which cannot be frozen",
            real.display(),
            mount.fstype
        ));
    }
    if !mount.source.starts_with("/dev/") {
        return Err(format!(
            "{} is mounted from {}, not a block device",
            real.display(),
            mount.source
        ));
    }
    let dev = |p: &Path| -> Option<u64> { Some(std::os::unix::fs::MetadataExt::dev(&fs::metadata(p).ok()?)) };
    let cache = dev(cache_dir).or_else(|| cache_dir.parent().and_then(dev));
    if cache.is_none() || cache == dev(&real) {
        return Err(format!(
            "the cache directory {} is on the workspace's file system (or missing): changed files could not be staged \
             while it is frozen",
            cache_dir.display()
        ));
    }
    Ok(Freezable {
        mount_point: real,
        fstype: mount.fstype,
    })
}

struct MountInfo {
    dev: (u32, u32),
    root: String,
    mount_point: PathBuf,
    fstype: String,
    source: String,
}

/// One line of `/proc/self/mountinfo` (proc(5)): `id parent major:minor root point options
/// [optional...] - fstype source superoptions`.
fn parse_mountinfo(line: &str) -> Option<MountInfo> {
    let (left, right) = line.split_once(" - ")?;
    let l: Vec<&str> = left.split(' ').collect();
    let r: Vec<&str> = right.split(' ').collect();
    let (major, minor) = l.get(2)?.split_once(':')?;
    Some(MountInfo {
        dev: (major.parse().ok()?, minor.parse().ok()?),
        root: unescape(l.get(3)?),
        mount_point: PathBuf::from(unescape(l.get(4)?)),
        fstype: r.first()?.to_string(),
        source: unescape(r.get(1)?),
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The marker naming a frozen file system, in the cache directory, while a freeze is held.
fn marker(cache_dir: &Path) -> PathBuf {
    cache_dir.join("frozen")
}

/// The lock a freeze holds (`flock`, in the cache directory) from before the marker is written
/// until its guard is gone: one freeze at a time per cache directory across processes (a second
/// would fail with EBUSY, or its guard thaw the first's), and a leftover thaw never releases a
/// freeze that is held. A killed process's lock is released by the kernel, so a marker whose
/// lock can be taken is a leftover.
fn lock(cache_dir: &Path, wait: bool) -> std::io::Result<Option<fs::File>> {
    use rustix::fs::{flock, FlockOperation};
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(cache_dir.join("frozen.lock"))?;
    let op = if wait {
        FlockOperation::LockExclusive
    } else {
        FlockOperation::NonBlockingLockExclusive
    };
    match flock(&f, op) {
        Ok(()) => Ok(Some(f)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A frozen file system; thawed on [`Frozen::thaw`] or drop.
pub(crate) struct Frozen {
    mount_point: PathBuf,
    marker: PathBuf,
    guard: Option<Child>,
    /// Before the guard started: the guard thaws no earlier than `deadline` after this.
    armed: Instant,
    deadline: Duration,
    started: Instant,
    /// The freeze succeeded.
    frozen: bool,
    /// [`Frozen::release`] ran.
    released: bool,
    /// This process's own thaw succeeded (then the guard must not thaw again).
    thawed_here: bool,
    _lock: fs::File,
}

/// How a freeze ended.
pub(crate) struct Thawed {
    /// How long the file system was frozen.
    pub held: Duration,
    /// Whether the guard may have thawed it before this process did (the deadline passed, the
    /// guard said it is about to thaw, or it is gone): then what was read is not all of one
    /// instant.
    pub lapsed: bool,
}

fn fsfreeze(flag: &str, path: &Path) -> std::io::Result<std::process::Output> {
    Command::new("fsfreeze")
        .arg(flag)
        .arg(path)
        .stdin(Stdio::null())
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
}

/// The guard: waits for EOF on its stdin (this process closing it, or dying) for at most the
/// deadline, says so on its stdout, then thaws. Its own process group, deaf to the signals a
/// terminal sends (so a Ctrl-C or hangup that kills `initctl` cannot take the guard with it), and
/// to SIGPIPE (its "thawing" goes to a pipe nobody reads once this process is dead).
const GUARD: &str = r#"trap '' INT HUP TERM QUIT PIPE; timeout "$1" cat >/dev/null; echo thawing; exec fsfreeze -u "$2" 2>/dev/null"#;

impl Frozen {
    /// Freezes `fs` for at most `deadline` (the guard thaws it then, or when this process dies).
    ///
    /// # Errors
    /// Why it could not be frozen (no `fsfreeze`, no `CAP_SYS_ADMIN`, another process freezing,
    /// a freeze slower than the deadline, ...).
    pub fn freeze(fs: &Freezable, cache_dir: &Path, deadline: Duration) -> Result<Frozen, String> {
        fs::create_dir_all(cache_dir).map_err(|e| format!("{}: {e}", cache_dir.display()))?;
        let lock = lock(cache_dir, false)
            .map_err(|e| format!("{}: {e}", cache_dir.join("frozen.lock").display()))?
            .ok_or_else(|| {
                format!(
                    "another checkpoint (of this process or another) is freezing this file system now (it holds {})",
                    cache_dir.join("frozen.lock").display()
                )
            })?;
        let marker = marker(cache_dir);
        fs::write(&marker, fs.mount_point.as_os_str().as_encoded_bytes())
            .map_err(|e| format!("{}: {e}", marker.display()))?;
        let secs = format!("{:.3}", deadline.as_secs_f64());
        let armed = Instant::now();
        let guard = Command::new("sh")
            .arg("-c")
            .arg(GUARD)
            .arg("cairn-freeze-guard")
            .arg(&secs)
            .arg(&fs.mount_point)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .spawn();
        let guard = match guard {
            Ok(g) => g,
            Err(e) => {
                let _ = fs::remove_file(&marker);
                return Err(format!("cannot start the freeze guard (sh): {e}"));
            }
        };
        if let Some(out) = &guard.stdout {
            // Read without waiting: "nothing yet" is the answer while the guard waits.
            let _ = rustix::fs::fcntl_setfl(out, rustix::fs::OFlags::NONBLOCK);
        }
        let mut f = Frozen {
            mount_point: fs.mount_point.clone(),
            marker,
            guard: Some(guard),
            armed,
            deadline,
            started: Instant::now(),
            frozen: false,
            released: false,
            thawed_here: false,
            _lock: lock,
        };
        match fsfreeze("-f", &fs.mount_point) {
            Ok(o) if o.status.success() => {
                f.started = Instant::now();
                f.frozen = true;
                // A freeze that took the whole deadline (FIFREEZE waits for writers in flight)
                // has no watchdog left: undo it at once.
                if f.lapsed() {
                    let _ = f.release();
                    return Err(format!(
                        "freezing {} took longer than the deadline of {deadline:?} (CAIRN_FREEZE_DEADLINE)",
                        fs.mount_point.display()
                    ));
                }
                Ok(f)
            }
            Ok(o) => Err(format!(
                "fsfreeze -f {}: {} (freezing needs CAP_SYS_ADMIN)",
                fs.mount_point.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Err(format!("cannot run fsfreeze (util-linux): {e}")),
        }
    }

    /// Whether the guard may have thawed (or be about to thaw) the file system by now.
    fn lapsed(&mut self) -> bool {
        if self.armed.elapsed() >= self.deadline {
            return true;
        }
        let Some(g) = self.guard.as_mut() else { return true };
        if !matches!(g.try_wait(), Ok(None)) {
            return true;
        }
        let Some(out) = g.stdout.as_mut() else { return true };
        let mut b = [0u8; 16];
        // Nothing to read (EAGAIN) while the guard waits; a byte or EOF once it thaws or is gone.
        !matches!(std::io::Read::read(out, &mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// Thaws, and says how long it was frozen and whether the guard may have thawed it first.
    pub fn thaw(mut self) -> Thawed {
        let lapsed = self.lapsed();
        let held = self.release();
        Thawed { held, lapsed }
    }

    fn release(&mut self) -> Duration {
        let held = self.started.elapsed();
        if self.released {
            return held;
        }
        self.released = true;
        if self.frozen {
            match fsfreeze("-u", &self.mount_point) {
                Ok(o) if o.status.success() => self.thawed_here = true,
                // The guard thawed it at the deadline already.
                Ok(o) => tracing::debug!(stderr = %String::from_utf8_lossy(&o.stderr).trim(), "fsfreeze -u"),
                Err(e) => {
                    tracing::error!(error = %e, "cannot run fsfreeze -u; the guard thaws the file system")
                }
            }
        }
        if let Some(mut g) = self.guard.take() {
            // Thawed here, or never frozen: the guard's shell must not thaw (a freeze someone
            // else holds). Otherwise (our thaw failed) closing its stdin makes it thaw now.
            if !self.frozen || self.thawed_here {
                let _ = g.kill();
            }
            drop(g.stdin.take());
            let _ = g.wait();
        }
        let _ = fs::remove_file(&self.marker);
        held
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.release();
    }
}

/// Thaws a file system that a killed backup left frozen (its marker in `cache_dir`), at the start
/// of a sidecar or backup. Returns the mount point if it was frozen and is thawed now. Never
/// waits: a marker whose lock is held belongs to a freeze in progress, not a leftover.
pub fn thaw_leftover(cache_dir: &Path) -> Option<PathBuf> {
    let marker = marker(cache_dir);
    if !marker.exists() {
        return None;
    }
    let _lock = lock(cache_dir, false).ok()??;
    let bytes = fs::read(&marker).ok()?;
    let point = PathBuf::from(String::from_utf8_lossy(&bytes).into_owned());
    let thawed = fsfreeze("-u", &point).is_ok_and(|o| o.status.success());
    let _ = fs::remove_file(&marker);
    if thawed {
        tracing::warn!(mount = %point.display(), "thawed a file system a killed checkpoint left frozen");
    }
    thawed.then_some(point)
}
