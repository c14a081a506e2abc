//! Test support: repositories in temp dirs, generated trees, an independent comparer, the CLI.

#![allow(dead_code)]

pub mod fsimage;
pub mod pg;
pub mod servers;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use cairn_engine::formats::{ChunkerParams, PackTargets, SnapshotId};
use cairn_engine::{
    backup, open_store, restore, BackupOptions, BackupReport, InitOptions, Progress, Repo, RestoreOptions,
    RestoreReport,
};
use rand::{Rng, RngCore, SeedableRng};

/// A repository on a local store with its own cache dir, all in one temp dir.
pub struct TestRepo {
    pub dir: tempfile::TempDir,
    pub repo: Repo,
}

/// The key file every test repository is encrypted with (32 random bytes, written once per run).
pub fn test_key() -> &'static Path {
    static KEY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("cairn-test-key-{}", std::process::id()));
        std::fs::write(&path, random_bytes(std::process::id().into(), 32)).expect("write the test key file");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
        path
    })
}

/// Where the test repositories' key comes from.
pub fn keys() -> cairn_engine::KeySource {
    cairn_engine::KeySource::file(test_key())
}

/// A command running one of the workspace's binaries with the test key file in its environment.
pub fn cairn_command(name: &str) -> Command {
    let mut cmd = Command::new(bin_path(name));
    cmd.env("CAIRN_KEY_FILE", test_key());
    cmd
}

/// Default parameters, encrypted with the test key.
pub fn default_params() -> InitOptions {
    InitOptions {
        key: Some(cairn_engine::NewKey::File(test_key().to_path_buf())),
        ..InitOptions::default()
    }
}

/// Small chunks and packs, so that small test trees exercise multi-chunk files and many packs.
pub fn small_params() -> InitOptions {
    InitOptions {
        key: Some(cairn_engine::NewKey::File(test_key().to_path_buf())),
        chunker: Some(ChunkerParams {
            min: 4 << 10,
            avg: 16 << 10,
            max: 64 << 10,
        }),
        zstd_level: None,
        packs: Some(PackTargets {
            data: 256 << 10,
            meta: 64 << 10,
        }),
    }
}

impl TestRepo {
    /// Small chunks and packs so that small test trees exercise multi-chunk files and many packs.
    pub async fn new() -> TestRepo {
        Self::with(small_params()).await
    }

    /// The defaults a user gets.
    pub async fn default_params() -> TestRepo {
        Self::with(default_params()).await
    }

    /// Opens the repository again, as another process would.
    pub async fn reopen(&self) -> Repo {
        Repo::open_with(self.repo.store().clone(), &keys())
            .await
            .expect("reopen")
    }

    /// A repository on `store`, with a local cache in a temp dir.
    pub async fn on_store(store: Arc<dyn cairn_engine::Store>, opts: InitOptions) -> TestRepo {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = Repo::init(store, opts).await.expect("init");
        TestRepo { dir, repo }
    }

    pub async fn with(opts: InitOptions) -> TestRepo {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open_store(dir.path().join("store").to_str().expect("utf-8 temp path"))
            .await
            .expect("store");
        let repo = Repo::init(store, opts).await.expect("init");
        TestRepo { dir, repo }
    }

    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    pub fn scratch(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub async fn backup(&self, ws: &str, source: &Path) -> BackupReport {
        self.try_backup(ws, source).await.expect("backup")
    }

    pub async fn try_backup(&self, ws: &str, source: &Path) -> cairn_engine::Result<BackupReport> {
        let opts = BackupOptions {
            max_session: cairn_engine::max_session_from_env(),
            dedup_fetches: cairn_engine::dedup_fetches_from_env(),
            workspace: ws.into(),
            source: source.to_path_buf(),
            cache_dir: self.cache_dir(),
            tags: vec![],
            host: Some("test".into()),
            freeze: Default::default(),
        };
        backup(&self.repo, &opts, Arc::new(Progress::default())).await
    }

    pub async fn restore(&self, ws: &str, snapshot: Option<&SnapshotId>, target: &Path) -> RestoreReport {
        self.try_restore(ws, snapshot, target).await.expect("restore")
    }

    pub async fn try_restore(
        &self,
        ws: &str,
        snapshot: Option<&SnapshotId>,
        target: &Path,
    ) -> cairn_engine::Result<RestoreReport> {
        restore_from(&self.repo, ws, snapshot, target).await
    }

    /// Every file under the store, relative key -> path.
    pub fn objects(&self, prefix: &str) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![self.store_dir().join(prefix)];
        while let Some(d) = stack.pop() {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if !e.file_name().to_string_lossy().starts_with('.') {
                    out.push(p);
                }
            }
        }
        out.sort();
        out
    }
}

