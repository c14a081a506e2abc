//! Least privilege: the roles' grants (writer, reader, gc) enforced by `GrantStore` under every
//! backend, the policies `initctl policy` prints (pinned by golden JSON), and moto's IAM
//! enforcement holding users to exactly those policies through a whole backup, restore, forget and
//! GC cycle.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cairn_engine::access::{Grant, GrantStore};
use cairn_engine::{
    forget, forget_workspace, fork, gc, Error, GcOptions, GcsOptions, Heartbeat, HeartbeatWriter, LocalStore,
    PutMode, Repo, S3Options, S3Store, Store, StoreExt,
};

use crate::gc::keep_last;
use crate::support::servers::*;
use crate::support::*;

fn gc_opts() -> GcOptions {
    crate::gc::opts(Duration::ZERO)
}

fn beat(ws: &str, host: &str, state: &str) -> Heartbeat {
    Heartbeat {
        workspace: ws.into(),
        host: host.into(),
        state: state.into(),
        started: 1,
        time: 2,
        last_snapshot: None,
        last_success: None,
        interval: Some(60),
    }
}

/// `store` behind `grant`.
fn granted(store: &Arc<dyn Store>, grant: &str) -> Arc<dyn Store> {
    Arc::new(GrantStore::new(
        store.clone(),
        grant.parse::<Grant>().expect("grant"),
    ))
}

/// A handle on the same repository as `t`, through `store`, with its own cache.
async fn as_role(store: Arc<dyn Store>) -> TestRepo {
    TestRepo {
        dir: tempfile::tempdir().expect("tempdir"),
        repo: Repo::open_with(store, &keys()).await.expect("open"),
    }
}

/// Every key and size outside `packs/` and `index/records/` (which a refused backup may have
/// added before its refusal: unreferenced, for GC) - what a refusal must leave unchanged.
async fn stored_state(store: &dyn Store) -> BTreeMap<String, u64> {
    store
        .list("")
        .await
        .expect("list")
        .into_iter()
        .filter(|o| !o.key.starts_with("packs/") && !o.key.starts_with("index/records/"))
        .map(|o| (o.key, o.size))
        .collect()
}

/// Asserts `r` was refused by the grant, naming the key and the grant.
fn assert_denied<T: std::fmt::Debug>(r: cairn_engine::Result<T>, key_part: &str, grant: &str) {
    match r {
        Err(e @ Error::Denied { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(key_part) && msg.contains(grant), "{msg}");
        }
        other => panic!("expected a refusal naming {key_part} by {grant}, got {other:?}"),
    }
}

