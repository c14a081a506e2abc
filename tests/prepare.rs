//! The once-per-machine preparation of cached items (`cairn_tests::prepared`): many threads and
//! processes asking at once get one build, and a build killed half-way is rebuilt, never used.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use cairn_tests::prepared::{prepared, probe_build, probe_files_whole, PROBE_FILES};

fn helper() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cairn-test-helper"))
}

fn builds(root: &Path) -> usize {
    std::fs::read_to_string(root.join("builds.log"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[test]
fn threads_and_processes_asking_at_once_share_one_build() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path().to_path_buf();
    let children: Vec<_> = (0..2)
        .map(|_| {
            helper()
                .args(["prepare", root.to_str().expect("utf-8"), "600"])
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn helper")
        })
        .collect();
    let barrier = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (root, barrier) = (root.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let item = prepared(&root, "probe", "v1", |dir| {
                    probe_build(&root, dir, Duration::from_millis(600))
                });
                probe_files_whole(&item)
            })
        })
        .collect();
    for t in threads {
        assert_eq!(
            t.join().expect("thread"),
            PROBE_FILES,
            "a thread got a partial item"
        );
    }
    for c in children {
        let o = c.wait_with_output().expect("helper");
        assert!(o.status.success(), "helper failed");
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            PROBE_FILES.to_string(),
            "a process got a partial item"
        );
    }
    assert_eq!(builds(&root), 1, "the item was built more than once");
    let leftovers: Vec<_> = std::fs::read_dir(&root)
        .expect("list")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".building-"))
        .collect();
    assert!(leftovers.is_empty(), "build directories left behind");
}

#[test]
fn a_build_killed_half_way_is_rebuilt_never_used() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path().to_path_buf();
    let mut child = helper()
        .args(["prepare", root.to_str().expect("utf-8"), "20000"])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn helper");
    // Wait until the build is under way (it logged itself and wrote a file or two), then kill it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while builds(&root) == 0 || !half_built(&root) {
        assert!(
            std::time::Instant::now() < deadline,
            "the helper never started building"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill");
    child.wait().expect("reap");
    assert!(!root.join("probe-v1.complete").exists());

    let item = prepared(&root, "probe", "v1", |dir| {
        probe_build(&root, dir, Duration::ZERO)
    });
    assert_eq!(probe_files_whole(&item), PROBE_FILES);
    assert_eq!(
        builds(&root),
        2,
        "the killed build's leftovers were used instead of rebuilt"
    );
    // And an item published without its marker (killed between the rename and the marker) is
    // rebuilt too.
    std::fs::remove_file(root.join("probe-v1.complete")).expect("drop marker");
    std::fs::remove_file(item.join("part-3")).expect("damage");
    let item = prepared(&root, "probe", "v1", |dir| {
        probe_build(&root, dir, Duration::ZERO)
    });
    assert_eq!(probe_files_whole(&item), PROBE_FILES);
    assert_eq!(builds(&root), 3);
}

fn half_built(root: &Path) -> bool {
    std::fs::read_dir(root).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            e.file_name().to_string_lossy().contains(".building-")
                && std::fs::read_dir(e.path()).is_ok_and(|mut d| d.next().is_some())
        })
    })
}
