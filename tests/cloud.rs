//! The S3 and GCS backends against real protocol servers started by the suite (moto's S3 server;
//! gcp-storage-emulator, with and without GCS preconditions), the retry layer, and the fault
//! injection wrapper: the store contract, large uploads, pagination, refusing a server without
//! conditional writes, backups and restores under injected faults, a total outage, the CLI on
//! `s3://`, and the corpus workspace end to end on both clouds.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cairn_engine::formats::CONFIG_KEY;
use cairn_engine::{
    Error, FaultPlan, FaultStore, GcsOptions, InitOptions, LocalStore, PutMode, Repo, RetryPolicy,
    RetryStore, S3Options, Store, StoreExt,
};

use crate::store::conformance;
use crate::support::servers::*;
use crate::support::*;

/// Retries quick enough for tests.
fn fast_retries(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        attempts,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(20),
        ..RetryPolicy::default()
    }
}

/// `store` behind injected faults and a retry layer; the fault and retry layers for their counters.
fn faulty(
    store: Arc<dyn Store>,
    plan: &str,
    attempts: u32,
) -> (Arc<dyn Store>, Arc<FaultStore>, Arc<RetryStore>) {
    let plan: FaultPlan = plan.parse().expect("fault plan");
    let faults = Arc::new(FaultStore::new(store, plan));
    let retry = Arc::new(RetryStore::new(faults.clone(), fast_retries(attempts)));
    (retry.clone(), faults, retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_conforms() {
    let (store, _) = s3_store_with("repos/one", s3_options()).await;
    conformance(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_store_conforms() {
    let (store, _) = gcs_store_on(gcs_server(), "repos/one", GcsOptions::default()).await;
    conformance(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_conform_through_injected_faults_and_retries() {
    let plan = "errors=0.2,truncate=0.2,seed=11";
    let dir = tempfile::tempdir().expect("tempdir");
    let (s3, _) = s3_store_with("", s3_options()).await;
    let (gcs, _) = gcs_store_on(gcs_server(), "", GcsOptions::default()).await;
    for base in [Arc::new(LocalStore::new(dir.path())) as Arc<dyn Store>, s3, gcs] {
        let location = base.location();
        let (store, faults, retry) = faulty(base, plan, 12);
        conformance(store).await;
        let (errors, truncated, landed) = (
            faults.stats().errors.load(Ordering::Relaxed),
            faults.stats().truncated.load(Ordering::Relaxed),
            faults.stats().landed_then_failed.load(Ordering::Relaxed),
        );
        // The suite passed although faults really happened, and the retry layer absorbed them.
        assert!(
            errors >= 5 && truncated >= 1 && landed >= 1,
            "{location}: {:?}",
            faults.stats()
        );
        assert!(
            retry.stats().retries.load(Ordering::Relaxed) >= errors,
            "{location}"
        );
        eprintln!("{location}: {:?} {:?}", faults.stats(), retry.stats());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_pages_lists_and_uploads_large_objects_in_parts() {
    let opts = S3Options {
        list_page_size: 2,
        multipart_threshold: 6 << 20,
        part_size: 5 << 20,
        ..s3_options()
    };
    let (store, _) = s3_store_with("p", opts).await;
    for i in 0..5 {
        store
            .put(&format!("many/{i}"), vec![i; 10].into(), PutMode::Create)
            .await
            .expect("put");
    }
    let keys: Vec<String> = store
        .list("many/")
        .await
        .expect("list")
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(
        keys,
        ["many/0", "many/1", "many/2", "many/3", "many/4"],
        "listed across 3 pages"
    );

    let big = random_bytes(5, (13 << 20) + 123);
    let v = store
        .put("packs/big", big.clone().into(), PutMode::Create)
        .await
        .expect("multipart create");
    let again = store
        .put("packs/big", vec![1u8; 7 << 20].into(), PutMode::Create)
        .await
        .expect_err("create-only holds for multipart uploads");
    assert!(matches!(again, Error::AlreadyExists { .. }), "{again}");
    let got = store.get("packs/big").await.expect("get");
    assert_eq!(got.data.len(), big.len());
    assert!(got.data == big, "multipart object reads back whole");
    assert_eq!(got.version, v);
    let r = (5 << 20) - 10..(5 << 20) + 10;
    assert_eq!(
        &store
            .get_range("packs/big", r.start as u64..r.end as u64)
            .await
            .expect("range")[..],
        &big[r]
    );
    let stale = store
        .put(
            "packs/big",
            vec![2u8; 7 << 20].into(),
            PutMode::Update(cairn_engine::Version("\"nope\"".into())),
        )
        .await
        .expect_err("stale");
    assert!(matches!(stale, Error::Conflict { .. }), "{stale}");
    store
        .put("packs/big", vec![3u8; 7 << 20].into(), PutMode::Update(v))
        .await
        .expect("large compare-and-swap (one request)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_resumable_uploads_keep_their_preconditions() {
    let opts = GcsOptions {
        resumable_threshold: 1 << 20,
        chunk_size: 256 << 10,
        list_page_size: 2,
        ..GcsOptions::default()
    };
    let (store, _) = gcs_store_on(gcs_server(), "p", opts).await;
    let big = random_bytes(6, (1 << 20) + 300_000);
    let v = store
        .put("packs/big", big.clone().into(), PutMode::Create)
        .await
        .expect("resumable create");
    let again = store
        .put("packs/big", vec![1u8; 2 << 20].into(), PutMode::Create)
        .await
        .expect_err("create-only holds for resumable uploads");
    assert!(matches!(again, Error::AlreadyExists { .. }), "{again}");
    let got = store.get("packs/big").await.expect("get");
    assert!(got.data == big, "resumable object reads back whole");
    assert_eq!(got.version, v);
    store
        .put("packs/big", vec![3u8; 2 << 20].into(), PutMode::Update(v))
        .await
        .expect("resumable compare-and-swap");
    assert_eq!(store.head("packs/big").await.expect("head").size, 2 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_refuses_a_server_that_ignores_conditional_writes() {
    // gcp-storage-emulator as published accepts ifGenerationMatch=0 and overwrites anyway.
    let (store, _) = gcs_store_on(gcs_server_unconditional(), "r", GcsOptions::default()).await;
    let err = Repo::init(store.clone(), InitOptions::default())
        .await
        .expect_err("init must refuse");
    let msg = err.to_string();
    assert!(
        msg.contains("ignored a create-only write") && msg.contains("no repository was created"),
        "{msg}"
    );
    assert!(
        store.get_opt(CONFIG_KEY).await.expect("get").is_none(),
        "no config written"
    );
    assert!(
        store.list("").await.expect("list").is_empty(),
        "the probe cleaned up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bucket_is_a_clear_error_without_retries() {
    let store = cairn_engine::S3Store::connect("cairn-no-such-bucket", "", s3_options())
        .await
        .expect("connect");
    let (store, _, retry) = faulty(Arc::new(store), "", 5);
    let err = Repo::open(store).await.expect_err("no bucket");
    let msg = err.to_string();
    assert!(
        msg.contains("NoSuchBucket") && msg.contains("create the bucket"),
        "{msg}"
    );
    assert_eq!(
        retry.stats().retries.load(Ordering::Relaxed),
        0,
        "a permanent error is not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_a_clear_error_without_retries() {
    let opts = S3Options {
        endpoint: Some(s3_auth_server().endpoint()),
        static_credentials: Some(("AKIAWRONGWRONGWRONG0".into(), "not-the-secret".into())),
        ..S3Options::default()
    };
    let store = cairn_engine::S3Store::connect("cairn-creds", "", opts)
        .await
        .expect("connect");
    let (store, _, retry) = faulty(Arc::new(store), "", 5);
    let msg = Repo::open(store).await.expect_err("refused").to_string();
    assert!(
        msg.contains("HTTP 403") && msg.contains("check the credentials"),
        "{msg}"
    );
    assert!(!msg.contains("not-the-secret"), "the secret never appears: {msg}");
    assert_eq!(
        retry.stats().retries.load(Ordering::Relaxed),
        0,
        "a permanent error is not retried"
    );
}

/// Backs up a generated tree twice (with an edit between) and restores both, through `store`.
async fn round_trip_through(store: Arc<dyn Store>) {
    let t = TestRepo::on_store(store, small_params()).await;
    let src = t.scratch("src");
    build_everything_tree(&src, 3);
    let s1 = t.backup("w", &src).await;
    let before = t.scratch("before");
    copy_tree(&src, &before);
    write(&src.join("edited.bin"), &random_bytes(9, 300_000));
    let s2 = t.backup("w", &src).await;
    for (snap, want) in [(&s1.snapshot, &before), (&s2.snapshot, &src)] {
        let out = t.scratch(&format!("out-{}", snap.to_hex()));
        t.restore("w", Some(snap), &out).await;
        assert_same_tree(want, &out);
    }
    let report = cairn_engine::check(&t.repo, true, Default::default())
        .await
        .expect("check");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore_complete_under_faults_on_s3_and_gcs() {
    let plan = "errors=0.05,latency=20ms,truncate=0.02,seed=5";
    let (s3, _) = s3_store_with("w", s3_options()).await;
    let (store, faults, _) = faulty(s3, plan, 10);
    round_trip_through(store).await;
    assert!(
        faults.stats().errors.load(Ordering::Relaxed) > 0,
        "{:?}",
        faults.stats()
    );
    let (gcs, _) = gcs_store_on(gcs_server(), "w", GcsOptions::default()).await;
    let (store, faults, _) = faulty(gcs, plan, 10);
    round_trip_through(store).await;
    assert!(
        faults.stats().errors.load(Ordering::Relaxed) > 0,
        "{:?}",
        faults.stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_total_outage_fails_clearly_and_keeps_earlier_snapshots() {
    let (s3, _) = s3_store_with("outage", s3_options()).await;
    let (store, faults, _) = faulty(s3, "", 3);
    let t = TestRepo::on_store(store, small_params()).await;
    let src = t.scratch("src");
    build_everything_tree(&src, 4);
    let s1 = t.backup("w", &src).await;
    let before = t.scratch("before");
    copy_tree(&src, &before);
    write(&src.join("new.bin"), &random_bytes(10, 100_000));

    // Every request fails: backup and restore give up with the cause, naming the object.
    faults.set_plan("errors=1.0".parse().expect("plan"));
    let err = t.try_backup("w", &src).await.expect_err("backup in an outage");
    let msg = err.to_string();
    assert!(
        msg.contains("injected fault") && msg.contains("gave up after 3 attempts"),
        "{msg}"
    );
    let out = t.scratch("out-down");
    let err = t
        .try_restore("w", Some(&s1.snapshot), &out)
        .await
        .expect_err("restore in an outage");
    assert!(err.to_string().contains("gave up after 3 attempts"), "{err}");
    assert!(
        !out.join(cairn_engine::RESTORE_MARKER).exists(),
        "no marker on a failed restore"
    );
    assert!(faults.stats().errors.load(Ordering::Relaxed) >= 6);

    // Service returns: the earlier snapshot is still the latest and restores whole.
    faults.set_plan(FaultPlan::default());
    let (head, _) = t.repo.head("w").await.expect("head").expect("a head");
    assert_eq!(head.snapshot, s1.snapshot);
    let out = t.scratch("out");
    t.restore("w", None, &out).await;
    assert_same_tree(&before, &out);
}

#[test]
fn initctl_works_on_s3_urls_with_faults_injected() {
    let server = s3_server();
    let bucket = bucket_name();
    create_bucket(server, &bucket);
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    build_everything_tree(&src, 8);
    let url = format!("s3://{bucket}/team/repo");
    let cache = dir.path().join("cache");
    let mut env: Vec<(&str, String)> = s3_env();
    env.push(("CAIRN_STORE", url.clone()));
    env.push(("CAIRN_CACHE_DIR", cache.display().to_string()));
    env.push(("CAIRN_FAULTS", "errors=0.05,latency=5ms,truncate=0.02".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let o = initctl(&["init"], &env);
    assert!(o.status.success(), "init: {}", stderr(&o));
    let o = initctl(
        &["backup", "--workspace", "w", src.to_str().expect("utf-8")],
        &env,
    );
    assert!(o.status.success(), "backup: {}", stderr(&o));
    let o = initctl(&["snapshots", "--workspace", "w", "--json"], &env);
    assert!(o.status.success(), "snapshots: {}", stderr(&o));
    assert!(stdout(&o).contains("\"workspace\""), "{}", stdout(&o));
    let out = dir.path().join("out");
    let o = initctl(
        &["restore", "--workspace", "w", out.to_str().expect("utf-8")],
        &env,
    );
    assert!(o.status.success(), "restore: {}", stderr(&o));
    assert_same_tree(&src, &out);
    let o = initctl(&["check", "--read-data"], &env);
    assert!(o.status.success(), "check: {}", stderr(&o));

    // A second init is refused without touching the repository; a bad fault plan names itself.
    let o = initctl(&["init"], &env);
    assert!(
        !o.status.success() && stderr(&o).contains("already exists"),
        "{}",
        stderr(&o)
    );
    let mut bad = env.clone();
    bad.push(("CAIRN_FAULTS", "errors=lots"));
    let o = initctl(&["snapshots", "--workspace", "w"], &bad);
    assert!(
        !o.status.success() && stderr(&o).contains("errors=lots"),
        "{}",
        stderr(&o)
    );
}

/// The corpus workspace backed up to `store` and restored bit for bit, after one agent session.
async fn corpus_through(store: Arc<dyn Store>, what: &str) {
    let pristine = cairn_tests::prepared::corpus_workspace();
    let t = TestRepo::on_store(store, default_params()).await;
    let ws = t.scratch("ws");
    copy_tree(&pristine, &ws);
    let s1 = t.backup("agent", &ws).await;
    assert_eq!(s1.stats.skipped, 0, "{:?}", s1.warnings);
    let out = t.scratch("out");
    let r = t.restore("agent", Some(&s1.snapshot), &out).await;
    assert_same_tree(&ws, &out);
    eprintln!(
        "corpus via {what}: backup {:?} ({} files, {} bytes), restore {:?}",
        s1.elapsed, s1.stats.files, s1.stats.bytes, r.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_workspace_round_trips_through_s3_under_faults() {
    let (s3, _) = s3_store_with("corpus", s3_options()).await;
    let (store, faults, retry) = faulty(s3, "errors=0.05,latency=20ms,truncate=0.01,seed=2", 10);
    corpus_through(store, "S3 (5% failures, 20 ms latency)").await;
    assert!(faults.stats().errors.load(Ordering::Relaxed) > 0);
    eprintln!("faults {:?}, retries {:?}", faults.stats(), retry.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_workspace_round_trips_through_gcs() {
    let (gcs, _) = gcs_store_on(gcs_server(), "corpus", GcsOptions::default()).await;
    corpus_through(gcs, "GCS").await;
}

/// A real store that records how many requests are inside it at once.
#[derive(Debug)]
struct Counting {
    inner: LocalStore,
    now: std::sync::atomic::AtomicUsize,
    max: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl Store for Counting {
    async fn put(
        &self,
        key: &str,
        data: bytes::Bytes,
        mode: PutMode,
    ) -> cairn_engine::Result<cairn_engine::Version> {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let r = self.inner.put(key, data, mode).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        r
    }
    async fn get(&self, key: &str) -> cairn_engine::Result<cairn_engine::GetResult> {
        self.inner.get(key).await
    }
    async fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> cairn_engine::Result<bytes::Bytes> {
        self.inner.get_range(key, range).await
    }
    async fn head(&self, key: &str) -> cairn_engine::Result<cairn_engine::ObjectMeta> {
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> cairn_engine::Result<Vec<cairn_engine::ObjectMeta>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> cairn_engine::Result<()> {
        self.inner.delete(key).await
    }
    fn location(&self) -> String {
        self.inner.location()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_layer_bounds_requests_in_flight_and_times_out_hung_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let counting = Arc::new(Counting {
        inner: LocalStore::new(dir.path()),
        now: Default::default(),
        max: Default::default(),
    });
    let store = Arc::new(RetryStore::new(
        counting.clone(),
        RetryPolicy {
            max_in_flight: 3,
            ..fast_retries(2)
        },
    ));
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let s = store.clone();
            tokio::spawn(async move { s.put_immutable(&format!("k/{i}"), vec![i as u8; 10].into()).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("put");
    }
    assert_eq!(
        counting.max.load(Ordering::SeqCst),
        3,
        "never more than 3 requests in flight"
    );

    // A request that hangs past its deadline is abandoned and retried, then reported.
    let hung = Arc::new(RetryStore::new(
        Arc::new(FaultStore::new(
            Arc::new(LocalStore::new(dir.path())),
            "latency=300ms".parse().expect("plan"),
        )),
        RetryPolicy {
            request_timeout: Duration::from_millis(50),
            ..fast_retries(2)
        },
    ));
    let started = std::time::Instant::now();
    let err = hung.get("k/1").await.expect_err("deadline");
    assert!(
        err.to_string().contains("no answer within 50ms") && err.to_string().contains("gave up after 2"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(290),
        "abandoned at the deadline, not after the 300 ms"
    );
    assert_eq!(hung.stats().retries.load(Ordering::Relaxed), 1);
}

#[test]
fn initctl_works_on_gs_urls_through_the_emulator() {
    let server = gcs_server();
    let bucket = bucket_name();
    create_bucket(server, &bucket);
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    build_everything_tree(&src, 9);
    let (url, cache, host) = (
        format!("gs://{bucket}/repo"),
        dir.path().join("cache").display().to_string(),
        format!("127.0.0.1:{}", server.port),
    );
    let env = [
        ("CAIRN_STORE", url.as_str()),
        ("CAIRN_CACHE_DIR", cache.as_str()),
        ("STORAGE_EMULATOR_HOST", host.as_str()),
        ("CAIRN_WORKSPACE", "w"),
    ];
    for args in [vec!["init"], vec!["backup", src.to_str().expect("utf-8")]] {
        let o = initctl(&args, &env);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    }
    let out = dir.path().join("out");
    let o = initctl(&["restore", out.to_str().expect("utf-8")], &env);
    assert!(o.status.success(), "restore: {}", stderr(&o));
    assert_same_tree(&src, &out);
    let o = initctl(&["drill"], &env);
    assert!(o.status.success(), "drill: {}", stderr(&o));
}