/// A pod's whole life within the writer grant of its workspace, then everything outside it
/// refused and named with nothing stored changed; a reader restores and checks; GC forgets and
/// collects.
async fn roles_hold_on(full: Arc<dyn Store>) {
    let op = TestRepo::on_store(full.clone(), small_params()).await;
    let base = op.scratch("base");
    build_everything_tree(&base, 21);
    op.backup("base", &base).await;

    // The pod: its init container forks the base into its new workspace and restores it; the
    // sidecar beats, checkpoints twice and beats again.
    let w = as_role(granted(&full, "writer:ws-1")).await;
    fork(&w.repo, "base", None, "ws-1", "pod-a")
        .await
        .expect("fork within the writer grant");
    let vol = w.scratch("vol");
    w.restore("ws-1", None, &vol).await;
    assert_same_tree(&base, &vol);
    let hb = HeartbeatWriter::new("ws-1", "pod-a").expect("heartbeat writer");
    hb.beat(&w.repo, &beat("ws-1", "pod-a", "running"))
        .await
        .expect("heartbeat");
    write(&vol.join("new.bin"), &random_bytes(5, 200_000));
    w.backup("ws-1", &vol).await;
    write(&vol.join("more.bin"), &random_bytes(6, 90_000));
    let last = w.backup("ws-1", &vol).await;
    hb.beat(&w.repo, &beat("ws-1", "pod-a", "stopped"))
        .await
        .expect("heartbeat swap");
    let out = w.scratch("out");
    w.restore("ws-1", None, &out).await;
    assert_same_tree(&vol, &out);

    // Everything else the writer tries is refused before it reaches the store.
    let before = stored_state(full.as_ref()).await;
    let g = "writer:ws-1";
    assert_denied(w.try_backup("ws-2", &vol).await, "snapshots/ws-2/", g);
    assert_denied(
        fork(&w.repo, "base", None, "ws-3", "pod-a").await,
        "snapshots/ws-3/",
        g,
    );
    assert_denied(forget_workspace(&w.repo, "ws-1", false).await, "heads/ws-1", g);
    assert_denied(
        forget(&w.repo, "ws-1", &keep_last(1), false).await,
        "snapshots/ws-1/",
        g,
    );
    assert_denied(gc(&w.repo, &gc_opts()).await, "gc/", g);
    let new_key = w.scratch("k2");
    write(&new_key, &random_bytes(77, 32));
    assert_denied(
        w.repo
            .key_add(&keys(), &cairn_engine::NewKey::File(new_key.clone()))
            .await,
        "keys/",
        g,
    );
    let other = HeartbeatWriter::new("ws-2", "pod-a").expect("heartbeat writer");
    assert_denied(
        other.beat(&w.repo, &beat("ws-2", "pod-a", "running")).await,
        "heartbeats/ws-2/",
        g,
    );
    let pack = full.list("packs/data/").await.expect("list")[0].key.clone();
    let version = full.get(&pack).await.expect("get").version;
    let ws = w.repo.store();
    assert_denied(
        ws.put(&pack, Bytes::from_static(b"x"), PutMode::Update(version))
            .await,
        &pack,
        g,
    );
    assert_denied(ws.delete(&pack).await, &pack, g);
    assert_denied(
        ws.put("index/compact/x/0000", Bytes::new(), PutMode::Create)
            .await,
        "index/compact/",
        g,
    );
    assert_denied(ws.put("config", Bytes::new(), PutMode::Create).await, "config", g);
    assert_denied(
        ws.put("heads/base", Bytes::new(), PutMode::Create).await,
        "heads/base",
        g,
    );
    assert_eq!(
        stored_state(full.as_ref()).await,
        before,
        "a refusal changed what is stored"
    );
    assert_eq!(
        op.reopen()
            .await
            .head("ws-1")
            .await
            .expect("head")
            .expect("ws-1 head")
            .0
            .snapshot,
        last.snapshot
    );

    // A reader restores and verifies everything, and writes nothing.
    let r = as_role(granted(&full, "reader")).await;
    let rout = r.scratch("out");
    r.restore("ws-1", None, &rout).await;
    assert_same_tree(&vol, &rout);
    assert!(check_repo(&r.repo, true).await.errors.is_empty());
    assert_denied(r.try_backup("ws-1", &vol).await, "", "reader");
    assert_eq!(stored_state(full.as_ref()).await, before);

    // GC forgets and collects; everything kept still restores.
    let c = as_role(granted(&full, "gc")).await;
    forget(&c.repo, "ws-1", &keep_last(1), false)
        .await
        .expect("forget as gc");
    gc(&c.repo, &gc_opts()).await.expect("gc as gc");
    gc(&c.repo, &gc_opts()).await.expect("second gc as gc");
    let cout = c.scratch("out");
    c.restore("ws-1", None, &cout).await;
    assert_same_tree(&vol, &cout);
    assert!(check_repo(&c.repo, true).await.errors.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_hold_on_the_local_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    roles_hold_on(Arc::new(LocalStore::new(dir.path()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_hold_on_s3() {
    let (store, _) = s3_store_with("t/tenant-a", s3_options()).await;
    roles_hold_on(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_hold_on_gcs() {
    let (store, _) = gcs_store_on(gcs_server(), "t/tenant-a", GcsOptions::default()).await;
    roles_hold_on(store).await;
}

/// `initctl policy` output for one set of arguments.
fn policy(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["policy"];
    all.extend_from_slice(args);
    let o = initctl(&all, &[]);
    assert!(o.status.success(), "initctl {all:?}: {}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap_or_else(|e| panic!("initctl {all:?}: not JSON: {e}"))
}

/// The policies `initctl policy` prints are pinned: a change to a right is a reviewed change
/// to the golden file (`CAIRN_UPDATE_GOLDEN=1` rewrites them). moto, below, cannot prove the
/// conditions in them (see its test), so the golden files are what holds those.
#[test]
fn printed_policies_match_the_golden_files() {
    let s3 = "--store=s3://agent-workspaces/t/tenant-a";
    let gs = "--store=gs://agent-workspaces/t/tenant-a";
    let cases: &[(&str, &[&str])] = &[
        ("aws-writer.json", &[s3, "--role=writer", "--workspace=ws-42"]),
        ("aws-reader.json", &[s3, "--role=reader"]),
        ("aws-gc.json", &[s3, "--role=gc"]),
        (
            "aws-bucket.json",
            &[
                "--cloud=aws",
                "--bucket=agent-workspaces",
                "--prefix=t/tenant-a",
                "--prefix=t/tenant-b",
                "--bucket-policy",
                "--gc-principal=arn:aws:iam::123456789012:role/cairn-gc",
            ],
        ),
        ("gcp-writer.json", &[gs, "--role=writer", "--workspace=ws-42"]),
        ("gcp-reader.json", &[gs, "--role=reader"]),
        (
            "gcp-gc-bindings.json",
            &[
                gs,
                "--role=gc",
                "--member=serviceAccount:cairn-gc@my-project.iam.gserviceaccount.com",
            ],
        ),
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/policy");
    for (name, args) in cases {
        let got = serde_json::to_string_pretty(&policy(args)).expect("json") + "\n";
        let path = dir.join(name);
        if std::env::var_os("CAIRN_UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(&path, &got).expect("write golden");
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            got, want,
            "{name} changed; review it and rerun with CAIRN_UPDATE_GOLDEN=1"
        );
    }
    for bad in [
        &["--role=writer"][..],
        &[s3, "--role=reader", "--workspace=w"],
        &[s3, "--role=writer", "--workspace=../x"],
        &[s3, "--bucket-policy"],
        &[s3, "--bucket-policy", "--gc-principal=cairn-gc"],
        &[
            s3,
            "--bucket-policy",
            "--gc-principal=arn:aws:iam::123456789012:role/*",
        ],
        &[gs, "--bucket-policy", "--gc-principal=arn:aws:iam::1:role/gc"],
        &["--cloud=aws", "--bucket=b", "--prefix=t/*", "--role=gc"],
    ] {
        let mut all = vec!["policy"];
        all.extend_from_slice(bad);
        let o = initctl(&all, &[]);
        assert!(!o.status.success() && !stderr(&o).trim().is_empty(), "{bad:?}");
        assert!(stdout(&o).is_empty(), "{bad:?} printed a policy");
    }
}

fn s3_as(server: &Server, keys: &BTreeMap<String, (String, String)>, user: &str) -> S3Options {
    S3Options {
        endpoint: Some(server.endpoint()),
        static_credentials: Some(keys[user].clone()),
        ..S3Options::default()
    }
}

fn refused_by_s3<T: std::fmt::Debug>(r: cairn_engine::Result<T>, what: &str) {
    match r {
        Err(e @ Error::Store { retryable: false, .. }) if e.to_string().contains("403") => {}
        other => panic!("{what}: expected HTTP 403 from the server's IAM, got {other:?}"),
    }
}

/// moto with IAM enforcement, its users carrying exactly the identity policies `initctl policy`
/// prints: a writer's pod life works; the writer cannot delete, cannot write another workspace's
/// head or manifest or GC's state; a reader cannot write; GC forgets and collects.
///
/// What moto does not enforce, and so this test cannot show (the golden files pin it instead):
/// condition operators other than `StringEquals` are treated as met, so `Null` on
/// `s3:if-none-match` (create-only for immutable keys), `Bool` on `s3:ObjectCreationOperation`
/// and `StringLike` on `s3:prefix` allow everything here; moto applies no bucket policy whose
/// principal is not `"*"` and would treat the bucket policy's `ArnNotLike` exemption as met
/// (denying GC its deletes), so the bucket policy is not installed; session policies and
/// `${aws:PrincipalTag/…}` variables are not evaluated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_iam_holds_each_role_to_its_printed_policy() {
    let bucket = bucket_name();
    let store_url = format!("--store=s3://{bucket}/t/tenant-a");
    let users = [
        (
            "writer",
            policy(&[&store_url, "--role=writer", "--workspace=ws-1"]),
        ),
        ("reader", policy(&[&store_url, "--role=reader"])),
        ("gc", policy(&[&store_url, "--role=gc"])),
    ];
    let (server, keys) = s3_iam_server(&bucket, &users);
    let connect = |user: &str| {
        let opts = s3_as(&server, &keys, user);
        let bucket = bucket.clone();
        async move { Arc::new(S3Store::connect(&bucket, "t/tenant-a", opts).await.expect("s3")) as Arc<dyn Store> }
    };
    let (gc_store, writer_store, reader_store) = (
        connect("gc").await,
        connect("writer").await,
        connect("reader").await,
    );

    // Unsigned or unknown credentials get nothing.
    let stranger = S3Options {
        endpoint: Some(server.endpoint()),
        static_credentials: Some(("AKIAIOSFODNN7EXAMPLE".into(), "nope".into())),
        ..S3Options::default()
    };
    let nobody = S3Store::connect(&bucket, "t/tenant-a", stranger)
        .await
        .expect("s3");
    assert!(nobody.list("").await.is_err());

    // The operator (GC role) creates the repository and a base workspace.
    let op = TestRepo::on_store(gc_store.clone(), small_params()).await;
    let base = op.scratch("base");
    build_everything_tree(&base, 22);
    op.backup("base", &base).await;

    // The pod, with the writer's credentials.
    let w = as_role(writer_store.clone()).await;
    fork(&w.repo, "base", None, "ws-1", "pod-a")
        .await
        .expect("fork as writer");
    let vol = w.scratch("vol");
    w.restore("ws-1", None, &vol).await;
    assert_same_tree(&base, &vol);
    let hb = HeartbeatWriter::new("ws-1", "pod-a").expect("hb");
    hb.beat(&w.repo, &beat("ws-1", "pod-a", "running"))
        .await
        .expect("heartbeat");
    write(&vol.join("new.bin"), &random_bytes(8, 150_000));
    w.backup("ws-1", &vol).await;
    hb.beat(&w.repo, &beat("ws-1", "pod-a", "stopped"))
        .await
        .expect("heartbeat swap");

    // Outside the writer's policy, the server refuses.
    let before = stored_state(gc_store.as_ref()).await;
    let pack = gc_store.list("packs/").await.expect("list")[0].key.clone();
    refused_by_s3(writer_store.delete(&pack).await, "writer deletes a pack");
    refused_by_s3(
        writer_store
            .put("heads/base", Bytes::from_static(b"x"), PutMode::Create)
            .await,
        "writer writes another workspace's head",
    );
    let head = gc_store.get("heads/base").await.expect("base head");
    refused_by_s3(
        writer_store
            .put(
                "heads/base",
                Bytes::from_static(b"x"),
                PutMode::Update(head.version),
            )
            .await,
        "writer swaps another workspace's head",
    );
    refused_by_s3(
        writer_store
            .put("snapshots/base/00", Bytes::from_static(b"x"), PutMode::Create)
            .await,
        "writer writes another workspace's manifest",
    );
    refused_by_s3(
        writer_store
            .put("gc/state", Bytes::from_static(b"x"), PutMode::Create)
            .await,
        "writer writes GC state",
    );
    refused_by_s3(
        writer_store
            .put("keys/00", Bytes::from_static(b"x"), PutMode::Create)
            .await,
        "writer adds a key",
    );
    refused_by_s3(forget_workspace(&w.repo, "ws-1", false).await, "writer forgets");
    refused_by_s3(
        reader_store
            .put("packs/data/00/00", Bytes::from_static(b"x"), PutMode::Create)
            .await,
        "reader writes",
    );
    refused_by_s3(reader_store.delete(&pack).await, "reader deletes");
    assert_eq!(
        stored_state(gc_store.as_ref()).await,
        before,
        "a refused request changed the store"
    );
    assert!(gc_store.get_opt(&pack).await.expect("get").is_some());

    // A reader restores and checks.
    let r = as_role(reader_store.clone()).await;
    let rout = r.scratch("out");
    r.restore("ws-1", None, &rout).await;
    assert_same_tree(&vol, &rout);
    assert!(check_repo(&r.repo, true).await.errors.is_empty());

    // GC forgets and collects with its own rights; what is kept restores.
    forget(&op.repo, "ws-1", &keep_last(1), false)
        .await
        .expect("forget as gc");
    gc(&op.repo, &gc_opts()).await.expect("gc");
    gc(&op.repo, &gc_opts()).await.expect("gc again");
    let out = op.scratch("out");
    op.restore("ws-1", None, &out).await;
    assert_same_tree(&vol, &out);
    assert!(check_repo(&op.repo, true).await.errors.is_empty());
}

/// In every example of deploy/, the agent container has no token, no cloud credential, no key,
/// no Cairn cache or control socket, and the pod mounts no API token; the Cairn containers drop
/// every capability but exactly those the capability table of deploy/README.md lists, run with a
/// read-only root file system, no privilege escalation and the RuntimeDefault seccomp profile.
#[test]
fn deploy_examples_give_the_agent_nothing_and_cairn_only_the_documented_capabilities() {
    let check = r#"
import glob, re, sys, yaml
root = sys.argv[1]
readme = open(root + "/deploy/README.md").read()
table = readme.split("<!-- capabilities: parsed by tests/access.rs -->", 1)[1]
caps = {}
for line in table.strip().splitlines()[2:]:
    if not line.startswith("|"):
        break
    name, listed = [c.strip() for c in line.strip("|").split("|")][:2]
    name = name.split("`")[1] + (" freezing" if "CAIRN_FREEZE" in name else "")
    caps[name] = set() if listed == "none" else {c.strip() for c in listed.split(",")}
assert set(caps) == {"restore", "cairn-sidecar", "cairn-sidecar freezing", "gc", "broker"}, caps

def pod_specs(doc):
    kind = doc.get("kind")
    if kind == "Pod":
        yield doc["metadata"], doc["spec"]
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        t = doc["spec"]["template"]
        yield t.get("metadata", {}), t["spec"]
    elif kind == "CronJob":
        t = doc["spec"]["jobTemplate"]["spec"]["template"]
        yield t.get("metadata", {}), t["spec"]

secret_env = re.compile(r"^(AWS_|GOOGLE_|GCE_|CLOUDSDK_|CAIRN_BROKER|CAIRN_KEY|CAIRN_STORE|AZURE_)")
seen_agent = seen_cairn = 0
for path in sorted(glob.glob(root + "/deploy/*.yaml")):
    for doc in yaml.safe_load_all(open(path)):
        if not doc:
            continue
        for meta, spec in pod_specs(doc):
            where = path.rsplit("/", 1)[1]
            vols = {v["name"]: v for v in spec.get("volumes", [])}
            assert spec.get("securityContext", {}).get("seccompProfile", {}).get("type") == "RuntimeDefault", where
            containers = spec.get("initContainers", []) + spec.get("containers", [])
            for c in containers:
                name = c["name"]
                sc = c.get("securityContext", {})
                if name == "agent":
                    seen_agent += 1
                    assert spec.get("automountServiceAccountToken") is False, where + ": the pod mounts an API token"
                    for m in c.get("volumeMounts", []):
                        v = vols[m["name"]]
                        assert "emptyDir" in v or "persistentVolumeClaim" in v or "ephemeral" in v, \
                            f"{where}: the agent mounts {m['name']}"
                        assert not m["name"].startswith("cairn"), f"{where}: the agent mounts {m['name']}"
                    for e in c.get("env", []):
                        assert not secret_env.match(e["name"]), f"{where}: the agent gets {e['name']}"
                    assert not c.get("envFrom"), where
                    # Without the broker the Cairn containers use the pod's ambient identity
                    # (IRSA, Pod Identity), which its webhook must skip for the agent.
                    brokered = any(e["name"] == "CAIRN_BROKER_URL" for k in containers for e in k.get("env", []))
                    skip = meta.get("annotations", {}).get("eks.amazonaws.com/skip-containers", "")
                    if not brokered:
                        assert "agent" in [s.strip() for s in skip.split(",")], where + ": IRSA would reach the agent"
                    assert sc.get("allowPrivilegeEscalation") is False, where
                    continue
                assert name in caps, f"{where}: container {name} is not in the capability table"
                seen_cairn += 1
                freeze = {e["name"]: e.get("value") for e in c.get("env", [])}.get("CAIRN_FREEZE", "auto")
                if name == "cairn-sidecar" and freeze != "never":
                    name = "cairn-sidecar freezing"
                got = sc.get("capabilities", {})
                assert got.get("drop") == ["ALL"], f"{where}: {name} keeps default capabilities"
                assert set(got.get("add", [])) == caps[name], f"{where}: {name} adds {got.get('add')}, the table lists {caps[name]}"
                assert sc.get("readOnlyRootFilesystem") is True, f"{where}: {name}"
                assert sc.get("allowPrivilegeEscalation") is False, f"{where}: {name}"
                assert not sc.get("privileged"), f"{where}: {name}"
            # No token volume of the API server's audience in any container of an agent pod.
            if any(c["name"] == "agent" for c in containers):
                for v in vols.values():
                    for src in v.get("projected", {}).get("sources", []):
                        t = src.get("serviceAccountToken")
                        if t:
                            assert t.get("audience") not in (None, "", "https://kubernetes.default.svc"), where
assert seen_agent >= 2 and seen_cairn >= 6, (seen_agent, seen_cairn)
print("ok")
"#;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let o = std::process::Command::new(venv_python())
        .arg("-c")
        .arg(check)
        .arg(&root)
        .output()
        .expect("python");
    assert!(
        o.status.success() && stdout(&o).trim() == "ok",
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
}

/// The capabilities deploy/README.md lists for `container`, as setpriv spells them.
fn documented_caps(container: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/README.md"))
        .expect("deploy/README.md");
    let table = readme
        .split("<!-- capabilities: parsed by tests/access.rs -->")
        .nth(1)
        .expect("capability table");
    let row = table
        .lines()
        .find(|l| l.starts_with(&format!("| `{container}` |")))
        .unwrap_or_else(|| panic!("no row for {container}"));
    let listed = row.split('|').nth(2).expect("capabilities column").trim();
    if listed == "none" {
        return Vec::new();
    }
    listed.split(',').map(|c| c.trim().to_ascii_lowercase()).collect()
}

/// `initctl` under a bounding set of exactly `caps` (root keeps no other capability).
fn initctl_with_caps(caps: &[String], args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let bounding = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = std::process::Command::new("setpriv");
    cmd.arg(format!("--bounding-set={bounding}"))
        .arg("--inh-caps=-all")
        .arg("--")
        .arg(initctl_path())
        .args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("CAIRN_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("CAIRN_KEY_FILE", test_key()).envs(env.iter().copied());
    cmd.output().expect("setpriv initctl")
}

/// A checkpoint with the sidecar's documented capabilities reads every file, and a restore with
/// the restore container's rebuilds the tree exactly (owners, modes, setuid bits, a device node,
/// files only their owner may read); without the capabilities that matter, each fails.
#[test]
fn a_backup_and_a_restore_need_only_the_documented_capabilities() {
    if !is_root() {
        eprintln!("skipped: dropping capabilities needs root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store").display().to_string();
    let env = [
        ("CAIRN_STORE", store.as_str()),
        ("CAIRN_WORKSPACE", "w"),
        (
            "CAIRN_CACHE_DIR",
            &*dir.path().join("cache").display().to_string(),
        ),
    ]
    .map(|(k, v)| (k, v.to_string()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let o = initctl(&["init"], &env);
    assert!(o.status.success(), "init: {}", stderr(&o));
    let src = dir.path().join("src");
    build_everything_tree(&src, 41);
    // What only privileges reach: a private directory and file of another user, a device node.
    use std::os::unix::fs::PermissionsExt;
    let private = src.join("private-of-1234");
    std::fs::create_dir(&private).expect("mkdir");
    write(&private.join("secret"), b"only its owner reads this");
    std::os::unix::fs::lchown(private.join("secret"), Some(1234), Some(1234)).expect("chown");
    std::fs::set_permissions(private.join("secret"), std::fs::Permissions::from_mode(0o400)).expect("chmod");
    std::os::unix::fs::lchown(&private, Some(1234), Some(1234)).expect("chown");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("null-device"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o600),
        rustix::fs::makedev(1, 3),
    )
    .expect("mknod");

    let sidecar = documented_caps("cairn-sidecar");
    let restore = documented_caps("restore");
    let src_s = src.to_str().expect("utf-8");
    // Without the DAC capabilities the private file is left out (exit 3): the list is needed.
    let without: Vec<String> = sidecar
        .iter()
        .filter(|c| !c.starts_with("dac_"))
        .cloned()
        .collect();
    let o = initctl_with_caps(&without, &["backup", src_s], &env);
    assert_eq!(
        o.status.code(),
        Some(3),
        "backup without DAC capabilities: {}",
        stderr(&o)
    );
    let o = initctl_with_caps(&sidecar, &["backup", src_s], &env);
    assert!(
        o.status.success(),
        "backup with the sidecar's capabilities: {}",
        stderr(&o)
    );

    let out = dir.path().join("out");
    let out_s = out.to_str().expect("utf-8");
    let without: Vec<String> = restore.iter().filter(|c| *c != "chown").cloned().collect();
    let o = initctl_with_caps(
        &without,
        &["restore", dir.path().join("out-nochown").to_str().expect("utf-8")],
        &env,
    );
    assert!(
        !o.status.success(),
        "a restore without CHOWN cannot restore owners"
    );
    let o = initctl_with_caps(&restore, &["restore", out_s], &env);
    assert!(
        o.status.success(),
        "restore with the restore container's capabilities: {}",
        stderr(&o)
    );
    assert_same_tree(&src, &out);
    make_writable(&src);
    make_writable(&out);
}
