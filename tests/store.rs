//! The store contract, as one conformance suite every backend runs (the local store now; S3 and
//! GCS join with their issue).

use std::sync::Arc;

use cairn_engine::{Error, LocalStore, PutMode, Store, StoreExt};

/// Runs every contract check against `store`, which must be empty.
pub async fn conformance(store: Arc<dyn Store>) {
    // Create-only: first write wins, second is AlreadyExists, content unchanged.
    store
        .put("a/b/one", "first".into(), PutMode::Create)
        .await
        .expect("create");
    let err = store
        .put("a/b/one", "second".into(), PutMode::Create)
        .await
        .expect_err("exists");
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    assert_eq!(&store.get("a/b/one").await.expect("get").data[..], b"first");
    store
        .put_immutable("a/b/one", "first".into())
        .await
        .expect("idempotent immutable put");

    // Missing objects are NotFound everywhere, naming the key.
    let err = store.get("nope").await.expect_err("missing");
    assert!(matches!(&err, Error::NotFound { key } if key == "nope"), "{err}");
    assert!(store.get_opt("nope").await.expect("get_opt").is_none());
    assert!(store.head("nope").await.expect_err("missing").is_not_found());
    assert!(store
        .get_range("nope", 0..1)
        .await
        .expect_err("missing")
        .is_not_found());
    store.delete("nope").await.expect("deleting nothing succeeds");

    // Ranged reads: exact bytes; past the end is an error, never a short read.
    store
        .put("r", (0u8..100).collect::<Vec<u8>>().into(), PutMode::Create)
        .await
        .expect("put");
    assert_eq!(
        &store.get_range("r", 10..20).await.expect("range")[..],
        &(10u8..20).collect::<Vec<_>>()[..]
    );
    assert_eq!(store.head("r").await.expect("head").size, 100);
    assert!(store.get_range("r", 90..110).await.is_err());

    // Compare-and-swap: only from the version read; a stale version loses.
    let v1 = store
        .put("heads/w", "h1".into(), PutMode::Create)
        .await
        .expect("create head");
    let got = store.get("heads/w").await.expect("get head");
    assert_eq!(got.version, v1);
    let v2 = store
        .put("heads/w", "h2".into(), PutMode::Update(v1.clone()))
        .await
        .expect("swap");
    let err = store
        .put("heads/w", "h3".into(), PutMode::Update(v1))
        .await
        .expect_err("stale");
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    assert_eq!(&store.get("heads/w").await.expect("get").data[..], b"h2");
    assert_eq!(store.get("heads/w").await.expect("get").version, v2);

    // Listing by prefix: exact prefix semantics, sorted, sizes.
    for k in [
        "snapshots/w1/x",
        "snapshots/w1/y",
        "snapshots/w10/z",
        "snapshots/w2/q",
    ] {
        store.put(k, "12345".into(), PutMode::Create).await.expect("put");
    }
    let keys: Vec<String> = store
        .list("snapshots/w1/")
        .await
        .expect("list")
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, ["snapshots/w1/x", "snapshots/w1/y"]);
    let all = store.list("snapshots/").await.expect("list");
    assert_eq!(all.len(), 4);
    assert!(all.iter().all(|o| o.size == 5));
    let partial: Vec<String> = store
        .list("snapshots/w1")
        .await
        .expect("list")
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(partial, ["snapshots/w1/x", "snapshots/w1/y", "snapshots/w10/z"]);
    assert!(store.list("nothing/").await.expect("list").is_empty());

    // Delete.
    store.delete("snapshots/w2/q").await.expect("delete");
    assert!(store
        .get("snapshots/w2/q")
        .await
        .expect_err("deleted")
        .is_not_found());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance(Arc::new(LocalStore::new(dir.path()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_create_only_has_one_winner_under_contention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path()));
    let mut tasks = Vec::new();
    for i in 0..16u8 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.put("k", vec![i; 1000].into(), PutMode::Create).await.is_ok()
        }));
    }
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.expect("task"));
    }
    assert_eq!(winners, 1);
    let data = store.get("k").await.expect("get").data;
    assert!(data.iter().all(|b| *b == data[0]), "a single complete write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_cas_has_one_winner_under_contention() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path()));
    let v = store.put("h", "0".into(), PutMode::Create).await.expect("create");
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (s, v) = (store.clone(), v.clone());
        tasks.push(tokio::spawn(async move {
            // Values differ from the initial one: content-derived versions (like S3 ETags) make a
            // write of identical bytes indistinguishable from no write.
            s.put("h", format!("v{i}").into_bytes().into(), PutMode::Update(v))
                .await
                .is_ok()
        }));
    }
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.expect("task"));
    }
    assert_eq!(winners, 1);
}

#[test]
fn store_urls() {
    assert!(cairn_engine::open_store("file:///tmp/x").is_ok());
    assert!(cairn_engine::open_store("/tmp/x").is_ok());
    let e = cairn_engine::open_store("ftp://x")
        .expect_err("scheme")
        .to_string();
    assert!(e.contains("unsupported store scheme"), "{e}");
    let e = cairn_engine::open_store("file://relative")
        .expect_err("relative")
        .to_string();
    assert!(e.contains("absolute path"), "{e}");
}
