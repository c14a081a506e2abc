//! A hostile agent: another process (`cairn-test-helper swap`) swaps the workspace's files and
//! directories for symlinks to a secret outside it, and back, as fast as it can, while backups and
//! restores run; FIFOs and device nodes are swapped in for files. No snapshot may hold a byte of
//! the secret, no restore may write, read or chmod anything outside its target, no backup may
//! block, and every snapshot restores to a tree that existed (or was mid-change).

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cairn_engine::{backup, BackupOptions, Progress};

use crate::support::*;

/// The swapping agent; killed when dropped.
struct Agent(Child);

impl Agent {
    fn start(args: &[&str]) -> (Agent, String) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cairn-test-helper"))
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the agent");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("agent ready");
        (Agent(child), line.trim().to_string())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A backup with a cache of its own (no stat cache: every file is opened and read).
async fn backup_uncached(t: &TestRepo, ws: &str, source: &Path, i: usize) -> cairn_engine::BackupReport {
    let opts = BackupOptions {
        max_session: Duration::from_secs(3600),
        dedup_fetches: 0,
        workspace: ws.into(),
        source: source.to_path_buf(),
        cache_dir: t.scratch(&format!("cache-{i}")),
        tags: vec![],
        host: Some("test".into()),
        freeze: Default::default(),
    };
    let r = backup(&t.repo, &opts, Arc::new(Progress::default()))
        .await
        .expect("backup");
    let _ = fs::remove_dir_all(t.scratch(&format!("cache-{i}")));
    r
}

/// Whether `hay` contains a 64-byte window of `secret` (at a few offsets: any stored chunk of it
/// would hold one).
fn holds_secret(hay: &[u8], secret: &[u8]) -> bool {
    (0..secret.len() - 64)
        .step_by(4096)
        .any(|o| hay.windows(64).any(|w| w == &secret[o..o + 64]))
}

/// Every regular file below `root`, with its content.
fn files_below(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("readdir").flatten() {
            let md = fs::symlink_metadata(e.path()).expect("lstat");
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file() {
                out.push((e.path(), fs::read(e.path()).expect("read")));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_racing_an_agent_that_swaps_in_symlinks_never_store_the_secret() {
    let t = TestRepo::new().await;
    let ws = t.scratch("ws");
    let secret = t.scratch("secret");
    let (a, b, f) = (
        random_bytes(1, 40 << 10),
        random_bytes(2, 100 << 10),
        random_bytes(3, 30 << 10),
    );
    write(&ws.join("d/a.bin"), &a);
    write(&ws.join("d/b.bin"), &b);
    write(&ws.join("f"), &f);
    write(&ws.join("keep.txt"), b"kept");
    let secrets = [
        random_bytes(11, 64 << 10),
        random_bytes(12, 64 << 10),
        random_bytes(13, 64 << 10),
    ];
    write(&secret.join("d/a.bin"), &secrets[0]);
    write(&secret.join("d/b.bin"), &secrets[1]);
    write(&secret.join("f"), &secrets[2]);

    let (agent, _) = Agent::start(&[
        "swap",
        ws.to_str().expect("utf-8"),
        secret.to_str().expect("utf-8"),
        "d",
        "f",
    ]);
    let mut snapshots = Vec::new();
    for i in 0..50 {
        snapshots.push(backup_uncached(&t, "ws", &ws, i).await);
    }
    drop(agent);

    let mut raced = 0;
    for (i, s) in snapshots.iter().enumerate() {
        let out = t.scratch(&format!("out-{i}"));
        t.restore("ws", Some(&s.snapshot), &out).await;
        for (path, content) in files_below(&out) {
            for secret in &secrets {
                assert!(
                    !holds_secret(&content, secret),
                    "snapshot {i}: {} holds the secret's bytes",
                    path.display()
                );
            }
        }
        // A tree that existed: each name is the real entry (as it was), a symlink to the secret
        // (its target, never its content), or absent mid-rename.
        let mut pristine = true;
        for e in fs::read_dir(&out).expect("readdir").flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if cairn_engine::is_volume_file(name.as_bytes()) {
                continue;
            }
            let path = e.path();
            let md = fs::symlink_metadata(&path).expect("lstat");
            let base = name.trim_end_matches(".away").trim_end_matches(".link");
            if md.file_type().is_symlink() {
                pristine = false;
                assert_eq!(
                    fs::read_link(&path).expect("readlink"),
                    secret.join(base),
                    "snapshot {i}: {name}"
                );
                continue;
            }
            pristine &= name == base;
            match base {
                "d" => {
                    assert!(md.is_dir(), "snapshot {i}: {name} is not a directory");
                    assert!(
                        fs::read(path.join("a.bin")).expect("a.bin") == a,
                        "snapshot {i}: {name}/a.bin"
                    );
                    assert!(
                        fs::read(path.join("b.bin")).expect("b.bin") == b,
                        "snapshot {i}: {name}/b.bin"
                    );
                    assert_eq!(fs::read_dir(&path).expect("readdir").count(), 2, "snapshot {i}");
                }
                "f" => assert!(fs::read(&path).expect("f") == f, "snapshot {i}: {name} differs"),
                "keep.txt" => assert_eq!(fs::read(&path).expect("keep"), b"kept"),
                other => panic!("snapshot {i}: unexpected entry {other}"),
            }
        }
        pristine &= out.join("d").is_dir() && out.join("f").is_file();
        if !pristine {
            raced += 1;
        }
    }
    eprintln!("hostile: {raced} of 50 snapshots caught the agent mid-swap; none holds the secret");
    assert!(
        raced > 0,
        "the agent never got between two of the backup's system calls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifos_and_devices_swapped_in_for_a_file_never_block_or_feed_a_backup() {
    let t = TestRepo::new().await;
    let ws = t.scratch("ws");
    let f = random_bytes(4, 50 << 10);
    write(&ws.join("f"), &f);
    write(&ws.join("other.txt"), b"other");
    let (agent, ready) = Agent::start(&["swap-special", ws.to_str().expect("utf-8"), "f"]);
    if ready != "ready device" {
        eprintln!("hostile: this process may not create device nodes; only FIFOs are swapped in");
    }
    let mut snapshots = Vec::new();
    for i in 0..30 {
        let r = tokio::time::timeout(Duration::from_secs(30), backup_uncached(&t, "ws", &ws, i))
            .await
            .expect("a backup blocked on a special file");
        snapshots.push(r);
    }
    drop(agent);
    for (i, s) in snapshots.iter().enumerate() {
        let out = t.scratch(&format!("out-{i}"));
        t.restore("ws", Some(&s.snapshot), &out).await;
        for e in fs::read_dir(&out).expect("readdir").flatten() {
            let md = fs::symlink_metadata(e.path()).expect("lstat");
            let name = e.file_name().to_string_lossy().into_owned();
            if cairn_engine::is_volume_file(name.as_bytes()) {
                continue;
            }
            if md.is_file() {
                let want: &[u8] = if name == "other.txt" { b"other" } else { &f };
                let got = fs::read(e.path()).expect("read");
                assert!(
                    got == want,
                    "snapshot {i}: {name} holds {} bytes that are not its own",
                    got.len()
                );
            } else {
                assert!(
                    md.file_type().is_fifo() || md.file_type().is_char_device(),
                    "snapshot {i}: {name} is {:?}",
                    md.file_type()
                );
                if md.file_type().is_char_device() {
                    assert_eq!(md.rdev(), rustix::fs::makedev(1, 5), "snapshot {i}: {name}");
                }
            }
        }
    }
}

/// One canary entry: mode (with its type), uid, gid, mtime and ctime (secs, nsecs), content.
type CanaryEntry = (u32, u32, u32, i64, i64, i64, i64, Vec<u8>);

/// What a canary tree looks like: every entry's kind, content, mode, owner, mtime and ctime.
fn canary_state(root: &Path) -> BTreeMap<PathBuf, CanaryEntry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p).expect("lstat");
        let content = if md.is_file() {
            fs::read(&p).expect("read")
        } else {
            Vec::new()
        };
        out.insert(
            p.clone(),
            (
                md.mode(),
                md.uid(),
                md.gid(),
                md.mtime(),
                md.mtime_nsec(),
                md.ctime(),
                md.ctime_nsec(),
                content,
            ),
        );
        if md.is_dir() {
            for e in fs::read_dir(&p).expect("readdir").flatten() {
                stack.push(e.path());
            }
        }
    }
    out
}

/// A canary outside the target, shaped like the snapshot so a followed link would land in it.
fn make_canary(dir: &Path) {
    write(&dir.join("d/h.txt"), b"canary h");
    write(&dir.join("d/sub/g.txt"), b"canary g");
    write(&dir.join("f.txt"), b"canary f");
    write(&dir.join(".cairn-restoring"), b"canary marker");
    write(&dir.join(".cairn-snapshot"), b"canary snapshot");
    fs::create_dir_all(dir.join(".cairn-staging")).expect("mkdir");
    for p in ["d/h.txt", "d/sub/g.txt", "f.txt"] {
        fs::set_permissions(dir.join(p), fs::Permissions::from_mode(0o640)).expect("chmod");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_into_a_target_an_agent_swaps_under_them_touch_nothing_outside() {
    let t = TestRepo::new().await;
    let src = t.scratch("src");
    for i in 0..200 {
        write(&src.join(format!("d/sub/file-{i}")), &random_bytes(i, 3000));
    }
    write(&src.join("d/sub/g.txt"), &random_bytes(900, 20 << 10));
    write(&src.join("d/h.txt"), b"restored h");
    write(&src.join("f.txt"), b"restored f");
    fs::set_permissions(src.join("f.txt"), fs::Permissions::from_mode(0o600)).expect("chmod");
    let first = t.backup("ws", &src).await.snapshot;
    write(&src.join("d/sub/g.txt"), &random_bytes(901, 20 << 10));
    write(&src.join("d/new.txt"), b"new");
    let second = t.backup("ws", &src).await.snapshot;

    let canary = t.scratch("canary");
    make_canary(&canary);
    let before = canary_state(&canary);
    let target = t.scratch("target");
    let (agent, _) = Agent::start(&[
        "swap",
        target.to_str().expect("utf-8"),
        canary.to_str().expect("utf-8"),
        "d",
        "d/sub",
        "d/sub/g.txt",
        "f.txt",
        ".cairn-restoring",
        ".cairn-snapshot",
        ".cairn-staging",
    ]);
    let (mut ok, mut refused) = (0, 0);
    for round in 0..20 {
        // A full restore, then an update restore from the first snapshot to the second.
        match t.try_restore("ws", Some(&first), &target).await {
            Ok(_) => ok += 1,
            Err(_) => refused += 1,
        }
        let (id, manifest) = t
            .repo
            .resolve("ws", Some(&second.to_hex()))
            .await
            .expect("resolve");
        let (_, previous) = t
            .repo
            .resolve("ws", Some(&first.to_hex()))
            .await
            .expect("resolve");
        let mut opts = cairn_engine::RestoreOptions::new(&target);
        opts.previous = Some((first, previous));
        match cairn_engine::restore(&t.repo, id, &manifest, &opts, Default::default()).await {
            Ok(_) => ok += 1,
            Err(_) => refused += 1,
        }
        assert_eq!(canary_state(&canary), before, "round {round}: the canary changed");
    }
    drop(agent);
    eprintln!("hostile: {ok} restores completed, {refused} refused a target changed under them");
    assert_eq!(canary_state(&canary), before, "the canary changed");

    // With the agent gone, a restore succeeds and says so only once the tree is whole.
    let r = t.try_restore("ws", Some(&second), &target).await;
    assert!(r.is_ok(), "{r:?}");
    let m = cairn_engine::read_marker(&target).expect("marker");
    assert_eq!(m.snapshot, Some(second));
    assert_eq!(fs::read(target.join("d/new.txt")).expect("new"), b"new");
    assert_eq!(fs::read(target.join("d/h.txt")).expect("h"), b"restored h");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_links_at_the_marker_and_staging_names_are_replaced_not_followed() {
    let t = TestRepo::new().await;
    let src = t.scratch("src");
    write(&src.join("f.txt"), b"one");
    let first = t.backup("ws", &src).await.snapshot;
    fs::rename(src.join("f.txt"), src.join("g.txt")).expect("mv");
    let second = t.backup("ws", &src).await.snapshot;
    let canary = t.scratch("canary");
    make_canary(&canary);
    let before = canary_state(&canary);

    let target = t.scratch("target");
    t.restore("ws", Some(&first), &target).await;
    for name in [".cairn-restoring", ".cairn-staging"] {
        std::os::unix::fs::symlink(canary.join(name), target.join(name)).expect("plant");
    }
    fs::remove_file(target.join(".cairn-snapshot")).expect("rm marker");
    std::os::unix::fs::symlink(canary.join(".cairn-snapshot"), target.join(".cairn-snapshot"))
        .expect("plant");
    assert!(
        cairn_engine::read_marker(&target).is_none(),
        "a planted marker link was read"
    );
    let (id, manifest) = t
        .repo
        .resolve("ws", Some(&second.to_hex()))
        .await
        .expect("resolve");
    let (_, previous) = t
        .repo
        .resolve("ws", Some(&first.to_hex()))
        .await
        .expect("resolve");
    let mut opts = cairn_engine::RestoreOptions::new(&target);
    opts.previous = Some((first, previous));
    let r = cairn_engine::restore(&t.repo, id, &manifest, &opts, Default::default())
        .await
        .expect("restore");
    assert!(r.update && r.reused > 0, "{r:?}");
    assert_eq!(canary_state(&canary), before, "the canary changed");
    let md = fs::symlink_metadata(target.join(".cairn-snapshot")).expect("marker");
    assert!(md.is_file(), "the marker is a file of its own");
    assert!(
        !target.join(".cairn-restoring").exists()
            && fs::symlink_metadata(target.join(".cairn-restoring")).is_err()
    );
    assert!(fs::symlink_metadata(target.join(".cairn-staging")).is_err());
    assert_eq!(fs::read(target.join("g.txt")).expect("g"), b"one");

    // A backup rewrites the marker in place: never through a link planted there.
    fs::remove_file(target.join(".cairn-snapshot")).expect("rm");
    std::os::unix::fs::symlink(canary.join(".cairn-snapshot"), target.join(".cairn-snapshot"))
        .expect("plant");
    t.backup("ws", &target).await;
    assert_eq!(canary_state(&canary), before, "the canary changed");
}

#[test]
fn each_kind_of_mismatch_between_listed_and_opened_is_named() {
    use cairn_engine::{same_entry, Mismatch, WorkspaceDir};
    use std::ffi::OsStr;
    let dir = tempfile::tempdir().expect("tempdir");
    write(&dir.path().join("a"), b"a");
    write(&dir.path().join("b"), b"b");
    fs::create_dir(dir.path().join("sub")).expect("mkdir");
    let root = WorkspaceDir::open(dir.path()).expect("open");
    let listed = root.stat_at(OsStr::new("a")).expect("lstat");

    // Type: a directory where the file was listed.
    let sub = root.open_dir(Path::new("sub")).expect("open sub");
    assert_eq!(
        same_entry(&listed, &sub.stat().expect("fstat")),
        Err(Mismatch::Type)
    );
    // Inode: another file renamed over it between the listing and the open.
    fs::rename(dir.path().join("b"), dir.path().join("a")).expect("mv");
    let opened = root.open_file(OsStr::new("a")).expect("open").expect("a file");
    assert_eq!(same_entry(&listed, &opened.stat), Err(Mismatch::Inode));
    // Device: a file of another file system (tmpfs).
    let shm = tempfile::tempdir_in("/dev/shm").expect("tmpfs dir");
    write(&shm.path().join("x"), b"x");
    let other = WorkspaceDir::open(shm.path()).expect("open");
    let there = other.open_file(OsStr::new("x")).expect("open").expect("a file");
    assert_ne!(
        there.stat.dev, listed.dev,
        "/dev/shm is expected to be a tmpfs of its own"
    );
    assert_eq!(same_entry(&listed, &there.stat), Err(Mismatch::Device));
    // And the same entry is the same.
    let a = root.stat_at(OsStr::new("a")).expect("lstat");
    assert_eq!(same_entry(&a, &opened.stat), Ok(()));
    // A FIFO is never opened for reading: open_file reports what is there instead.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.path().join("fifo"),
        rustix::fs::FileType::Fifo,
        0o644.into(),
        0,
    )
    .expect("mkfifo");
    let r = root.open_file(OsStr::new("fifo")).expect("open_path");
    assert!(matches!(r, Err(st) if st.kind() == rustix::fs::FileType::Fifo));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_inside_the_workspace_is_not_crossed() {
    let t = TestRepo::new().await;
    let ws = t.scratch("ws");
    write(&ws.join("plain.txt"), b"plain");
    fs::create_dir_all(ws.join("mnt")).expect("mkdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(ws.join("mnt"))
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("hostile: skipped: this process cannot mount a tmpfs (needs root and CAP_SYS_ADMIN)");
        return;
    }
    let _unmount = Unmount(ws.join("mnt"));
    write(&ws.join("mnt/elsewhere.txt"), b"on another file system");
    let r = t.backup("ws", &ws).await;
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("mnt") && w.contains("mounted")),
        "{:?}",
        r.warnings
    );
    let out = t.scratch("out");
    t.restore("ws", Some(&r.snapshot), &out).await;
    assert!(out.join("plain.txt").is_file());
    assert!(!out.join("mnt").exists(), "the mount point was crossed");
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_deeper_than_the_walk_goes_is_left_out_with_a_warning() {
    let t = TestRepo::new().await;
    let ws = t.scratch("ws");
    write(&ws.join("top.txt"), b"top");
    // Build it by descriptor: the path is longer than PATH_MAX.
    let mut dir = fs::File::open(&ws).expect("open");
    for _ in 0..cairn_engine::MAX_DEPTH + 20 {
        rustix::fs::mkdirat(&dir, "d", 0o755.into()).expect("mkdir");
        dir = rustix::fs::openat(&dir, "d", rustix::fs::OFlags::DIRECTORY, 0.into())
            .expect("open")
            .into();
    }
    let r = t.backup("ws", &ws).await;
    assert!(
        r.warnings.iter().any(|w| w.contains("nested deeper")),
        "{:?}",
        r.warnings
    );
    let out = t.scratch("out");
    t.restore("ws", Some(&r.snapshot), &out).await;
    assert_eq!(fs::read(out.join("top.txt")).expect("top"), b"top");
    // The restore's removal (by descriptor, no recursion) takes the deep tree away too.
    let root = cairn_engine::WorkspaceDir::open(&ws).expect("open");
    root.remove(std::ffi::OsStr::new("d"))
        .expect("remove the deep tree");
    assert!(!ws.join("d").exists());
}
