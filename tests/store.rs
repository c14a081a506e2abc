//! The store contract, as one conformance suite every backend runs: the local store here, S3 and
//! GCS servers and the fault-injection wrapper in `cloud`.

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

    // Create-only under contention: exactly one writer wins, and its bytes are whole.
    let tasks: Vec<_> = (0..16u8)
        .map(|i| {
            let s = store.clone();
            tokio::spawn(async move {
                s.put("contend/k", vec![i; 1000].into(), PutMode::Create)
                    .await
                    .is_ok()
            })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.expect("task"));
    }
    assert_eq!(winners, 1, "create-only writers that won");
    let data = store.get("contend/k").await.expect("get").data;
    assert!(
        data.len() == 1000 && data.iter().all(|b| *b == data[0]),
        "a single complete write"
    );

    // Compare-and-swap under contention: exactly one swap from a given version wins. Values differ
    // from the initial one: content-derived versions (S3 ETags) make rewriting identical bytes
    // indistinguishable from no write.
    let v = store
        .put("contend/h", "0".into(), PutMode::Create)
        .await
        .expect("create");
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let (s, v) = (store.clone(), v.clone());
            tokio::spawn(async move {
                s.put(
                    "contend/h",
                    format!("v{i}").into_bytes().into(),
                    PutMode::Update(v),
                )
                .await
                .is_ok()
            })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.expect("task"));
    }
    assert_eq!(winners, 1, "compare-and-swap writers that won");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_store_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance(Arc::new(LocalStore::new(dir.path()))).await;
}

#[tokio::test]
async fn store_urls() {
    use cairn_engine::open_store;
    assert!(open_store("file:///tmp/x").await.is_ok());
    assert!(open_store("/tmp/x").await.is_ok());
    for (url, want) in [
        ("ftp://x", "unsupported store scheme"),
        ("file://relative", "absolute path"),
        ("s3://", "no bucket"),
        ("gs:///prefix", "no bucket"),
        ("s3://Bad_Bucket/x", "not a valid bucket name"),
        ("s3://bucket/a/../b", "prefix"),
    ] {
        let e = open_store(url).await.expect_err(url).to_string();
        assert!(e.contains(want), "{url}: {e}");
    }
}
