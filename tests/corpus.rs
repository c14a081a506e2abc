//! End to end on a realistic agent workspace (`shared/corpus/make-workspace.sh`): back up, apply
//! an agent session, back up again, and restore both snapshots identical in content and metadata.
//!
//! The workspace is built once per machine from the package registries and cached under
//! `$CAIRN_CORPUS_DIR` (default `~/.cache/cairn-corpus`), once however many tests ask at the same
//! time; each test works on a copy.

use std::process::Command;

use crate::support::*;

use cairn_tests::prepared::{corpus_script as script, corpus_workspace};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_workspace_backup_session_backup_restore_both() {
    let pristine = corpus_workspace();
    let t = TestRepo::default_params().await;
    let ws = t.scratch("ws");
    copy_tree(&pristine, &ws);
    let s1 = t.backup("agent", &ws).await;
    assert_eq!(s1.stats.skipped, 0, "{:?}", s1.warnings);
    assert!(s1.stats.files > 10_000, "{:?}", s1.stats);
    let before = t.scratch("before");
    copy_tree(&ws, &before);

    let o = Command::new("bash")
        .arg(script())
        .arg("--session")
        .arg(&ws)
        .env("SEED", "1")
        .output()
        .expect("session");
    assert!(
        o.status.success(),
        "session failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let s2 = t.backup("agent", &ws).await;
    assert_eq!(s2.parent, Some(s1.snapshot));
    // The session rewrites about 5,700 files (npm re-extracts much of node_modules); only those
    // are read, and since most of them are byte-identical, little is new.
    assert!(
        s2.stats.files_read < s1.stats.files / 3,
        "incremental backup read {} of {} files",
        s2.stats.files_read,
        s1.stats.files
    );
    assert!(
        s2.stats.new_bytes < s1.stats.bytes / 10,
        "incremental backup added {} of {} bytes",
        s2.stats.new_bytes,
        s1.stats.bytes
    );
    eprintln!(
        "corpus: first backup {:?} ({} files, {} bytes, {} new); after session {:?} (read {} files, {} new bytes)",
        s1.elapsed, s1.stats.files, s1.stats.bytes, s1.stats.new_bytes, s2.elapsed, s2.stats.files_read, s2.stats.new_bytes
    );

    // What the session did, as `diff` reports it, is what the test counts on disk.
    let mut a = cairn_engine::SnapshotView::open(&t.repo, "agent", Some(&s1.snapshot.to_hex()))
        .await
        .expect("open s1");
    let mut b = cairn_engine::SnapshotView::open(&t.repo, "agent", Some(&s2.snapshot.to_hex()))
        .await
        .expect("open s2");
    a.load_all_trees().await.expect("trees");
    b.load_trees_sharing(&a).await.expect("trees");
    let changes = cairn_engine::diff(&a, &b, b"", Some(&a.root()), Some(&b.root()))
        .await
        .expect("diff");
    let got: std::collections::BTreeMap<Vec<u8>, String> = changes
        .iter()
        .map(|d| {
            let ch = serde_json::to_value(d.change).expect("change");
            (d.path.clone(), ch.as_str().expect("name").to_string())
        })
        .collect();
    let want = crate::browse::expected_changes(&describe(&before), &describe(&ws));
    let count = |m: &dyn Fn(&str) -> bool| got.values().filter(|v| m(v)).count();
    eprintln!(
        "corpus: the session added {}, removed {}, modified {}, touched {} entries",
        count(&|v| v == "added"),
        count(&|v| v == "removed"),
        count(&|v| v == "modified"),
        count(&|v| v == "metadata")
    );
    assert!(
        count(&|v| v == "added") > 0 && count(&|v| v == "removed") > 0 && count(&|v| v == "modified") > 0
    );
    assert_eq!(
        got.len(),
        want.len(),
        "diff and the disk disagree on how many entries changed"
    );
    assert!(
        want.iter()
            .all(|(p, ch)| got.get(p).map(String::as_str) == Some(*ch)),
        "first disagreement: {:?}",
        want.iter()
            .find(|(p, ch)| got.get(*p).map(String::as_str) != Some(**ch))
            .map(|(p, ch)| (String::from_utf8_lossy(p), ch, got.get(p)))
    );
    drop((a, b));

    let out1 = t.scratch("out1");
    t.restore("agent", Some(&s1.snapshot), &out1).await;
    assert_same_tree(&before, &out1);
    let out2 = t.scratch("out2");
    let r2 = t.restore("agent", Some(&s2.snapshot), &out2).await;
    assert_same_tree(&ws, &out2);
    eprintln!("corpus: restore {:?} for {} bytes", r2.elapsed, r2.bytes);
    let report = cairn_engine::check(&t.repo, true, Default::default())
        .await
        .expect("check");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}
