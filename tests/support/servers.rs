//! Real protocol servers for the cloud store tests, started by the suite itself: moto's S3 server
//! and gcp-storage-emulator (as published, and with GCS preconditions; see `servers/launch.py`).
//!
//! Each server starts once per test process, on a free loopback port, from the virtualenv that
//! `scripts/test-servers.sh` installs (run here if it is missing). It exits when this process does:
//! it reads its stdin until EOF, and this process holds the other end. Each test uses its own
//! bucket.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cairn_engine::{GcsOptions, GcsStore, S3Options, S3Store, Store};

/// A running server.
pub struct Server {
    pub kind: &'static str,
    pub port: u16,
    _child: Mutex<(Child, ChildStdin)>,
}

impl Server {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Python of the test servers' virtualenv (installed on first use).
pub fn venv_python() -> PathBuf {
    let venv = std::env::var_os("CAIRN_PY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/cairn-py"));
    let o = Command::new("bash")
        .arg(repo_root().join("scripts/test-servers.sh"))
        .output()
        .expect("run scripts/test-servers.sh");
    assert!(
        o.status.success(),
        "scripts/test-servers.sh could not install the test servers from PyPI: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    venv.join("bin/python")
}

/// A TCP port free on the loopback interface right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn start(kind: &'static str) -> Server {
    start_with(kind, &[])
}

fn start_with(kind: &'static str, args: &[&Path]) -> Server {
    let python = venv_python();
    let port = free_port();
    let mut child = Command::new(python)
        .arg(repo_root().join("tests/servers/launch.py"))
        .arg(kind)
        .arg(port.to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a test server");
    let stdin = child.stdin.take().expect("stdin");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("server output");
    assert!(line.starts_with("ready"), "{kind} server did not start: {line:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{kind} server not listening on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server {
        kind,
        port,
        _child: Mutex::new((child, stdin)),
    }
}

/// moto's S3 server.
pub fn s3_server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| start("s3"))
}

/// moto's S3 server checking credentials (none are valid: it has no IAM users).
pub fn s3_auth_server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| start("s3-auth"))
}

/// A moto server of this test's own, enforcing IAM, with one bucket and one user per
/// `(name, identity policy)`: returns the server and each user's `(access key id, secret)`.
pub fn s3_iam_server(
    bucket: &str,
    users: &[(&str, serde_json::Value)],
) -> (Server, std::collections::BTreeMap<String, (String, String)>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = dir.path().join("spec.json");
    let out = dir.path().join("keys.json");
    let users: serde_json::Map<String, serde_json::Value> =
        users.iter().map(|(n, p)| (n.to_string(), p.clone())).collect();
    std::fs::write(
        &spec,
        serde_json::json!({ "bucket": bucket, "users": users }).to_string(),
    )
    .expect("spec");
    let server = start_with("s3-iam", &[&spec, &out]);
    let keys: std::collections::BTreeMap<String, (String, String)> =
        serde_json::from_slice(&std::fs::read(&out).expect("access keys")).expect("access keys json");
    (server, keys)
}

/// gcp-storage-emulator with GCS's ifGenerationMatch preconditions.
pub fn gcs_server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| start("gcs-cas"))
}

/// gcp-storage-emulator as published (ignores preconditions).
pub fn gcs_server_unconditional() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| start("gcs"))
}

/// A fresh bucket name, unique in this process and across concurrent test processes.
pub fn bucket_name() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "cairn-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// One HTTP/1.1 request with `Connection: close`; returns the status code.
fn http(port: u16, method: &str, path: &str, body: &[u8]) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .expect("write");
    s.write_all(body).expect("write body");
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Creates a bucket on the server.
pub fn create_bucket(server: &Server, bucket: &str) {
    let status = match server.kind {
        "s3" => http(server.port, "PUT", &format!("/{bucket}"), b""),
        _ => http(
            server.port,
            "POST",
            "/storage/v1/b?project=cairn-test",
            format!(r#"{{"name":"{bucket}"}}"#).as_bytes(),
        ),
    };
    assert_eq!(status, 200, "create bucket {bucket} on {}", server.kind);
}

/// S3 options pointing at the test server, with the test credentials.
pub fn s3_options() -> S3Options {
    S3Options {
        endpoint: Some(s3_server().endpoint()),
        static_credentials: Some(("cairn-test".into(), "cairn-test-secret".into())),
        ..S3Options::default()
    }
}

/// A new bucket on the S3 server and a store on it under `prefix`.
pub async fn s3_store_with(prefix: &str, opts: S3Options) -> (Arc<dyn Store>, String) {
    let bucket = bucket_name();
    create_bucket(s3_server(), &bucket);
    let store = S3Store::connect(&bucket, prefix, opts).await.expect("s3 store");
    (Arc::new(store), bucket)
}

/// A new bucket on the GCS emulator `server` and a store on it under `prefix`.
pub async fn gcs_store_on(server: &Server, prefix: &str, opts: GcsOptions) -> (Arc<dyn Store>, String) {
    let bucket = bucket_name();
    create_bucket(server, &bucket);
    let opts = GcsOptions {
        endpoint: Some(server.endpoint()),
        ..opts
    };
    let store = GcsStore::connect(&bucket, prefix, opts).await.expect("gcs store");
    (Arc::new(store), bucket)
}

/// Environment for a child process (the CLI) to reach the S3 test server.
pub fn s3_env() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", s3_server().endpoint()),
        ("AWS_ACCESS_KEY_ID", "cairn-test".into()),
        ("AWS_SECRET_ACCESS_KEY", "cairn-test-secret".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_CONFIG_FILE", "/nonexistent".into()),
        ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
}

/// Creates a symmetric key in moto's KMS (the S3 server serves every moto service) and returns its
/// id. The request carries a SigV4-shaped authorization header only so moto routes it to KMS; the
/// plain server checks no signature.
pub fn create_kms_key(server: &Server) -> String {
    let body = br#"{"Description":"cairn test key"}"#;
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    write!(
        s,
        "POST / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/x-amz-json-1.1\r\n\
         X-Amz-Target: TrentService.CreateKey\r\nX-Amz-Date: 20261201T000000Z\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=cairn-test/20261201/us-east-1/kms/aws4_request, \
         SignedHeaders=host, Signature=00\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len(),
        port = server.port
    )
    .expect("write");
    s.write_all(body).expect("write body");
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let json = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: serde_json::Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("CreateKey: {e}: {resp}"));
    v["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap_or_else(|| panic!("CreateKey: {resp}"))
        .to_string()
}