/// Restores `snapshot` (the head with `None`) of `ws` into `target` through `repo` (a test may
/// open a fresh handle, with nothing cached).
pub async fn restore_from(
    repo: &Repo,
    ws: &str,
    snapshot: Option<&SnapshotId>,
    target: &Path,
) -> cairn_engine::Result<RestoreReport> {
    let s = snapshot.map(|s| s.to_hex());
    let (id, m) = repo.resolve(ws, s.as_deref()).await?;
    let opts = RestoreOptions::new(target);
    restore(repo, id, &m, &opts, Arc::new(Progress::default())).await
}

/// `check` of the whole repository (downloading every pack with `read_data`).
pub async fn check_repo(repo: &Repo, read_data: bool) -> cairn_engine::CheckReport {
    cairn_engine::check(repo, read_data, Arc::new(Progress::default()))
        .await
        .expect("check")
}

pub fn is_root() -> bool {
    cairn_engine::is_root()
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

pub fn write(path: &Path, data: &[u8]) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).expect("mkdir");
    }
    fs::File::create(path)
        .and_then(|mut f| f.write_all(data))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

pub fn set_mtime(path: &Path, secs: i64, nanos: i64) {
    let t = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: secs,
            tv_nsec: nanos,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: secs,
            tv_nsec: nanos,
        },
    };
    rustix::fs::utimensat(rustix::fs::CWD, path, &t, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
        .expect("utimensat");
}

