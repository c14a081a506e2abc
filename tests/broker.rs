//! The credential broker (`cairn-broker`, a real process over TLS) against a locally generated
//! issuer key set and moto's STS: a valid projected token gets credentials scoped by a session
//! policy (the exact writer grant of its workspace) and the tenant's key; wrong audience, wrong
//! issuer, expired, bad signature, unsigned, foreign namespace and unlisted service account are
//! refused with a clear error; nothing secret reaches its logs; and a pod holding only the token
//! backs up and restores through it, with no store credential or key file of its own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use cairn_engine::access::policy::{aws_identity_policy, Target};
use cairn_engine::access::Grant;
use cairn_engine::broker::BrokerClient;
use cairn_engine::Error;

use crate::support::servers::*;
use crate::support::*;

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const AUDIENCE: &str = "cairn-broker";

struct BrokerProc {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    bucket: String,
}

impl BrokerProc {
    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn pki(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A client of this broker sending `token`.
    fn client(&self, token: &str) -> BrokerClient {
        let file = self.dir.path().join(format!("token-{}", rand::random::<u64>()));
        std::fs::write(&file, token).expect("token file");
        BrokerClient::new(&self.url(), &file, Some(&self.pki("ca.crt"))).expect("client")
    }

    /// Stops the broker and returns what it logged.
    fn logs(&mut self) -> String {
        let child = self.child.take().expect("running");
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_child(&child),
            rustix::process::Signal::TERM,
        );
        let out = child.wait_with_output().expect("wait");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

impl Drop for BrokerProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A temp dir holding an issuer key set, a CA and the broker's certificate (`servers/pki.py`).
fn pki_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = Command::new(venv_python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("servers/pki.py"))
        .arg(dir.path())
        .output()
        .expect("pki.py");
    assert!(
        o.status.success(),
        "pki.py: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    dir
}

/// A tenant repository on the S3 server and a broker that serves it.
async fn start_broker() -> BrokerProc {
    let dir = pki_dir();
    let (store, bucket) = s3_store_with("t/tenant-a", s3_options()).await;
    TestRepo::on_store(store, default_params()).await;
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).expect("mkdir");
    std::fs::copy(test_key(), keys.join("tenant-a")).expect("tenant key");
    std::fs::write(keys.join("tenant-b"), random_bytes(99, 32)).expect("tenant key");
    let config = serde_json::json!({
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "jwks_file": dir.path().join("issuer-jwks.json"),
        "store": format!("s3://{bucket}/t"),
        "role_arn": "arn:aws:iam::123456789012:role/cairn-writer",
        "session_seconds": 900,
        "key_dir": keys,
        "namespaces": {
            "agents-a": { "tenant": "tenant-a", "workspace_from": "service-account" },
            "agents-b": { "tenant": "tenant-b", "service_accounts": ["allowed"], "workspace_from": "pod-name" },
        },
    });
    std::fs::write(dir.path().join("config.json"), config.to_string()).expect("config");
    let port = free_port();
    let mut cmd = Command::new(bin_path("cairn-broker"));
    cmd.arg("--config")
        .arg(dir.path().join("config.json"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .arg("--log-format")
        .arg("json")
        .env("AWS_ENDPOINT_URL", s3_server().endpoint())
        .env("AWS_ACCESS_KEY_ID", "cairn-test")
        .env("AWS_SECRET_ACCESS_KEY", "cairn-test-secret")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("start cairn-broker");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "cairn-broker did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    BrokerProc {
        dir,
        port,
        child: Some(child),
        bucket,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A projected service-account token as the kubelet mounts it, signed with `key` (PEM).
fn token(key: &Path, claims: serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("k1".into());
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(key).expect("key")).expect("rsa key");
    jsonwebtoken::encode(&header, &claims, &key).expect("sign")
}

fn claims(ns: &str, sa: &str, pod: &str) -> serde_json::Value {
    let t = now();
    serde_json::json!({
        "iss": ISSUER,
        "aud": [AUDIENCE],
        "sub": format!("system:serviceaccount:{ns}:{sa}"),
        "iat": t,
        "nbf": t,
        "exp": t + 600,
        "kubernetes.io": {
            "namespace": ns,
            "serviceaccount": { "name": sa, "uid": "0d7c4f0a-0000-4000-8000-000000000001" },
            "pod": { "name": pod, "uid": "0d7c4f0a-0000-4000-8000-000000000002" },
        },
    })
}

/// The session policies moto's STS received, by session name.
fn session_policies(server: &Server) -> Vec<(String, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    use std::io::{Read, Write};
    write!(
        s,
        "GET /moto-api/data.json HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("data.json: {e}: {body:.300}"));
    v["sts"]["AssumedRole"]
        .as_array()
        .map(|roles| {
            roles
                .iter()
                .map(|r| {
                    (
                        r["session_name"].as_str().unwrap_or_default().to_string(),
                        r["policy"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts the broker refuses a token with `claims` signed by the issuer.
async fn refused_claims(b: &BrokerProc, claims: serde_json::Value, status: &str, words: &str) {
    refused(
        b.client(&token(&b.pki("issuer.pem"), claims)).fetch().await,
        status,
        words,
    );
}

fn refused(r: cairn_engine::Result<cairn_engine::broker::Issued>, status: &str, words: &str) {
    match r {
        Err(Error::Invalid(m)) => assert!(m.contains(status) && m.contains(words), "{m}"),
        other => panic!("expected a refusal (HTTP {status}, {words:?}), got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_scopes_valid_tokens_refuses_the_rest_and_logs_no_secret() {
    let mut b = start_broker().await;
    let issuer = b.pki("issuer.pem");

    // A pod of tenant A's namespace, service account ws-1: its workspace.
    let good = token(&issuer, claims("agents-a", "ws-1", "pod-a"));
    let issued = b
        .client(&good)
        .fetch()
        .await
        .expect("credentials for a valid token");
    assert_eq!(issued.store, format!("s3://{}/t/tenant-a", b.bucket));
    assert_eq!(
        (issued.tenant.as_str(), issued.workspace.as_str()),
        ("tenant-a", "ws-1")
    );
    assert_eq!(issued.grant, "writer:ws-1");
    assert!(
        issued.expiration > now() + 800 && issued.expiration <= now() + 905,
        "{}",
        issued.expiration
    );
    let aws = issued.aws.clone().expect("aws credentials");
    let key = base64::engine::general_purpose::STANDARD
        .decode(issued.key.as_deref().expect("tenant key"))
        .expect("base64");
    assert_eq!(key, std::fs::read(test_key()).expect("key"));
    // The debug form shows no secret.
    let shown = format!("{issued:?}");
    assert!(!shown.contains(&aws.secret_access_key) && !shown.contains(issued.key.as_deref().unwrap_or("-")));
    // STS got exactly the writer grant of ws-1 on tenant A's prefix as the session policy.
    let want = aws_identity_policy(
        &"writer:ws-1".parse::<Grant>().expect("grant"),
        &Target::new(&b.bucket, "t/tenant-a").expect("target"),
    );
    let sent = session_policies(s3_server());
    let (_, policy) = sent
        .iter()
        .find(|(name, policy)| {
            name == "cairn@agents-a@pod-a" && policy.contains(&format!(":::{}/", b.bucket))
        })
        .unwrap_or_else(|| panic!("no AssumeRole session for the pod: {sent:?}"));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(policy).expect("policy json"),
        want
    );

    // Credentials near their expiry are fetched anew, with the token as it is now; the SDK is
    // told they expire five minutes early, so it asks again while they are still valid.
    {
        use aws_credential_types::provider::ProvideCredentials;
        let client = Arc::new(b.client(&good));
        let mut near = issued.clone();
        near.expiration = now() + 120;
        let creds = cairn_engine::broker::BrokerCredentials::new(client.clone(), near)
            .provide_credentials()
            .await
            .expect("refreshed credentials");
        assert_ne!(
            creds.access_key_id(),
            aws.access_key_id,
            "credentials near expiry were not refreshed"
        );
        // A refresh carries credentials only: the key was handed over once.
        let refreshed = client.refresh().await.expect("refresh");
        assert!(refreshed.key.is_none() && refreshed.aws.is_some());
        let until = creds
            .expiry()
            .expect("expiry")
            .duration_since(UNIX_EPOCH)
            .expect("time")
            .as_secs();
        assert!(
            until + 290 <= now() + 905 && until + 310 >= now() + 800,
            "reported expiry {until}"
        );
        // Fresh ones are handed out as they are, without asking the broker.
        let fresh = cairn_engine::broker::BrokerCredentials::new(client, issued.clone())
            .provide_credentials()
            .await
            .expect("credentials");
        assert_eq!(fresh.access_key_id(), aws.access_key_id);
        // A broker that cannot be reached leaves still-valid credentials in use a minute more,
        // and fails only once they are nearly gone.
        let dead = Arc::new(
            BrokerClient::new(
                &format!("https://127.0.0.1:{}", free_port()),
                &b.pki("tok-dead"),
                Some(&b.pki("ca.crt")),
            )
            .expect("client"),
        );
        let mut soon = issued.clone();
        soon.expiration = now() + 200;
        let kept = cairn_engine::broker::BrokerCredentials::new(dead.clone(), soon)
            .provide_credentials()
            .await
            .expect("kept while valid");
        assert_eq!(kept.access_key_id(), aws.access_key_id);
        let mut gone = issued.clone();
        gone.expiration = now() + 30;
        assert!(cairn_engine::broker::BrokerCredentials::new(dead, gone)
            .provide_credentials()
            .await
            .is_err());
    }

    // Tenant B's namespace maps the pod name, and only for the listed service account.
    let in_b = b
        .client(&token(&issuer, claims("agents-b", "allowed", "ws-7")))
        .fetch()
        .await
        .expect("tenant b");
    assert_eq!(
        (
            issued.tenant.as_str(),
            in_b.tenant.as_str(),
            in_b.workspace.as_str()
        ),
        ("tenant-a", "tenant-b", "ws-7")
    );

    let mut c = claims("agents-a", "ws-1", "pod-a");
    c["aud"] = serde_json::json!(["https://kubernetes.default.svc"]);
    refused_claims(&b, c, "401", "audience").await;
    let mut c = claims("agents-a", "ws-1", "pod-a");
    c["iss"] = "https://evil.example".into();
    refused_claims(&b, c, "401", "issuer").await;
    let mut c = claims("agents-a", "ws-1", "pod-a");
    c["exp"] = (now() - 120).into();
    refused_claims(&b, c, "401", "expired").await;
    refused(
        b.client(&token(&b.pki("other.pem"), claims("agents-a", "ws-1", "pod-a")))
            .fetch()
            .await,
        "401",
        "signature",
    );
    let mut c = claims("agents-a", "ws-1", "pod-a");
    c["sub"] = "system:serviceaccount:agents-a:other".into();
    refused_claims(&b, c, "401", "subject").await;
    let mut c = claims("agents-a", "ws-1", "pod-a");
    c["kubernetes.io"].as_object_mut().expect("object").remove("pod");
    refused_claims(&b, c, "401", "bound to a pod").await;
    // An unsigned token ("alg": "none") and garbage.
    let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let unsigned = format!(
        "{}.{}.",
        b64(serde_json::json!({"alg": "none", "typ": "JWT"})),
        b64(claims("agents-a", "ws-1", "pod-a"))
    );
    refused(b.client(&unsigned).fetch().await, "401", "token");
    refused(b.client("not-a-token").fetch().await, "401", "token");
    refused_claims(
        &b,
        claims("kube-system", "default", "pod-x"),
        "403",
        "not mapped to a tenant",
    )
    .await;
    refused_claims(&b, claims("agents-b", "intruder", "ws-7"), "403", "may not ask").await;
    // A service account whose name is no workspace name.
    refused_claims(&b, claims("agents-a", ".hidden", "pod-a"), "403", "workspace").await;
    // A token that lives longer than the broker accepts, or says nothing of when it was issued:
    // stolen from a pod, it would stay usable too long.
    let mut c = claims("agents-a", "ws-1", "pod-a");
    c["exp"] = (now() + 3 * 86_400).into();
    refused_claims(&b, c, "401", "longer than").await;
    let mut c = claims("agents-a", "ws-1", "pod-a");
    c.as_object_mut().expect("object").remove("iat");
    refused_claims(&b, c, "401", "iat").await;
    // A workspace name so long that its session policy would exceed STS's limit.
    let long = "w".repeat(128);
    refused_claims(&b, claims("agents-a", &long, "pod-a"), "403", "session policy").await;
    // Plain HTTP is refused by the client itself; an unknown CA fails the handshake.
    let file = b.pki("tok");
    std::fs::write(&file, &good).expect("token");
    assert!(BrokerClient::new(&format!("http://127.0.0.1:{}", b.port), &file, None).is_err());
    let stranger = BrokerClient::new(&b.url(), &file, Some(&b.pki("tls.crt"))).expect("client");
    assert!(
        matches!(stranger.fetch().await, Err(Error::Store { .. })),
        "a certificate not from the CA was trusted"
    );

    // Nothing secret in the broker's logs: no token, no credential, no key.
    let logs = b.logs();
    assert!(logs.contains("issued writer credentials"), "{logs}");
    for secret in [
        good.as_str(),
        aws.secret_access_key.as_str(),
        aws.session_token.as_str(),
        issued.key.as_deref().unwrap_or("-"),
    ] {
        assert!(!logs.contains(secret), "a secret reached the broker's log");
    }
    for line in logs.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("log line {line:?}: {e}"));
    }
}

/// A broker configured to accept tokens of an audience other services share refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_refuses_a_foreign_audience() {
    let dir = pki_dir();
    for aud in [
        "sts.amazonaws.com",
        "https://kubernetes.default.svc.cluster.local",
        "",
    ] {
        let config = serde_json::json!({
            "issuer": ISSUER, "audience": aud, "jwks_file": dir.path().join("issuer-jwks.json"),
            "store": "s3://agent-workspaces/t", "role_arn": "arn:aws:iam::123456789012:role/cairn-writer",
            "namespaces": {},
        });
        std::fs::write(dir.path().join("config.json"), config.to_string()).expect("config");
        // Under timeout(1): a broker that wrongly starts must not hang the suite.
        let o = Command::new("timeout")
            .arg("20")
            .arg(bin_path("cairn-broker"))
            .arg("--config")
            .arg(dir.path().join("config.json"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--tls-cert")
            .arg(dir.path().join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.path().join("tls.key"))
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .output()
            .expect("cairn-broker");
        assert!(!o.status.success(), "started with audience {aud:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("audience"), "{err}");
    }
}

/// A pod with nothing but its projected token: `initctl backup` and `restore` get the repository,
/// the key and refreshed credentials from the broker, and hold themselves to its grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_with_only_a_token_backs_up_and_restores_through_the_broker() {
    let b = start_broker().await;
    let tok = b.pki("pod-token");
    std::fs::write(
        &tok,
        token(&b.pki("issuer.pem"), claims("agents-a", "ws-1", "pod-a")),
    )
    .expect("token");
    let src = b.pki("ws");
    build_everything_tree(&src, 31);
    let (ca, tok_s, url, endpoint) = (
        b.pki("ca.crt").display().to_string(),
        tok.display().to_string(),
        b.url(),
        s3_server().endpoint(),
    );
    let cache = b.pki("cache").display().to_string();
    // No CAIRN_STORE, no key file, no AWS credentials: only the token.
    let env: Vec<(&str, &str)> = vec![
        ("CAIRN_BROKER_URL", &url),
        ("CAIRN_BROKER_TOKEN_FILE", &tok_s),
        ("CAIRN_BROKER_CA", &ca),
        ("CAIRN_WORKSPACE", "ws-1"),
        ("CAIRN_KEY_FILE", ""),
        ("CAIRN_CACHE_DIR", &cache),
        ("AWS_ENDPOINT_URL", &endpoint),
        ("AWS_ACCESS_KEY_ID", ""),
        ("AWS_SECRET_ACCESS_KEY", ""),
        ("AWS_REGION", "us-east-1"),
        ("AWS_CONFIG_FILE", "/nonexistent"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let o = initctl(&["backup", src.to_str().expect("utf-8")], &env);
    assert!(o.status.success(), "backup through the broker: {}", stderr(&o));
    let out = b.pki("out");
    let o = initctl(&["restore", out.to_str().expect("utf-8")], &env);
    assert!(o.status.success(), "restore through the broker: {}", stderr(&o));
    assert_same_tree(&src, &out);
    // Another workspace is refused up front: the broker scopes this pod to ws-1.
    let mut other = env.clone();
    other.retain(|(k, _)| *k != "CAIRN_WORKSPACE");
    other.push(("CAIRN_WORKSPACE", "ws-2"));
    let o = initctl(&["backup", src.to_str().expect("utf-8")], &other);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("scopes this pod to workspace \"ws-1\""),
        "{}",
        stderr(&o)
    );
    // So is a store the broker did not issue.
    let mut wrong = env.clone();
    wrong.push(("CAIRN_STORE", "s3://elsewhere/t/tenant-z"));
    let o = initctl(&["snapshots"], &wrong);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("scopes this pod to s3://"), "{}", stderr(&o));
    // The repository on the store opens with the tenant key and holds the pod's snapshot.
    let store: Arc<dyn cairn_engine::Store> = Arc::new(
        cairn_engine::S3Store::connect(&b.bucket, "t/tenant-a", s3_options())
            .await
            .expect("s3"),
    );
    let repo = cairn_engine::Repo::open_with(store, &keys()).await.expect("open");
    assert!(repo.head("ws-1").await.expect("head").is_some());
}
