//! A real PostgreSQL for the live-workspace tests: Debian's server binaries, run as the
//! `postgres` user (it refuses root) on a loopback port with its socket in a temp dir.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

/// A PostgreSQL data directory and the server on it (stopped when dropped).
pub struct Pg {
    pub data: PathBuf,
    pub port: u16,
    sock: PathBuf,
    bin: PathBuf,
    uid: u32,
    gid: u32,
    /// The postmaster, a child of the test itself: this sandbox's PID 1 reaps no orphans, and a
    /// zombie postmaster's PID in `postmaster.pid` would make a restored copy refuse to start.
    server: Option<Child>,
}

/// The newest installed server's `bin` directory and the `postgres` user's ids.
///
/// # Errors
/// What is missing (for the skip message).
pub fn installed() -> Result<(PathBuf, u32, u32), String> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| {
            format!("/usr/lib/postgresql: {e} (Debian's postgresql package; scripts/setup.sh installs it)")
        })?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists())
        .collect();
    versions.sort();
    let bin = versions
        .pop()
        .ok_or("no PostgreSQL server binaries under /usr/lib/postgresql")?;
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| e.to_string())?;
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .ok_or("no postgres user")?;
    let f: Vec<&str> = line.split(':').collect();
    let uid = f.get(2).and_then(|v| v.parse().ok()).ok_or("bad passwd line")?;
    let gid = f.get(3).and_then(|v| v.parse().ok()).ok_or("bad passwd line")?;
    Ok((bin, uid, gid))
}

fn check(o: std::io::Result<Output>, what: &str) -> Result<String, String> {
    let o = o.map_err(|e| format!("{what}: {e}"))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ))
    }
}

impl Pg {
    /// A new cluster in `data` (which must not exist), with data checksums.
    pub fn init(data: &Path, sock: &Path) -> Result<Pg, String> {
        let pg = Pg::at(data, sock)?;
        std::fs::create_dir_all(data).map_err(|e| e.to_string())?;
        pg.own(data)?;
        check(
            pg.as_pg("initdb")
                .args([
                    "--data-checksums",
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                    "-D",
                ])
                .arg(data)
                .output(),
            "initdb",
        )?;
        Ok(pg)
    }

    /// The cluster in `data` (a restored copy, say); `data` and everything in it become the
    /// postgres user's.
    pub fn at(data: &Path, sock: &Path) -> Result<Pg, String> {
        let (bin, uid, gid) = installed()?;
        std::fs::create_dir_all(sock).map_err(|e| e.to_string())?;
        let pg = Pg {
            data: data.to_path_buf(),
            port: crate::support::servers::free_port(),
            sock: sock.to_path_buf(),
            bin,
            uid,
            gid,
            server: None,
        };
        pg.own(sock)?;
        Ok(pg)
    }

    fn own(&self, p: &Path) -> Result<(), String> {
        check(
            Command::new("chown")
                .arg("-R")
                .arg(format!("{}:{}", self.uid, self.gid))
                .arg(p)
                .output(),
            "chown",
        )
        .map(drop)
    }

    /// A command of the server's `bin` directory, run as the postgres user.
    pub fn as_pg(&self, prog: &str) -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--clear-groups")
            .arg(self.bin.join(prog))
            .env("PGHOST", &self.sock)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", "postgres")
            .env("PGDATABASE", "postgres");
        c
    }

    /// Starts the postmaster and waits until it answers (crash recovery included).
    pub fn start(&mut self) -> Result<(), String> {
        let log_path = self.sock.join(format!("pg-{}.log", self.port));
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let child = self
            .as_pg("postgres")
            .arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port.to_string(), "-c", "listen_addresses="])
            .arg("-k")
            .arg(&self.sock)
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("postgres: {e}"))?;
        self.server = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.sql("select 1").is_ok() {
                return Ok(());
            }
            let exited = self.server.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                self.server = None;
                return Err(format!(
                    "postgres did not start ({exited:?}): {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A fast shutdown (SIGINT), waited for.
    pub fn stop(&mut self) -> Result<(), String> {
        let Some(mut child) = self.server.take() else {
            return Ok(());
        };
        let pid = rustix::process::Pid::from_child(&child);
        rustix::process::kill_process(pid, rustix::process::Signal::INT).map_err(|e| e.to_string())?;
        let status = child.wait().map_err(|e| e.to_string())?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("postgres exited with {status}"))
        }
    }

    /// One SQL statement's result (`psql -At`).
    pub fn sql(&self, sql: &str) -> Result<String, String> {
        check(
            self.as_pg("psql")
                .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
                .output(),
            sql,
        )
    }

    /// `pgbench ARGS` against this server, started in the background.
    pub fn pgbench(&self, args: &[&str]) -> Child {
        self.as_pg("pgbench")
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn pgbench")
    }

    /// Runs a tool of the server's `bin` directory to completion.
    pub fn tool(&self, prog: &str, args: &[&str]) -> Result<String, String> {
        check(self.as_pg(prog).args(args).output(), prog)
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