/// Builds a tree with every kind of entry and metadata the format covers.
pub fn build_everything_tree(root: &Path, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    fs::create_dir_all(root).expect("mkdir root");
    // Regular files: empty, tiny, one chunk, many chunks, compressible, incompressible.
    write(&root.join("empty"), b"");
    write(&root.join("tiny.txt"), b"hello\n");
    write(
        &root.join("src/lib.rs"),
        &b"fn main() { println!(\"hi\"); }\n".repeat(500),
    );
    write(&root.join("assets/big.bin"), &random_bytes(seed, 700 << 10));
    write(&root.join("assets/zeros.bin"), &vec![0u8; 300 << 10]);
    for i in 0..40 {
        let n = rng.gen_range(0..20_000);
        write(
            &root.join(format!("many/f{i:03}.dat")),
            &random_bytes(seed + i, n),
        );
    }
    // Empty directories, deep nesting.
    fs::create_dir_all(root.join("empty-dir")).expect("mkdir");
    fs::create_dir_all(root.join("a/b/c/d/e/f/g")).expect("mkdir");
    write(&root.join("a/b/c/d/e/f/g/deep.txt"), b"deep");
    // Symlinks: relative, absolute, dangling, to a directory.
    std::os::unix::fs::symlink("tiny.txt", root.join("link-rel")).expect("symlink");
    std::os::unix::fs::symlink("/etc/hostname", root.join("link-abs")).expect("symlink");
    std::os::unix::fs::symlink("does/not/exist", root.join("link-dangling")).expect("symlink");
    std::os::unix::fs::symlink("a/b", root.join("link-dir")).expect("symlink");
    // Hard links, across directories.
    write(&root.join("hard/one"), b"linked content");
    fs::hard_link(root.join("hard/one"), root.join("hard/two")).expect("hardlink");
    fs::hard_link(root.join("hard/one"), root.join("many/three")).expect("hardlink");
    // Permission bits including setuid, setgid, sticky; read-only dir.
    write(&root.join("modes/suid"), b"#!/bin/sh\n");
    fs::set_permissions(root.join("modes/suid"), fs::Permissions::from_mode(0o4755)).expect("chmod");
    write(&root.join("modes/sgid"), b"x");
    fs::set_permissions(root.join("modes/sgid"), fs::Permissions::from_mode(0o2750)).expect("chmod");
    fs::create_dir_all(root.join("modes/sticky")).expect("mkdir");
    fs::set_permissions(root.join("modes/sticky"), fs::Permissions::from_mode(0o1777)).expect("chmod");
    write(&root.join("modes/private"), b"secret");
    fs::set_permissions(root.join("modes/private"), fs::Permissions::from_mode(0o600)).expect("chmod");
    write(&root.join("modes/ro-dir/inside"), b"x");
    // Sparse file: data, a 2 MiB hole, data, and a trailing hole.
    {
        let f = fs::File::create(root.join("sparse.img")).expect("create");
        use std::os::unix::fs::FileExt;
        f.write_all_at(&random_bytes(seed + 99, 10_000), 0)
            .expect("write");
        f.write_all_at(&random_bytes(seed + 98, 10_000), 3 << 20)
            .expect("write");
        f.set_len(6 << 20).expect("set_len");
    }
    // Extended attributes.
    write(&root.join("xattr.txt"), b"has attributes");
    xattr::set(root.join("xattr.txt"), "user.comment", b"a comment").expect("set xattr");
    xattr::set(root.join("xattr.txt"), "user.empty", b"").expect("set xattr");
    fs::create_dir_all(root.join("xattr-dir")).expect("mkdir");
    xattr::set(root.join("xattr-dir"), "user.dir", b"on a directory").expect("set xattr");
    // A FIFO.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("pipe"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .expect("mkfifo");
    // Non-UTF-8 and odd names.
    write(&root.join(OsStr::from_bytes(b"latin1-\xe9t\xe9")), b"bytes name");
    write(&root.join("spaces and 'quotes' \"here\""), b"q");
    write(&root.join("unicode-\u{1F980}-名前"), b"u");
    write(&root.join(".hidden"), b"dot");
    // Owners (only root can give files away).
    if is_root() {
        write(&root.join("owned/by-1234"), b"o");
        std::os::unix::fs::lchown(root.join("owned/by-1234"), Some(1234), Some(5678)).expect("chown");
        std::os::unix::fs::lchown(root.join("link-rel"), Some(4321), Some(8765)).expect("lchown");
        std::os::unix::fs::lchown(root.join("owned"), Some(42), Some(43)).expect("chown");
    }
    // Times with nanoseconds on files, links and directories (set last, deepest first).
    set_mtime(&root.join("tiny.txt"), 1_600_000_000, 123_456_789);
    set_mtime(&root.join("link-dangling"), 1_500_000_000, 987_654_321);
    set_mtime(&root.join("a/b/c"), 1_400_000_000, 1);
    set_mtime(&root.join("empty-dir"), 1_300_000_000, 999_999_999);
    fs::set_permissions(root.join("modes/ro-dir"), fs::Permissions::from_mode(0o555)).expect("chmod");
}

/// What one entry looks like, for comparison.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Seen {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub size: u64,
    pub content: Option<blake3::Hash>,
    pub link: Option<Vec<u8>>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub rdev: u64,
    /// Index of the first path seen with the same inode (hard links), by sorted path order.
    pub link_peer: Option<Vec<u8>>,
    /// Allocated blocks, to compare sparseness.
    pub blocks: u64,
}

