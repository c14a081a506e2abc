//! Backup then restore reproduces every entry and every piece of metadata.

use std::sync::Arc;

use cairn_engine::{verify_dir, Progress, SnapshotTrees};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_tree_round_trips_bit_for_bit() {
    let t = TestRepo::new().await;
    let src = t.scratch("src");
    build_everything_tree(&src, 1);
    let b = t.backup("ws", &src).await;
    assert_eq!(b.stats.skipped, 0, "warnings: {:?}", b.warnings);
    assert!(b.stats.files >= 50, "{:?}", b.stats);

    let out = t.scratch("out");
    let r = t.restore("ws", None, &out).await;
    assert_eq!(r.files, b.stats.files);
    assert_same_tree(&src, &out);

    // The engine's own verifier agrees, and the marker names the snapshot.
    let (id, m) = t.repo.resolve("ws", None).await.expect("resolve");
    let trees = SnapshotTrees::load(&t.repo, &m).await.expect("trees");
    let v = verify_dir(&trees, &m, &out, None, &Progress::default()).expect("verify");
    assert!(v.mismatches.is_empty(), "{:?}", v.mismatches);
    let marker = cairn_engine::read_marker(&out).expect("marker");
    assert_eq!(marker.snapshot, Some(id));
    make_writable(&out);
    make_writable(&src);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_parameters_round_trip() {
    let t = TestRepo::default_params().await;
    let src = t.scratch("src");
    build_everything_tree(&src, 2);
    // A file larger than the default maximum chunk, so it streams through the chunker.
    write(&src.join("large.bin"), &random_bytes(7, 9 << 20));
    t.backup("ws", &src).await;
    let out = t.scratch("out");
    t.restore("ws", None, &out).await;
    assert_same_tree(&src, &out);
    make_writable(&out);
    make_writable(&src);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_into_a_populated_directory_replaces_what_differs() {
    let t = TestRepo::new().await;
    let src = t.scratch("src");
    build_everything_tree(&src, 3);
    t.backup("ws", &src).await;
    let out = t.scratch("out");
    // Conflicting types at snapshot paths: a directory where a file goes, a file where a
    // directory goes, a symlink where a directory goes.
    std::fs::create_dir_all(out.join("tiny.txt/sub")).expect("mkdir");
    write(&out.join("a"), b"not a directory");
    std::fs::create_dir_all(&out).expect("mkdir");
    std::os::unix::fs::symlink("/tmp", out.join("src")).expect("symlink");
    t.restore("ws", None, &out).await;
    assert_same_tree(&src, &out);
    make_writable(&out);
    make_writable(&src);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_an_older_snapshot_by_id_prefix() {
    let t = TestRepo::new().await;
    let src = t.scratch("src");
    write(&src.join("f"), b"one");
    let first = t.backup("ws", &src).await.snapshot;
    write(&src.join("f"), b"two, longer");
    t.backup("ws", &src).await;
    let out = t.scratch("out");
    let prefix = &first.to_hex()[..8];
    let (id, m) = t.repo.resolve("ws", Some(prefix)).await.expect("resolve prefix");
    assert_eq!(id, first);
    cairn_engine::restore(
        &t.repo,
        id,
        &m,
        &cairn_engine::RestoreOptions::new(&out),
        Arc::new(Progress::default()),
    )
    .await
    .expect("restore");
    assert_eq!(std::fs::read(out.join("f")).expect("read"), b"one");
}
