//! Encryption at rest (format version 2): what a reader of the bucket can learn, what tampering
//! and planted objects do, and how keys behave (wrong, missing, rotated, never printed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cairn_formats::{FileKek, KeyObject, KeyWrap};

use crate::cli::{code, Cli};
use crate::support::*;

/// Every object of a local store, by its key, with its bytes.
fn store_objects(store: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![store.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read store dir").flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else {
                let key = p.strip_prefix(store).expect("under store").display().to_string();
                out.insert(key, std::fs::read(&p).expect("read object"));
            }
        }
    }
    out
}

/// The first object whose key starts with `prefix`.
fn first_key(objects: &BTreeMap<String, Vec<u8>>, prefix: &str) -> String {
    objects
        .keys()
        .find(|k| k.starts_with(prefix))
        .unwrap_or_else(|| panic!("no object under {prefix}"))
        .clone()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// A key file of 32 random bytes in `dir`.
fn key_file(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, random_bytes(seed, 32)).expect("write key file");
    p
}

/// The root key of the local store at `store`, unwrapped with `key` (as an attacker holding the
/// key file could): what must never appear in any output.
pub(crate) fn root_key_of(store: &Path, key: &Path) -> Vec<u8> {
    let config = std::fs::read(store.join("config")).expect("config");
    let repo = cairn_formats::RepoConfig::decode(&config)
        .expect("config decodes")
        .id;
    let kek = FileKek::from_file_bytes(&std::fs::read(key).expect("key file")).expect("key file");
    for (name, bytes) in store_objects(store) {
        if name.starts_with("keys/") {
            let k = KeyObject::decode(&bytes).expect("key object");
            assert_eq!(k.wrap, KeyWrap::File);
            if let Some(root) = kek.unwrap(&KeyObject::binding(repo, &k.id, &config), &k.wrapped) {
                return root.expose().to_vec();
            }
        }
    }
    panic!("no key object opens with {}", key.display());
}

/// The forms in which key material could leak: raw, hex and base64.
fn leak_forms(secret: &[u8]) -> Vec<Vec<u8>> {
    use base64::Engine;
    vec![
        secret.to_vec(),
        hex::encode(secret).into_bytes(),
        hex::encode_upper(secret).into_bytes(),
        base64::engine::general_purpose::STANDARD
            .encode(secret)
            .into_bytes(),
        base64::engine::general_purpose::STANDARD_NO_PAD
            .encode(secret)
            .into_bytes(),
    ]
}

pub(crate) fn assert_no_key_material(what: &str, output: &[u8], secrets: &[Vec<u8>]) {
    for s in secrets {
        for form in leak_forms(s) {
            assert!(
                !contains(output, &form),
                "{what}: key material appears in the output"
            );
        }
    }
}

