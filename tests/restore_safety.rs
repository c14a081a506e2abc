//! Invariant 8: no entry of a snapshot, however crafted, writes outside the restore target.

use cairn_engine::formats::{Entry, Extent, Meta, Node, Tree};
use cairn_engine::Error;
use craft::{put_packs, put_snapshot};

use crate::support::*;

/// Writes hand-made trees into a repository, bypassing the backup code (as an attacker with
/// write access to the bucket could).
mod craft {
    use cairn_engine::formats::{
        head_key, index_key, pack_key, snapshot_key, BlobId, Head, IndexId, IndexPack, IndexRecord, Manifest,
        Meta, PackKind, SnapshotId, SnapshotStats, Timestamp,
    };
    use cairn_engine::{encode_blob, FinishedPack, PackBuilder, PutMode, Repo, StoreExt};

    /// Stores `blobs` (kind, raw bytes) in one pack per kind, then as [`put_packs`].
    pub async fn put_snapshot(repo: &Repo, ws: &str, root: BlobId, blobs: Vec<(PackKind, Vec<u8>)>) {
        let mut packs = Vec::new();
        for kind in [PackKind::Data, PackKind::Meta] {
            let mut b = PackBuilder::new(repo.crypt(), kind, 1 << 20);
            for (k, raw) in &blobs {
                if *k == kind {
                    b.add(&encode_blob(repo.crypt(), repo.crypt().blob_id(raw), raw, 0));
                }
            }
            if !b.is_empty() {
                packs.push(b.finish());
            }
        }
        put_packs(repo, ws, root, packs).await;
    }

    /// Stores `packs`, one index record listing them, a snapshot whose root is `root`, and moves
    /// the head of `ws` to it.
    pub async fn put_packs(repo: &Repo, ws: &str, root: BlobId, packs: Vec<FinishedPack>) {
        let mut listed = Vec::new();
        for p in packs {
            repo.store()
                .put_immutable(&pack_key(p.kind, &p.id), p.bytes.clone())
                .await
                .expect("put pack");
            listed.push(IndexPack {
                pack: p.id,
                kind: p.kind,
                size: p.bytes.len() as u64,
                blobs: p.entries,
            });
        }
        let rec = repo
            .crypt()
            .seal("index/records/", IndexRecord { packs: listed }.encode());
        let rec_id = IndexId::of(&rec);
        repo.store()
            .put(&index_key(&rec_id), rec.into(), PutMode::Create)
            .await
            .expect("put record");
        let m = Manifest {
            workspace: ws.into(),
            time: Timestamp::now(),
            host: "attacker".into(),
            source: b"/".to_vec(),
            root,
            root_meta: Meta {
                mode: 0o755,
                ..Meta::default()
            },
            parent: None,
            base: None,
            index: vec![rec_id],
            stats: SnapshotStats::default(),
            tags: vec![],
        }
        .encode();
        let m = repo.crypt().seal(&format!("snapshots/{ws}/"), m);
        let id = SnapshotId::of(&m);
        repo.store()
            .put(&snapshot_key(ws, &id), m.into(), PutMode::Create)
            .await
            .expect("put manifest");
        let head = Head {
            snapshot: id,
            time: Timestamp::now(),
        }
        .encode();
        let head = repo.crypt().seal(&head_key(ws), head);
        repo.store()
            .put(&head_key(ws), head.into(), PutMode::Create)
            .await
            .expect("put head");
    }
}

fn file_entry(crypt: &cairn_engine::Crypt, name: &[u8], content: &[u8]) -> Entry {
    Entry {
        name: name.to_vec(),
        node: Node::File {
            size: content.len() as u64,
            extents: vec![Extent::Chunk {
                id: crypt.blob_id(content),
                len: content.len() as u32,
            }],
            link_group: None,
        },
        meta: Meta {
            mode: 0o644,
            ..Meta::default()
        },
    }
}

/// A raw encoded tree, without the sorting or validation the backup does.
fn raw_tree(entries: Vec<Entry>) -> Vec<u8> {
    Tree { entries }.encode()
}