/// Describes every entry under `root` (excluding the restore marker), keyed by relative path.
pub fn describe(root: &Path) -> BTreeMap<Vec<u8>, Seen> {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let mut paths = Vec::new();
    let mut stack = vec![(root.to_path_buf(), Vec::<u8>::new())];
    while let Some((d, rel)) = stack.pop() {
        paths.push((d.clone(), rel.clone()));
        let md = fs::symlink_metadata(&d).expect("lstat");
        if !md.is_dir() {
            continue;
        }
        for e in fs::read_dir(&d).expect("readdir").flatten() {
            let name = e.file_name();
            if rel.is_empty() && name == ".cairn-snapshot" {
                continue;
            }
            let mut r = rel.clone();
            if !r.is_empty() {
                r.push(b'/');
            }
            r.extend_from_slice(name.as_bytes());
            stack.push((e.path(), r));
        }
    }
    paths.sort_by(|a, b| a.1.cmp(&b.1));
    for (p, rel) in paths {
        let md = fs::symlink_metadata(&p).expect("lstat");
        let ft = md.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "other"
        };
        let content = ft.is_file().then(|| blake3::hash(&fs::read(&p).expect("read")));
        let link = ft.is_symlink().then(|| {
            fs::read_link(&p)
                .expect("readlink")
                .as_os_str()
                .as_bytes()
                .to_vec()
        });
        let mut xattrs = BTreeMap::new();
        if !ft.is_symlink() {
            for n in xattr::list(&p).expect("listxattr") {
                if n.as_bytes().starts_with(b"user.") {
                    xattrs.insert(
                        n.as_bytes().to_vec(),
                        xattr::get(&p, &n).expect("getxattr").unwrap_or_default(),
                    );
                }
            }
        }
        let link_peer = if ft.is_file() && md.nlink() > 1 {
            Some(
                inodes
                    .entry((md.dev(), md.ino()))
                    .or_insert_with(|| rel.clone())
                    .clone(),
            )
        } else {
            None
        };
        out.insert(
            rel,
            Seen {
                kind,
                mode: if ft.is_symlink() { 0 } else { md.mode() & 0o7777 },
                uid: md.uid(),
                gid: md.gid(),
                mtime: (md.mtime(), md.mtime_nsec()),
                size: if ft.is_dir() { 0 } else { md.len() },
                content,
                link,
                xattrs,
                rdev: md.rdev(),
                link_peer,
                blocks: if ft.is_file() { md.blocks() } else { 0 },
            },
        );
    }
    out
}

/// Asserts two trees are identical in content and metadata. Owners are compared when running as
/// root (only root can restore them). Sparse files must not take more blocks than the original
/// plus a little slack.
pub fn assert_same_tree(want: &Path, got: &Path) {
    let a = describe(want);
    let b = describe(got);
    let names_a: Vec<_> = a
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    let names_b: Vec<_> = b
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert_eq!(names_a, names_b, "different entries");
    let root = is_root();
    for (k, x) in &a {
        let y = &b[k];
        let name = String::from_utf8_lossy(k);
        assert_eq!(x.kind, y.kind, "{name}: kind");
        assert_eq!(x.mode, y.mode, "{name}: mode {:o} vs {:o}", x.mode, y.mode);
        assert_eq!(x.mtime, y.mtime, "{name}: mtime");
        assert_eq!(x.size, y.size, "{name}: size");
        assert_eq!(x.content, y.content, "{name}: content");
        assert_eq!(x.link, y.link, "{name}: symlink target");
        assert_eq!(x.xattrs, y.xattrs, "{name}: xattrs");
        assert_eq!(x.link_peer, y.link_peer, "{name}: hard-link structure");
        if x.kind == "fifo" || x.kind == "other" {
            assert_eq!(x.rdev, y.rdev, "{name}: rdev");
        }
        if root {
            assert_eq!((x.uid, x.gid), (y.uid, y.gid), "{name}: owner");
        }
        if x.kind == "file" && x.blocks * 512 < x.size {
            assert!(
                y.blocks <= x.blocks + 64,
                "{name}: sparse file restored dense ({} blocks vs {})",
                y.blocks,
                x.blocks
            );
        }
    }
}

/// Copies a tree with `cp -a` (keeps every attribute), for comparisons after the original changes.
pub fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

/// Makes a tree removable (undoes read-only directories) so temp dirs clean up.
pub fn make_writable(root: &Path) {
    let _ = Command::new("chmod").arg("-R").arg("u+rwX").arg(root).status();
}

/// The `initctl` binary of this build. `cargo test --workspace` builds it (the `initctl` package
/// has an integration test), with the same features as everything else, so it is never stale.
pub fn initctl_path() -> PathBuf {
    bin_path("initctl")
}

/// A binary of the workspace, built by `cargo test --workspace` next to the test binaries.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join(name);
    assert!(
        bin.exists(),
        "{} is missing: run the suite with `cargo test --workspace` (it builds the binary)",
        bin.display()
    );
    bin
}

/// Runs `initctl` with `args` and `env`, with a clean Cairn environment.
pub fn initctl(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(initctl_path());
    for (k, _) in std::env::vars() {
        if k.starts_with("CAIRN_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("CAIRN_KEY_FILE", test_key());
    cmd.args(args);
    for (k, v) in env {
        // An empty value means "unset", as a pod spec without the variable.
        if v.is_empty() {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    cmd.output().expect("run initctl")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