#[test]
fn a_reader_of_two_tenants_finds_no_shared_id_and_no_trace_of_a_file() {
    let (a, b) = (Cli::new(), Cli::new());
    let key_b = key_file(b.path("").as_path(), "tenant-b.key", 77);
    let key_b_s = key_b.display().to_string();
    a.ok(&["init"]);
    let o = initctl(
        &["init"],
        &[("CAIRN_STORE", &b.store()), ("CAIRN_KEY_FILE", &key_b_s)],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // The same files in both tenants: a small secret (one chunk) and a larger incompressible one.
    let secret = b"DATABASE_PASSWORD=correct-horse-battery-staple-4242\n".to_vec();
    let big = random_bytes(9, 3 << 20);
    for c in [&a, &b] {
        write(&c.path("src/.env"), &secret);
        write(&c.path("src/blob.bin"), &big);
    }
    let src_a = a.path("src").display().to_string();
    a.ok(&["backup", "-w", "w", &src_a]);
    let src_b = b.path("src").display().to_string();
    let o = initctl(
        &["--json", "backup", "-w", "w", &src_b],
        &[
            ("CAIRN_STORE", &b.store()),
            ("CAIRN_CACHE_DIR", &b.cache()),
            ("CAIRN_KEY_FILE", &key_b_s),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    let new_bytes = report["new_bytes"].as_u64().expect("new_bytes");
    assert!(
        new_bytes >= (big.len() + secret.len()) as u64,
        "the second tenant deduplicated against the first: {report}"
    );

    let (sa, sb) = (
        store_objects(Path::new(&a.store())),
        store_objects(Path::new(&b.store())),
    );
    // No object name in common but the fixed ones.
    let names = |m: &BTreeMap<String, Vec<u8>>| -> std::collections::BTreeSet<String> {
        m.keys()
            .filter_map(|k| k.rsplit('/').next().map(str::to_string))
            .filter(|n| n.len() >= 32)
            .collect()
    };
    let shared: Vec<_> = names(&sa).intersection(&names(&sb)).cloned().collect();
    assert!(
        shared.is_empty(),
        "object names shared between tenants: {shared:?}"
    );

    // The tenant's own keyed ids of the files, and their plain hashes, appear nowhere: not in names,
    // not in bytes, not in either bucket. Neither does any plaintext.
    let repo_a = tokio_rt().block_on(async {
        cairn_engine::Repo::open_with(
            cairn_engine::open_store(&a.store()).await.expect("store"),
            &keys(),
        )
        .await
        .expect("open a")
    });
    let mut needles: Vec<Vec<u8>> = vec![
        secret.clone(),
        big[..4096].to_vec(),
        blake3::hash(&secret).as_bytes().to_vec(),
        blake3::hash(&big).as_bytes().to_vec(),
        repo_a.crypt().blob_id(&secret).0.to_vec(),
        b"blob.bin".to_vec(),
    ];
    for n in needles.clone() {
        if n.len() == 32 {
            needles.push(hex::encode(&n).into_bytes());
        }
    }
    for (tenant, objects) in [("a", &sa), ("b", &sb)] {
        for (name, bytes) in objects {
            for n in &needles {
                assert!(
                    !contains(bytes, n) && !contains(name.as_bytes(), n),
                    "tenant {tenant}: {name} reveals a file (needle of {} bytes)",
                    n.len()
                );
            }
        }
    }
}

/// An encrypted repository (the test key) with one snapshot of workspace `w`: a directory holding
/// the file `f`. Returns the CLI and the source directory.
fn one_file_backed_up(content: &[u8]) -> (Cli, String) {
    let c = Cli::new();
    c.ok(&["init"]);
    write(&c.path("src/f"), content);
    let src = c.path("src").display().to_string();
    c.ok(&["backup", "-w", "w", &src]);
    (c, src)
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Copies a store directory.
fn copy_store(from: &str, to: &Path) {
    copy_tree(Path::new(from), to);
}

#[test]
fn a_flipped_byte_in_each_kind_of_object_is_named_and_changes_nothing_stored() {
    let c = Cli::new();
    c.ok(&["init", "--pack-size", "1048576"]);
    write(&c.path("src/a.bin"), &random_bytes(1, 3 << 20));
    write(
        &c.path("src/b.txt"),
        &b"text that compresses well ".repeat(20_000),
    );
    std::fs::create_dir_all(c.path("src/dir/sub")).expect("mkdir");
    write(&c.path("src/dir/sub/c"), b"small");
    let src = c.path("src").display().to_string();
    c.ok(&["backup", "-w", "w", &src]);
    // GC writes its state (and the compacted index): sealed like everything else.
    c.ok(&["gc"]);
    let pristine = store_objects(Path::new(&c.store()));
    let restore_and_check: &[&str] = &["restore", "check"];
    let kinds: [(&str, &str, &[&str]); 9] = [
        ("packs/data/", "blob", restore_and_check),
        ("packs/meta/", "packs/meta/", restore_and_check),
        ("index/records/", "index/records/", restore_and_check),
        ("snapshots/w/", "snapshots/w/", restore_and_check),
        ("heads/w", "heads/w", restore_and_check),
        ("keys/", "key", restore_and_check),
        ("config", "config", restore_and_check),
        ("gc/state", "gc/state", &["backup", "gc"]),
        ("index/compact/", "index/compact/", &["backup"]),
    ];
    for (i, (prefix, named, commands)) in kinds.iter().enumerate() {
        let store = c.path(&format!("tampered-{i}"));
        copy_store(&c.store(), &store);
        // For packs the largest, so that its middle is in a blob a restore reads, not a trailer.
        let key = if prefix.starts_with("packs/") {
            pristine
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .max_by_key(|(_, v)| v.len())
                .map(|(k, _)| k.clone())
                .expect("a pack")
        } else {
            first_key(&pristine, prefix)
        };
        let path = store.join(&key);
        let mut bytes = std::fs::read(&path).expect("read");
        let at = bytes.len() / 2;
        bytes[at] ^= 0x01;
        std::fs::write(&path, &bytes).expect("write");
        let before = store_objects(&store);
        let store_s = store.display().to_string();
        let cache = c.path(&format!("cache-{i}")).display().to_string();
        let env = [
            ("CAIRN_STORE", store_s.as_str()),
            ("CAIRN_CACHE_DIR", cache.as_str()),
        ];
        let out = c.path(&format!("out-{i}")).display().to_string();
        // A second source, so that a backup has new data to deduplicate through the index.
        write(&c.path("src2/a.bin"), &random_bytes(1, 3 << 20));
        let src2 = c.path("src2").display().to_string();
        for what in commands.iter() {
            let o = match *what {
                "restore" => initctl(&["restore", "-w", "w", &out], &env),
                "check" => initctl(&["check", "--read-data"], &env),
                "backup" => initctl(&["backup", "-w", "w2", &src2], &env),
                _ => initctl(&["gc"], &env),
            };
            let o = &o;
            if *what == "restore" && *prefix == "packs/meta/" && o.status.success() {
                // The flip fell in the trailer, which a restore does not read; check does.
                continue;
            }
            if *prefix == "index/compact/" {
                // The compacted index only saves uploads: a segment that does not open is named
                // in a warning and the backup goes on without it (storing what it would have
                // deduplicated).
                assert!(o.status.success(), "{}", stderr(o));
                assert!(
                    stderr(o).contains(named) && stderr(o).contains("unusable"),
                    "{}",
                    stderr(o)
                );
                continue;
            }
            assert_ne!(code(o), 0, "{what} after flipping {key} succeeded");
            let err = stderr(o);
            assert!(
                err.contains(named),
                "{what} after flipping {key}: does not name it: {err}"
            );
            assert!(!err.contains("panicked"), "{err}");
        }
        if !commands.contains(&"backup") {
            assert_eq!(
                store_objects(&store),
                before,
                "a command changed the store after {key} was flipped"
            );
        } else {
            // A refused backup may leave packs (reused by the next one, or collected), never a
            // snapshot or a head, and changes nothing that was there.
            let after = store_objects(&store);
            assert!(
                *prefix == "index/compact/"
                    || !after
                        .keys()
                        .any(|k| k.starts_with("snapshots/w2/") || k.starts_with("heads/w2")),
                "a backup committed after {key} was flipped"
            );
            for (k, v) in &before {
                assert_eq!(after.get(k), Some(v), "{k} changed after {key} was flipped");
            }
        }
    }
}

#[test]
fn planted_key_objects_and_heartbeats_lock_no_one_out_and_state_is_sealed() {
    let (c, _) = one_file_backed_up(b"data");
    c.ok(&["gc"]);
    let store = Path::new(&c.store()).to_path_buf();
    // gc/state is sealed: none of its JSON is readable.
    let state = std::fs::read(store.join("gc/state")).expect("gc/state");
    for word in [&b"generation"[..], b"condemned", b"compact"] {
        assert!(!contains(&state, word), "gc/state is readable");
    }
    write(
        &store.join("keys/00000000000000000000000000000000"),
        b"garbage, not a key object",
    );
    write(&store.join("heartbeats/w/evil-pod"), b"{\"state\": \"running\"}");
    let o = c.run(&["snapshots"]);
    assert!(
        o.status.success(),
        "a planted key object locked the repository: {}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("keys/00000000000000000000000000000000"),
        "{}",
        stderr(&o)
    );
    let out = c.path("out").display().to_string();
    let (s, cache) = (c.store(), c.cache());
    let o = initctl(
        &["restore", "-w", "w", &out],
        &[
            ("CAIRN_STORE", &s),
            ("CAIRN_CACHE_DIR", &cache),
            ("CAIRN_WAIT_PREVIOUS", "30s"),
        ],
    );
    assert!(
        o.status.success(),
        "a planted heartbeat stopped the restore: {}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("heartbeat skipped"), "{}", stderr(&o));
    assert_eq!(std::fs::read(c.path("out/f")).expect("restored"), b"data");
}

#[test]
fn objects_moved_or_copied_in_from_another_tenant_do_not_open() {
    let (a, b) = (Cli::new(), Cli::new());
    let key_b = key_file(b.path("").as_path(), "b.key", 5).display().to_string();
    let env_b = |c: &Cli| {
        vec![
            ("CAIRN_STORE", c.store()),
            ("CAIRN_CACHE_DIR", c.cache()),
            ("CAIRN_KEY_FILE", key_b.clone()),
        ]
    };
    let run_b = |args: &[&str]| {
        let env = env_b(&b);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        initctl(args, &env)
    };
    a.ok(&["init", "--pack-size", "262144"]);
    assert!(run_b(&["init", "--pack-size", "262144"]).status.success());
    for c in [&a, &b] {
        write(&c.path("src/x.bin"), &random_bytes(3, 1 << 20));
        write(&c.path("src/y.bin"), &random_bytes(4, 1 << 20));
    }
    a.ok(&["backup", "-w", "w", &a.path("src").display().to_string()]);
    assert!(
        run_b(&["backup", "-w", "w", &b.path("src").display().to_string()])
            .status
            .success()
    );
    let (sa, sb) = (
        store_objects(Path::new(&a.store())),
        store_objects(Path::new(&b.store())),
    );

    // B's manifest planted in A's workspace: A's listing refuses it by name.
    let planted = first_key(&sb, "snapshots/w/");
    let dest = Path::new(&a.store()).join(&planted);
    std::fs::write(&dest, &sb[&planted]).expect("plant");
    let o = a.run(&["snapshots"]);
    assert_ne!(code(&o), 0, "a planted manifest was listed: {}", stdout(&o));
    assert!(stderr(&o).contains(&planted), "{}", stderr(&o));
    std::fs::remove_file(&dest).expect("unplant");

    // One of A's data packs replaced by another of A's (a blob now at a slot where another is
    // expected), then by one of B's: restores fail and name a blob of the pack.
    let data_a: Vec<&String> = sa.keys().filter(|k| k.starts_with("packs/data/")).collect();
    assert!(data_a.len() >= 2, "want two data packs: {data_a:?}");
    let data_b = first_key(&sb, "packs/data/");
    for source in [sa[data_a[1]].clone(), sb[&data_b].clone()] {
        std::fs::write(Path::new(&a.store()).join(data_a[0]), &source).expect("swap");
        let out = a.path("out");
        let _ = std::fs::remove_dir_all(&out);
        let o = a.run(&["restore", "-w", "w", &out.display().to_string()]);
        assert_ne!(code(&o), 0, "a restore from a swapped pack succeeded");
        assert!(
            stderr(&o).contains(data_a[0].as_str()) || stderr(&o).contains("authenticate"),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn wrong_missing_and_rotated_keys() {
    let (c, src) = one_file_backed_up(b"kept through a key rotation");
    let pristine = store_objects(Path::new(&c.store()));
    let (store, cache) = (c.store(), c.cache());
    let with_key = |key: &str, args: &[&str]| {
        initctl(
            args,
            &[
                ("CAIRN_STORE", &store),
                ("CAIRN_CACHE_DIR", &cache),
                ("CAIRN_KEY_FILE", key),
            ],
        )
    };
    let out = |n: &str| c.path(n).display().to_string();

    // Missing, too short, unreadable, wrong: one clear error each, nothing stored changes.
    let o = with_key("", &["restore", "-w", "w", &out("o1")]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("encrypted") && stderr(&o).contains("CAIRN_KEY_FILE"),
        "{}",
        stderr(&o)
    );
    let short = c.path("short.key");
    std::fs::write(&short, b"hunter2").expect("write");
    let o = with_key(&short.display().to_string(), &["snapshots"]);
    assert_ne!(code(&o), 0);
    assert!(
        stderr(&o).contains("short.key") && stderr(&o).contains("32"),
        "{}",
        stderr(&o)
    );
    assert!(
        !stderr(&o).contains("hunter2"),
        "the key file's bytes were printed"
    );
    let o = with_key(&c.path("nope.key").display().to_string(), &["snapshots"]);
    assert_ne!(code(&o), 0);
    assert!(stderr(&o).contains("nope.key"), "{}", stderr(&o));
    let wrong = key_file(&c.path(""), "wrong.key", 99).display().to_string();
    let o = with_key(&wrong, &["backup", "-w", "w", &src]);
    assert_ne!(code(&o), 0);
    assert!(stderr(&o).contains("opens none"), "{}", stderr(&o));
    assert_eq!(
        store_objects(Path::new(&c.store())),
        pristine,
        "a refused key changed the store"
    );

    // Rotation: add a second wrapping, open with it, remove the first; old snapshots restore.
    let new = key_file(&c.path(""), "new.key", 100).display().to_string();
    let old = test_key().display().to_string();
    let o = with_key(&old, &["--json", "key", "add", "--new-key-file", &new]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = with_key(&new, &["--json", "key", "list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let keys: Vec<serde_json::Value> = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(keys.len(), 2);
    let old_id = keys.iter().find(|k| k["current"] == false).expect("the old key")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let current_id = keys.iter().find(|k| k["current"] == true).expect("the new key")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let o = with_key(&new, &["key", "remove", &current_id]);
    assert_ne!(code(&o), 0, "the key in use was removed");
    assert!(
        stderr(&o).contains("in use") || stderr(&o).contains("opened"),
        "{}",
        stderr(&o)
    );
    let o = with_key(&new, &["key", "remove", &old_id[..8]]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = with_key(&old, &["snapshots"]);
    assert!(
        stderr(&o).contains("opens none"),
        "the removed key still opens: {}",
        stderr(&o)
    );
    let o = with_key(&new, &["restore", "-w", "w", &out("o2")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(c.path("o2/f")).expect("restored"),
        b"kept through a key rotation"
    );
    let o = with_key(&new, &["backup", "-w", "w", &src]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn plaintext_repositories_stay_readable_and_say_so() {
    let c = Cli::new();
    let o = c.run(&["init", "--plaintext"]);
    assert_ne!(code(&o), 0, "--plaintext with a key file must be refused");
    let (store, cache) = (c.store(), c.cache());
    let plain = |args: &[&str]| {
        initctl(
            args,
            &[
                ("CAIRN_STORE", &store),
                ("CAIRN_CACHE_DIR", &cache),
                ("CAIRN_KEY_FILE", ""),
            ],
        )
    };
    let o = plain(&["init"]);
    assert_ne!(code(&o), 0);
    assert!(
        stderr(&o).contains("--plaintext"),
        "init without a key says how: {}",
        stderr(&o)
    );
    let o = plain(&["init", "--plaintext"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("NOT encrypted"), "{}", stdout(&o));
    write(&c.path("src/f"), b"in the clear");
    let src = c.path("src").display().to_string();
    assert!(plain(&["backup", "-w", "w", &src]).status.success());
    let o = plain(&["--json", "stats"]);
    let s: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(s["encrypted"], false);
    assert_eq!(s["format_version"], 1);
    let o = plain(&["snapshots"]);
    assert!(stderr(&o).contains("not encrypted"), "{}", stderr(&o));
    let o = plain(&["restore", "-w", "w", &c.path("out").display().to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(c.path("out/f")).expect("restored"), b"in the clear");
    // A key given for a plaintext repository is refused: nothing meant to be sealed goes in clear.
    let o = c.run(&["backup", "-w", "w", &src]);
    assert_ne!(code(&o), 0);
    assert!(stderr(&o).contains("not encrypted"), "{}", stderr(&o));
    // The store holds the plaintext: version 1 is what it says.
    let objects = store_objects(Path::new(&c.store()));
    assert!(objects.values().any(|b| contains(b, b"in the clear")));
}

#[test]
fn keys_never_reach_output_or_json() {
    let c = Cli::new();
    let mut all = Vec::new();
    let mut run = |args: &[&str], ok: bool| {
        let o = c.run(args);
        assert_eq!(o.status.success(), ok, "initctl {args:?}: {}", stderr(&o));
        all.extend_from_slice(&o.stdout);
        all.extend_from_slice(&o.stderr);
    };
    run(&["--json", "init"], true);
    write(&c.path("src/f"), b"data");
    let src = c.path("src").display().to_string();
    for json in [true, false] {
        let j: &[&str] = if json { &["--json"] } else { &[] };
        let with = |a: &[&str]| -> Vec<String> { j.iter().chain(a).map(|s| s.to_string()).collect() };
        for args in [
            with(&["backup", "-w", "w", &src]),
            with(&["snapshots"]),
            with(&["stats"]),
            with(&["check", "--read-data"]),
            with(&["key", "list"]),
            with(&["ls", "w"]),
            with(&[
                "restore",
                "-w",
                "w",
                &c.path(&format!("out-{json}")).display().to_string(),
            ]),
        ] {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            run(&a, true);
        }
    }
    run(
        &[
            "--log-format",
            "json",
            "key",
            "add",
            "--new-key-file",
            "/nonexistent/key",
        ],
        false,
    );
    let root = root_key_of(Path::new(&c.store()), test_key());
    let file = std::fs::read(test_key()).expect("key file");
    assert_no_key_material("initctl", &all, &[root, file]);
}

#[test]
fn aws_kms_wraps_the_key_and_a_refusing_or_unreachable_kms_is_a_clear_error() {
    use crate::support::servers::*;
    let kms_key = create_kms_key(s3_server());
    let bucket = bucket_name();
    create_bucket(s3_server(), &bucket);
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("s3://{bucket}/t/tenant-k");
    let cache = dir.path().join("cache").display().to_string();
    let mut env: Vec<(&str, String)> = s3_env();
    env.extend([
        ("CAIRN_STORE", url.clone()),
        ("CAIRN_CACHE_DIR", cache),
        ("CAIRN_KEY_FILE", String::new()),
    ]);
    let run = |args: &[&str], extra: &[(&str, String)]| {
        let all: Vec<(&str, &str)> = env.iter().chain(extra).map(|(k, v)| (*k, v.as_str())).collect();
        initctl(args, &all)
    };
    let o = run(&["init", "--kms-key", &kms_key], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let src = dir.path().join("src");
    write(&src.join("f"), b"wrapped by KMS");
    let src_s = src.display().to_string();
    // No key file anywhere: the process's AWS identity opens it through kms:Decrypt.
    let o = run(&["backup", "-w", "w", &src_s], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["--json", "key", "list"], &[]);
    let keys: Vec<serde_json::Value> = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["wrap"], format!("aws-kms:{kms_key}"));
    let out = dir.path().join("out").display().to_string();
    let o = run(&["restore", "-w", "w", &out], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(dir.path().join("out/f")).expect("restored"),
        b"wrapped by KMS"
    );

    // A KMS that refuses this identity (moto checking credentials it does not know): one error
    // naming the key and the right needed; nothing written.
    let listed = || {
        let o = run(&["--json", "stats"], &[]);
        serde_json::from_str::<serde_json::Value>(&stdout(&o)).expect("json")["objects"].clone()
    };
    let before = listed();
    let refusing = [("AWS_ENDPOINT_URL_KMS", s3_auth_server().endpoint())];
    let o = run(&["backup", "-w", "w", &src_s], &refusing);
    assert_ne!(code(&o), 0, "a refused kms:Decrypt opened the repository");
    assert!(
        stderr(&o).contains("refused") && stderr(&o).contains("kms:Decrypt") && stderr(&o).contains(&kms_key),
        "{}",
        stderr(&o)
    );
    assert!(
        !stderr(&o).contains("cairn-test-secret"),
        "a credential was printed"
    );
    // An unreachable KMS: a retryable failure, said as such.
    let closed = [(
        "AWS_ENDPOINT_URL_KMS",
        format!("http://127.0.0.1:{}", free_port()),
    )];
    let o = run(&["snapshots"], &closed);
    assert_ne!(code(&o), 0);
    assert!(stderr(&o).contains("did not answer"), "{}", stderr(&o));
    assert_eq!(listed(), before, "a refused open changed the store");

    // A key file added beside the KMS wrapping opens it without KMS, as a break-glass key.
    let kf = key_file(dir.path(), "ops.key", 7).display().to_string();
    let o = run(&["key", "add", "--new-key-file", &kf], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(
        &[
            "restore",
            "-w",
            "w",
            &dir.path().join("out2").display().to_string(),
        ],
        &[
            ("CAIRN_KEY_FILE", kf.clone()),
            (
                "AWS_ENDPOINT_URL_KMS",
                format!("http://127.0.0.1:{}", free_port()),
            ),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn gc_and_stats_run_per_tenant_across_a_bucket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let parent = dir.path().join("bucket/t");
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).expect("mkdir");
    for (i, tenant) in ["acme", "globex", "initech"].iter().enumerate() {
        let store = parent.join(tenant).display().to_string();
        let key = key_file(&keys, tenant, 40 + i as u64).display().to_string();
        let env = [("CAIRN_STORE", store.as_str()), ("CAIRN_KEY_FILE", key.as_str())];
        let o = initctl(&["init"], &env);
        assert!(o.status.success(), "{}", stderr(&o));
        let src = dir.path().join(format!("src-{tenant}"));
        write(&src.join("f"), tenant.as_bytes());
        let cache = dir.path().join(format!("cache-{tenant}")).display().to_string();
        let o = initctl(
            &["backup", "-w", "w", &src.display().to_string()],
            &[env[0], env[1], ("CAIRN_CACHE_DIR", cache.as_str())],
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let parent_s = parent.display().to_string();
    let keys_s = keys.display().to_string();
    let o = initctl(
        &["--json", "stats", "--tenants", "--key-dir", &keys_s],
        &[("CAIRN_STORE", &parent_s)],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    let names: Vec<&str> = v["tenants"]
        .as_array()
        .expect("tenants")
        .iter()
        .map(|t| t["tenant"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["acme", "globex", "initech"]);
    assert_eq!(v["total"]["snapshots"], 3);
    let o = initctl(
        &["--json", "gc", "--tenants", "--key-dir", &keys_s],
        &[("CAIRN_STORE", &parent_s)],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(v["tenants"].as_array().expect("tenants").len(), 3);
    assert!(
        v["tenants"]
            .as_array()
            .expect("tenants")
            .iter()
            .all(|t| t["error"].is_null()),
        "{v}"
    );
    // A tenant whose key is missing is named and fails the run; the others are still collected.
    std::fs::remove_file(keys.join("globex")).expect("rm");
    let o = initctl(
        &["gc", "--tenants", "--key-dir", &keys_s],
        &[("CAIRN_STORE", &parent_s)],
    );
    assert_ne!(code(&o), 0);
    assert!(
        stderr(&o).contains("tenant globex") && stderr(&o).contains("encrypted"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("acme:") && stderr(&o).contains("initech:"),
        "{}",
        stderr(&o)
    );
}
