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
