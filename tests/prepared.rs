//! Things the suite prepares once per machine (the corpus workspace, filesystem images, database
//! binaries), however many tests and processes ask for them at the same time.
//!
//! An item is a directory `<root>/<name>-<version>`; `version` names what it was built from (a
//! hash of the script, say), so a changed recipe builds a new item beside the old one and no
//! process ever deletes a complete item another may be using. The protocol:
//!
//! 1. `<item>.complete` exists: the item is whole; use it (no lock).
//! 2. Otherwise take an exclusive `flock` on `<item>.lock`. `flock` locks belong to the open file
//!    description, so threads of one process that each open the lock file exclude each other just
//!    as processes do. Check the marker again: another holder may have finished meanwhile.
//! 3. Remove whatever a killed run left (`<item>` without its marker, `<item>.building-*`),
//!    build into `<item>.building-<pid>`, rename it to `<item>`, and only then write the marker.
//!    A run killed at any step leaves no marker, so its leftovers are detected and rebuilt, never
//!    used. The lock dies with its process, so a killed builder never blocks the next one.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The directory of item `name` at `version` under `root`, built by `build` if no complete copy
/// exists. `build` gets an empty directory to fill; an error (or a panic) publishes nothing.
///
/// # Panics
/// If the cache directory cannot be written or `build` fails: the tests that need the item
/// cannot run without it, and the message says what failed.
pub fn prepared(
    root: &Path,
    name: &str,
    version: &str,
    build: impl FnOnce(&Path) -> Result<(), String>,
) -> PathBuf {
    let item = root.join(format!("{name}-{version}"));
    let marker = sibling(&item, ".complete");
    if marker.exists() {
        return item;
    }
    fs::create_dir_all(root)
        .unwrap_or_else(|e| panic!("{}: cannot create the cache directory: {e}", root.display()));
    let lock_path = sibling(&item, ".lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("{}: {e}", lock_path.display()));
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .unwrap_or_else(|e| panic!("{}: flock: {e}", lock_path.display()));
    if marker.exists() {
        return item;
    }
    remove_leftovers(root, &item);
    let building = sibling(&item, &format!(".building-{}", std::process::id()));
    fs::create_dir_all(&building).unwrap_or_else(|e| panic!("{}: {e}", building.display()));
    if let Err(e) = build(&building) {
        let _ = fs::remove_dir_all(&building);
        panic!("preparing {name} failed: {e}");
    }
    fs::rename(&building, &item).unwrap_or_else(|e| panic!("{}: publishing: {e}", item.display()));
    sync_dir(root);
    let tmp = sibling(&item, ".complete.tmp");
    let mut f = File::create(&tmp).unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
    f.write_all(version.as_bytes())
        .and_then(|()| f.sync_all())
        .unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
    fs::rename(&tmp, &marker).unwrap_or_else(|e| panic!("{}: {e}", marker.display()));
    sync_dir(root);
    drop(lock);
    item
}

/// A version string for an item built from these inputs (script texts, parameters).
pub fn version_of(inputs: &[&[u8]]) -> String {
    let mut h = blake3::Hasher::new();
    for i in inputs {
        h.update(&(i.len() as u64).to_le_bytes());
        h.update(i);
    }
    h.finalize().to_hex()[..16].to_string()
}

fn sibling(item: &Path, suffix: &str) -> PathBuf {
    let mut s = item.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Removes an unmarked item and any build directory of it (only ever called under the lock).
fn remove_leftovers(root: &Path, item: &Path) {
    let remove = |p: &Path| match fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => fs::remove_dir_all(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        Ok(_) => fs::remove_file(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        Err(_) => {}
    };
    remove(item);
    let prefix = sibling(item, ".building-");
    let prefix = prefix.file_name().expect("invariant: item has a name").to_owned();
    if let Ok(rd) = fs::read_dir(root) {
        for e in rd.flatten() {
            if e.file_name()
                .as_encoded_bytes()
                .starts_with(prefix.as_encoded_bytes())
            {
                remove(&e.path());
            }
        }
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The build the preparation test uses (in the test process and in `cairn-test-helper prepare`):
/// slow enough that concurrent callers overlap, and logged so the test can count builds.
pub fn probe_build(root: &Path, dir: &Path, delay: std::time::Duration) -> Result<(), String> {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join("builds.log"))
        .map_err(|e| e.to_string())?;
    writeln!(log, "{}", std::process::id()).map_err(|e| e.to_string())?;
    for i in 0..PROBE_FILES {
        fs::write(dir.join(format!("part-{i}")), vec![i as u8; 4096]).map_err(|e| e.to_string())?;
        std::thread::sleep(delay / PROBE_FILES as u32);
    }
    Ok(())
}

/// Files a complete probe item holds.
pub const PROBE_FILES: usize = 20;

/// How many of the probe's files `item` holds, whole.
pub fn probe_files_whole(item: &Path) -> usize {
    (0..PROBE_FILES)
        .filter(|i| fs::read(item.join(format!("part-{i}"))).is_ok_and(|b| b == vec![*i as u8; 4096]))
        .count()
}

/// The corpus workspace recipe (`shared/corpus/make-workspace.sh`).
pub fn corpus_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/make-workspace.sh")
}

/// The cached pristine corpus workspace (SEED 1), built once per machine from the package
/// registries under `$CAIRN_CORPUS_DIR` (default `~/.cache/cairn-corpus`). Tests work on copies.
pub fn corpus_workspace() -> PathBuf {
    let base = std::env::var_os("CAIRN_CORPUS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/cairn-corpus")
        });
    let recipe = fs::read(corpus_script()).expect("read make-workspace.sh");
    let version = version_of(&[&recipe, b"SEED=1"]);
    let item = prepared(&base, "ws-seed1", &version, |dir| {
        // The script creates its directory itself.
        let o = std::process::Command::new("bash")
            .arg(corpus_script())
            .arg(dir.join("ws"))
            .env("SEED", "1")
            .output()
            .map_err(|e| format!("run make-workspace.sh: {e}"))?;
        if o.status.success() {
            Ok(())
        } else {
            Err(format!(
                "make-workspace.sh failed (it needs npm, python3 and the package registries): {}",
                String::from_utf8_lossy(&o.stderr)
            ))
        }
    });
    item.join("ws")
}
