//! Bad input gets one clear error naming the object or path, and costs nothing already stored.

use std::path::{Path, PathBuf};

use cairn_engine::{open_store, Error, Repo};

use crate::support::*;

/// Two workspaces with disjoint data: `old` must survive whatever happens to `new`'s objects.
struct TwoSnapshots {
    t: TestRepo,
    old_src: PathBuf,
    new_data_packs: Vec<PathBuf>,
    new_meta_packs: Vec<PathBuf>,
    new_records: Vec<PathBuf>,
}

async fn two_snapshots() -> TwoSnapshots {
    let t = TestRepo::new().await;
    let old_src = t.scratch("old");
    write(&old_src.join("data.bin"), &random_bytes(100, 500 << 10));
    t.backup("old", &old_src).await;
    let (d0, m0, i0) = (
        t.objects("packs/data"),
        t.objects("packs/meta"),
        t.objects("index"),
    );
    let new_src = t.scratch("new");
    write(&new_src.join("data.bin"), &random_bytes(200, 500 << 10));
    write(&new_src.join("sub/other.bin"), &random_bytes(201, 300 << 10));
    t.backup("new", &new_src).await;
    let diff = |before: Vec<PathBuf>, after: Vec<PathBuf>| -> Vec<PathBuf> {
        after.into_iter().filter(|p| !before.contains(p)).collect()
    };
    let new_data_packs = diff(d0, t.objects("packs/data"));
    let new_meta_packs = diff(m0, t.objects("packs/meta"));
    let new_records = diff(i0, t.objects("index"));
    assert!(!new_data_packs.is_empty() && !new_meta_packs.is_empty() && new_records.len() == 1);
    TwoSnapshots {
        t,
        old_src,
        new_data_packs,
        new_meta_packs,
        new_records,
    }
}

impl TwoSnapshots {
    /// The earlier workspace is untouched: it restores and verifies.
    async fn old_is_intact(&self) {
        let out = self.t.scratch("old-out");
        let _ = std::fs::remove_dir_all(&out);
        self.t.restore("old", None, &out).await;
        assert_same_tree(&self.old_src, &out);
    }

    async fn restore_new_fails(&self) -> (Error, PathBuf) {
        let out = self.t.scratch("new-out");
        let err = self
            .t
            .try_restore("new", None, &out)
            .await
            .expect_err("restore must fail");
        assert!(
            cairn_engine::read_marker(&out).is_none(),
            "a failed restore must not leave a completion marker"
        );
        (err, out)
    }
}

fn key_of(store: &Path, p: &Path) -> String {
    p.strip_prefix(store)
        .expect("under store")
        .to_string_lossy()
        .into_owned()
}

fn flip_byte(path: &Path, at: u64) {
    let mut b = std::fs::read(path).expect("read");
    let i = (at as usize).min(b.len() - 1);
    b[i] ^= 0x40;
    std::fs::write(path, b).expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninitialized_store_says_run_init() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path().to_str().expect("utf-8"))
        .await
        .expect("store");
    let err = Repo::open(store).await.expect_err("no repo");
    assert!(matches!(err, Error::NoRepository { .. }), "{err}");
    assert!(err.to_string().contains("initctl init"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_twice_changes_nothing() {
    let t = TestRepo::new().await;
    let before = std::fs::read(t.store_dir().join("config")).expect("config");
    let store = open_store(t.store_dir().to_str().expect("utf-8"))
        .await
        .expect("store");
    let err = Repo::init(store, Default::default())
        .await
        .expect_err("second init");
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(
        std::fs::read(t.store_dir().join("config")).expect("config"),
        before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_workspace_and_snapshot_are_named() {
    let s = two_snapshots().await;
    let err = s.t.repo.resolve("nobody", None).await.expect_err("unknown ws");
    assert!(
        matches!(err, Error::Unknown(_)) && err.to_string().contains("nobody"),
        "{err}"
    );
    let err =
        s.t.repo
            .resolve("new", Some("deadbeef"))
            .await
            .expect_err("unknown snapshot");
    assert!(err.to_string().contains("deadbeef"), "{err}");
    let err = s.t.repo.resolve("new", Some("zz")).await.expect_err("bad id");
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    let err = s.t.repo.resolve("../etc", None).await.expect_err("bad name");
    assert!(err.to_string().contains("workspace name"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_in_a_data_pack_is_caught_and_named() {
    let s = two_snapshots().await;
    let pack = &s.new_data_packs[0];
    flip_byte(pack, 200);
    let (err, _) = s.restore_new_fails().await;
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(&key_of(&s.t.store_dir(), pack)), "{err}");

    let report = cairn_engine::check(&s.t.repo, true, Default::default())
        .await
        .expect("check runs");
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.contains(&key_of(&s.t.store_dir(), pack))),
        "{:?}",
        report.errors
    );
    let structural = cairn_engine::check(&s.t.repo, false, Default::default())
        .await
        .expect("check");
    assert!(
        structural.errors.is_empty(),
        "structure is fine: {:?}",
        structural.errors
    );
    s.old_is_intact().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_pack_is_caught_and_named() {
    let s = two_snapshots().await;
    let pack = &s.new_data_packs[0];
    std::fs::remove_file(pack).expect("rm");
    let (err, _) = s.restore_new_fails().await;
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(err.to_string().contains(&key_of(&s.t.store_dir(), pack)), "{err}");
    let report = cairn_engine::check(&s.t.repo, false, Default::default())
        .await
        .expect("check");
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.contains("missing") && e.contains(&key_of(&s.t.store_dir(), pack))),
        "{:?}",
        report.errors
    );
    s.old_is_intact().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_tree_pack_is_caught() {
    let s = two_snapshots().await;
    flip_byte(&s.new_meta_packs[0], 20);
    let (err, _) = s.restore_new_fails().await;
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("tree"), "{err}");
    s.old_is_intact().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_index_record_is_caught_and_named() {
    let s = two_snapshots().await;
    let rec = &s.new_records[0];
    let b = std::fs::read(rec).expect("read");
    std::fs::write(rec, &b[..b.len() / 2]).expect("truncate");
    let (err, _) = s.restore_new_fails().await;
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains(&key_of(&s.t.store_dir(), rec)), "{err}");
    let report = cairn_engine::check(&s.t.repo, false, Default::default())
        .await
        .expect("check");
    assert!(!report.errors.is_empty());
    s.old_is_intact().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_manifest_is_caught_and_named() {
    let s = two_snapshots().await;
    let snaps = s.t.objects("snapshots/new");
    assert_eq!(snaps.len(), 1);
    flip_byte(&snaps[0], 30);
    let err = s.t.repo.resolve("new", None).await.expect_err("corrupt manifest");
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains(&key_of(&s.t.store_dir(), &snaps[0])),
        "{err}"
    );
    s.old_is_intact().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_of_a_missing_or_non_directory_source_fails_clearly() {
    let t = TestRepo::new().await;
    let missing = t.scratch("missing");
    let err = t.try_backup("ws", &missing).await.expect_err("missing source");
    assert!(err.to_string().contains(&missing.display().to_string()), "{err}");
    let file = t.scratch("file");
    write(&file, b"x");
    let err = t.try_backup("ws", &file).await.expect_err("file source");
    assert!(err.to_string().contains("not a directory"), "{err}");
    assert!(
        t.repo.head("ws").await.expect("head").is_none(),
        "no head after failed backups"
    );
}