use cairn_engine::formats::PackKind::{Data, Meta as MetaPack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_dot_and_absolute_names_are_refused() {
    let t = TestRepo::new().await;
    let outside = t.scratch("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    for (i, name) in [
        &b".."[..],
        b"../outside/pwned",
        b"/tmp/pwned",
        b"a/../../pwned",
        b".",
    ]
    .iter()
    .enumerate()
    {
        let content = b"pwned".to_vec();
        let tree = raw_tree(vec![file_entry(t.repo.crypt(), name, &content)]);
        let ws = format!("evil{i}");
        put_snapshot(
            &t.repo,
            &ws,
            t.repo.crypt().blob_id(&tree),
            vec![(Data, content), (MetaPack, tree)],
        )
        .await;
        let target = t.scratch(&format!("target{i}"));
        let err = t
            .try_restore(&ws, None, &target)
            .await
            .expect_err("crafted name must be refused");
        assert!(matches!(err, Error::Corrupt { .. }), "{name:?}: {err}");
        assert!(err.to_string().contains("entry name"), "{err}");
        assert!(cairn_engine::read_marker(&target).is_none());
    }
    assert_eq!(
        std::fs::read_dir(&outside).expect("ls").count(),
        0,
        "nothing written outside"
    );
    assert!(!std::path::Path::new("/tmp/pwned").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_names_cannot_smuggle_a_symlink_before_a_directory() {
    let t = TestRepo::new().await;
    let outside = t.scratch("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    let content = b"through the link".to_vec();
    let sub = raw_tree(vec![file_entry(t.repo.crypt(), b"x", &content)]);
    let root = raw_tree(vec![
        Entry {
            name: b"s".to_vec(),
            node: Node::Symlink {
                target: outside.as_os_str().as_encoded_bytes().to_vec(),
            },
            meta: Meta::default(),
        },
        Entry {
            name: b"s".to_vec(),
            node: Node::Dir {
                tree: t.repo.crypt().blob_id(&sub),
            },
            meta: Meta::default(),
        },
    ]);
    put_snapshot(
        &t.repo,
        "evil",
        t.repo.crypt().blob_id(&root),
        vec![(Data, content), (MetaPack, sub), (MetaPack, root)],
    )
    .await;
    let err = t
        .try_restore("evil", None, &t.scratch("target"))
        .await
        .expect_err("refused");
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert_eq!(std::fs::read_dir(&outside).expect("ls").count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlink_planted_in_the_target_is_not_followed() {
    let t = TestRepo::new().await;
    let src = t.scratch("src");
    write(&src.join("sub/x"), b"inside");
    t.backup("ws", &src).await;
    let outside = t.scratch("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    let target = t.scratch("target");
    std::fs::create_dir_all(&target).expect("mkdir");
    std::os::unix::fs::symlink(&outside, target.join("sub")).expect("plant symlink");
    t.restore("ws", None, &target).await;
    assert_eq!(
        std::fs::read_dir(&outside).expect("ls").count(),
        0,
        "wrote through a planted symlink"
    );
    assert!(std::fs::symlink_metadata(target.join("sub"))
        .expect("lstat")
        .is_dir());
    assert_eq!(std::fs::read(target.join("sub/x")).expect("read"), b"inside");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_file_symlink_and_hardlink_to_outside_are_replaced_not_written_through() {
    let t = TestRepo::new().await;
    let src = t.scratch("src");
    write(&src.join("a"), b"snapshot content a");
    write(&src.join("b"), b"snapshot content b");
    t.backup("ws", &src).await;
    let victim_sym = t.scratch("victim-sym");
    let victim_hard = t.scratch("victim-hard");
    write(&victim_sym, b"precious 1");
    write(&victim_hard, b"precious 2");
    let target = t.scratch("target");
    std::fs::create_dir_all(&target).expect("mkdir");
    std::os::unix::fs::symlink(&victim_sym, target.join("a")).expect("symlink");
    std::fs::hard_link(&victim_hard, target.join("b")).expect("hardlink");
    t.restore("ws", None, &target).await;
    assert_eq!(std::fs::read(&victim_sym).expect("read"), b"precious 1");
    assert_eq!(std::fs::read(&victim_hard).expect("read"), b"precious 2");
    assert_eq!(
        std::fs::read(target.join("a")).expect("read"),
        b"snapshot content a"
    );
    assert_eq!(
        std::fs::read(target.join("b")).expect("read"),
        b"snapshot content b"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_that_does_not_match_its_id_is_never_written() {
    // A tree claims content X for a file, but the blob stored under X's id holds other bytes.
    let t = TestRepo::new().await;
    let claimed = b"what the tree promises".to_vec();
    let entry = file_entry(t.repo.crypt(), b"f", &claimed);
    let tree = raw_tree(vec![entry]);
    // A pack whose entry id is the claimed id but whose bytes differ.
    use cairn_engine::formats::PackKind;
    use cairn_engine::{encode_blob, PackBuilder};
    let mut data = PackBuilder::new(t.repo.crypt(), PackKind::Data, 1 << 16);
    let mut lie = encode_blob(
        t.repo.crypt(),
        t.repo.crypt().blob_id(&claimed),
        b"something else entirely",
        0,
    );
    lie.raw_len = claimed.len() as u32;
    lie.data.resize(claimed.len(), b'!');
    data.add(&lie);
    let mut meta = PackBuilder::new(t.repo.crypt(), PackKind::Meta, 1 << 16);
    meta.add(&encode_blob(
        t.repo.crypt(),
        t.repo.crypt().blob_id(&tree),
        &tree,
        0,
    ));
    put_packs(
        &t.repo,
        "lie",
        t.repo.crypt().blob_id(&tree),
        vec![data.finish(), meta.finish()],
    )
    .await;

    let target = t.scratch("target");
    let err = t.try_restore("lie", None, &target).await.expect_err("must fail");
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    let f = std::fs::read(target.join("f")).unwrap_or_default();
    assert!(
        !f.windows(4).any(|w| w == b"some"),
        "unverified bytes reached the file"
    );
    assert!(cairn_engine::read_marker(&target).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_chunk_that_no_longer_matches_is_fetched_instead() {
    // Snapshot A has `f`; snapshot B has the same content as `h`. Restoring B over A stages `f`
    // and copies `h`'s chunks from it, each checked against its id. Bytes changed on disk behind
    // the marker's back fail that check and are fetched from the store instead.
    let t = TestRepo::new().await;
    let src = t.scratch("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    let content = random_bytes(7, 600 << 10);
    std::fs::write(src.join("f"), &content).expect("write");
    let a = t.backup("ws", &src).await.snapshot;
    std::fs::rename(src.join("f"), src.join("h")).expect("mv");
    let b = t.backup("ws", &src).await.snapshot;

    let target = t.scratch("target");
    t.restore("ws", Some(&a), &target).await;
    let mut tampered = content.clone();
    tampered[300 << 10] ^= 0xff;
    std::fs::write(target.join("f"), &tampered).expect("tamper");

    let (id, manifest) = t.repo.resolve("ws", Some(&b.to_hex())).await.expect("resolve");
    let (_, previous) = t.repo.resolve("ws", Some(&a.to_hex())).await.expect("resolve");
    let mut opts = cairn_engine::RestoreOptions::new(&target);
    opts.previous = Some((a, previous));
    let r = cairn_engine::restore(&t.repo, id, &manifest, &opts, Default::default())
        .await
        .expect("restore");
    assert!(r.update, "{r:?}");
    assert!(r.reused > 0, "the untouched chunks come from disk: {r:?}");
    assert!(r.fetched > 0, "the changed chunk is fetched: {r:?}");
    assert!(r.reused < content.len() as u64, "{r:?}");
    assert_eq!(r.bytes, content.len() as u64, "{r:?}");
    assert_eq!(std::fs::read(target.join("h")).expect("read"), content);
    assert!(!target.join("f").exists());
    assert!(!target.join(".cairn-staging").exists());
}
