//! Real file systems for the tests that need one of their own: an image file, `mkfs`, and a loop
//! mount (the suite runs as root). A test that cannot have one (not root, no loop devices, no
//! `mkfs.xfs`) is told why and says so when it skips.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A loop-mounted file system, unmounted (and its loop device released) when dropped.
pub struct LoopFs {
    pub mount: PathBuf,
    pub kind: &'static str,
    _dir: tempfile::TempDir,
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let o = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

impl LoopFs {
    /// A fresh `kind` file system ("xfs" or "ext4") of `mib` MiB in a sparse image, mounted.
    ///
    /// # Errors
    /// Why not (for the skip message).
    pub fn new(kind: &'static str, mib: u64) -> Result<LoopFs, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("loop mounts need root".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        // Reachable by the unprivileged users some tests run (PostgreSQL's).
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        let image = dir.path().join("image");
        let f = std::fs::File::create(&image).map_err(|e| e.to_string())?;
        f.set_len(mib << 20).map_err(|e| e.to_string())?;
        drop(f);
        match kind {
            "xfs" => run(Command::new("mkfs.xfs").args(["-q", "-f"]).arg(&image))?,
            "ext4" => run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))?,
            other => return Err(format!("no recipe for {other}")),
        }
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).map_err(|e| e.to_string())?;
        run(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&mount))?;
        Ok(LoopFs {
            mount,
            kind,
            _dir: dir,
        })
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mount.join(rel)
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        // A test that failed while the file system was frozen must not leave it so.
        let _ = Command::new("fsfreeze").arg("-u").arg(&self.mount).output();
        if Command::new("umount")
            .arg(&self.mount)
            .status()
            .is_ok_and(|s| s.success())
        {
            return;
        }
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

/// Whether writing `dir` blocks (the file system is frozen): a child process tries to create a
/// file and is given `wait` to finish.
pub fn writes_block(dir: &Path, wait: std::time::Duration) -> bool {
    let probe = dir.join(format!(".probe-{}", rand::random::<u32>()));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("echo x > \"$1\" && rm -f \"$1\"")
        .arg("probe")
        .arg(&probe)
        .spawn()
        .expect("spawn the write probe");
    let deadline = std::time::Instant::now() + wait;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if std::time::Instant::now() > deadline {
            // It stays blocked in the kernel until the thaw; reap it later.
            std::thread::spawn(move || {
                let _ = child.wait();
            });
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
