//! The `initctl` binary: commands, environment variables, JSON output and exit codes.

use std::path::Path;

use crate::support::*;

pub(crate) struct Cli {
    dir: tempfile::TempDir,
}

impl Cli {
    pub(crate) fn new() -> Cli {
        Cli {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub(crate) fn store(&self) -> String {
        self.dir.path().join("store").display().to_string()
    }

    pub(crate) fn cache(&self) -> String {
        self.dir.path().join("cache").display().to_string()
    }

    pub(crate) fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Runs with CAIRN_STORE and CAIRN_CACHE_DIR set, as a pod spec would.
    pub(crate) fn run(&self, args: &[&str]) -> std::process::Output {
        let (store, cache) = (self.store(), self.cache());
        initctl(args, &[("CAIRN_STORE", &store), ("CAIRN_CACHE_DIR", &cache)])
    }

    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.status.success(), "initctl {args:?} failed: {}", stderr(&o));
        stdout(&o)
    }

    /// Objects under a prefix of the local store.
    fn count_objects(&self, prefix: &str) -> usize {
        walk_files(&self.dir.path().join("store").join(prefix)).len()
    }

    fn snapshot_count(&self, ws: &str) -> usize {
        let o = self.ok(&["snapshots", "--workspace", ws, "--json"]);
        serde_json::from_str::<serde_json::Value>(&o)
            .expect("json")
            .as_array()
            .map_or(0, Vec::len)
    }
}

pub(crate) fn code(o: &std::process::Output) -> i32 {
    o.status.code().expect("exited")
}

#[test]
fn init_backup_restore_snapshots_drill_check() {
    let c = Cli::new();
    c.ok(&["init"]);
    let src = c.path("src");
    build_everything_tree(&src, 5);
    let src_s = src.display().to_string();
    let id = c.ok(&["backup", "--workspace", "w1", &src_s]).trim().to_string();
    assert_eq!(id.len(), 64, "backup prints the snapshot id: {id:?}");

    let list: serde_json::Value = serde_json::from_str(&c.ok(&["snapshots", "--json"])).expect("json");
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["head"], true);
    let human = c.ok(&["snapshots", "--workspace", "w1"]);
    assert!(human.contains(&id[..8]) && human.contains("(latest)"), "{human}");

    let out = c.path("out");
    c.ok(&["restore", "--workspace", "w1", &out.display().to_string()]);
    assert_same_tree(&src, &out);

    let drill: serde_json::Value =
        serde_json::from_str(&c.ok(&["drill", "--workspace", "w1", "--json"])).expect("json");
    assert_eq!(drill["ok"], true, "{drill}");
    assert!(drill["restore_seconds"].as_f64().expect("timing") > 0.0);
    assert!(drill["bytes_verified"].as_u64().expect("bytes") > 0);

    let check: serde_json::Value =
        serde_json::from_str(&c.ok(&["check", "--read-data", "--json"])).expect("json");
    assert_eq!(check["ok"], true, "{check}");
    assert!(check["bytes_read"].as_u64().expect("bytes") > 0);
    make_writable(&src);
    make_writable(&out);
}

#[test]
fn workspace_and_snapshot_come_from_the_environment() {
    let c = Cli::new();
    c.ok(&["init"]);
    let src = c.path("src");
    write(&src.join("f"), b"env");
    let (store, cache, src_s) = (c.store(), c.cache(), src.display().to_string());
    let env = [
        ("CAIRN_STORE", store.as_str()),
        ("CAIRN_CACHE_DIR", cache.as_str()),
        ("CAIRN_WORKSPACE", "from-env"),
        ("CAIRN_SOURCE", src_s.as_str()),
    ];
    let o = initctl(&["backup"], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    let out = c.path("out").display().to_string();
    let o = initctl(
        &["restore"],
        &[
            ("CAIRN_STORE", &store),
            ("CAIRN_CACHE_DIR", &cache),
            ("CAIRN_WORKSPACE", "from-env"),
            ("CAIRN_SNAPSHOT", &id[..10]),
            ("CAIRN_TARGET", &out),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(c.path("out/f")).expect("read"), b"env");
}

#[test]
fn exit_codes_for_bad_input() {
    let c = Cli::new();
    // No repository: 10, and the message says what to do.
    let o = c.run(&["snapshots"]);
    assert_eq!(code(&o), 10, "{}", stderr(&o));
    assert!(stderr(&o).contains("initctl init"), "{}", stderr(&o));
    // No store at all: 1 with a hint.
    let o = initctl(&["snapshots"], &[]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("CAIRN_STORE"), "{}", stderr(&o));
    // Usage errors: 2.
    let o = c.run(&["restore"]);
    assert_eq!(code(&o), 2);
    c.ok(&["init"]);
    // Second init: 1, repository untouched.
    let o = c.run(&["init"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("already exists"));
    // A snapshot of an unknown workspace: 1, named. (Its latest is an empty start: see
    // init_container_restore_is_idempotent_and_starts_from_a_base_or_empty.)
    let o = c.run(&[
        "restore",
        "--workspace",
        "ghost",
        "--snapshot",
        "abcd",
        &c.path("x").display().to_string(),
    ]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("ghost"), "{}", stderr(&o));
    // JSON errors are JSON.
    let o = c.run(&[
        "restore",
        "--json",
        "--workspace",
        "ghost",
        "--snapshot",
        "abcd",
        "/tmp/x",
    ]);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("json error");
    assert!(v["error"].as_str().expect("message").contains("ghost"));
    assert_eq!(v["exit_code"], 1);
}

#[test]
fn check_and_drill_exit_4_on_damage() {
    let c = Cli::new();
    c.ok(&["init"]);
    let src = c.path("src");
    write(&src.join("f"), &random_bytes(1, 100_000));
    c.ok(&["backup", "-w", "w", &src.display().to_string()]);
    // Damage every data pack.
    for p in walk_files(&c.path("store/packs/data")) {
        let mut b = std::fs::read(&p).expect("read");
        b[100] ^= 1;
        std::fs::write(&p, b).expect("write");
    }
    let o = c.run(&["check", "--read-data"]);
    assert_eq!(code(&o), 4, "{}", stderr(&o));
    assert!(stderr(&o).contains("packs/data/"), "{}", stderr(&o));
    let o = c.run(&["drill", "-w", "w"]);
    assert_ne!(code(&o), 0, "a drill over corrupt data must fail");
    assert!(stderr(&o).contains("corrupt"), "{}", stderr(&o));
}

#[test]
fn unreadable_source_file_exits_3_and_names_it() {
    let c = Cli::new();
    c.ok(&["init"]);
    let src = c.path("src");
    write(&src.join("ok"), b"fine");
    write(&src.join("locked"), b"secret");
    std::fs::set_permissions(
        src.join("locked"),
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .expect("chmod");
    let src_s = src.display().to_string();
    let o = if is_root() {
        // Root reads everything: run the backup as an unprivileged user, as a pod would.
        for p in [c.dir.path().to_path_buf(), src.clone()] {
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o777)).expect("chmod");
        }
        std::fs::set_permissions(
            src.join("ok"),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .expect("chmod");
        let st = std::process::Command::new("chmod")
            .args(["-R", "a+rwX"])
            .arg(c.path("store"))
            .status()
            .expect("chmod");
        assert!(st.success());
        // The build may live under a home directory the unprivileged user cannot enter.
        let bin = c.path("initctl");
        // The key file as a Secret mounted for that user: theirs, 0400.
        let key = c.path("nobody.key");
        std::fs::copy(test_key(), &key).expect("copy the key file");
        std::os::unix::fs::chown(&key, Some(65534), Some(65534)).expect("chown");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o400)).expect("chmod");
        std::fs::copy(initctl_path(), &bin).expect("copy initctl");
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        let o = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&bin)
            .args(["backup", "--workspace", "w", &src_s])
            .env("CAIRN_STORE", c.store())
            .env("CAIRN_KEY_FILE", &key)
            .env("CAIRN_CACHE_DIR", c.path("nobody-cache"))
            .env("HOME", c.dir.path())
            .output()
            .expect("setpriv");
        o
    } else {
        c.run(&["backup", "--workspace", "w", &src_s])
    };
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    assert!(stderr(&o).contains("locked"), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim().len(),
        64,
        "the snapshot is still sealed and printed"
    );
    // The readable file is in it.
    let out = c.path("out");
    c.ok(&["restore", "-w", "w", &out.display().to_string()]);
    assert_eq!(std::fs::read(out.join("ok")).expect("read"), b"fine");
    assert!(!out.join("locked").exists());
}

#[test]
fn full_disk_at_the_target_fails_without_a_marker() {
    let c = Cli::new();
    c.ok(&["init"]);
    let src = c.path("src");
    write(&src.join("big.bin"), &random_bytes(3, 6 << 20));
    c.ok(&["backup", "-w", "w", &src.display().to_string()]);
    let target = c.path("small-disk");
    std::fs::create_dir_all(&target).expect("mkdir");
    // A 2 MiB tmpfs in a private mount namespace: a real ENOSPC from a real file system.
    let unshare_flags = if is_root() { "-m" } else { "-rm" };
    let script = format!(
        "mount -t tmpfs -o size=2m tmpfs '{t}' || exit 99; '{bin}' restore -w w '{t}'; rc=$?; \
         if [ -e '{t}/.cairn-snapshot' ]; then echo MARKER; fi; exit $rc",
        t = target.display(),
        bin = initctl_path().display()
    );
    let o = std::process::Command::new("unshare")
        .args([unshare_flags, "sh", "-c", &script])
        .env("CAIRN_STORE", c.store())
        .env("CAIRN_KEY_FILE", test_key())
        .env("CAIRN_CACHE_DIR", c.cache())
        .output()
        .expect("unshare");
    assert_ne!(code(&o), 99, "could not mount a tmpfs: {}", stderr(&o));
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("No space left on device"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("big.bin"),
        "the error names the file: {}",
        stderr(&o)
    );
    assert!(
        !stdout(&o).contains("MARKER"),
        "no completion marker on a failed restore"
    );
    // The repository is intact: a drill elsewhere passes.
    c.ok(&["drill", "-w", "w"]);
}

fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("ls").flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn boolean_variables_accept_1_and_true() {
    let c = Cli::new();
    c.ok(&["init"]);
    let (store, cache) = (c.store(), c.cache());
    for v in ["1", "true", "yes"] {
        let o = initctl(
            &["snapshots"],
            &[
                ("CAIRN_STORE", &store),
                ("CAIRN_CACHE_DIR", &cache),
                ("CAIRN_JSON", v),
                ("CAIRN_QUIET", v),
            ],
        );
        assert!(o.status.success(), "CAIRN_JSON={v}: {}", stderr(&o));
        let list: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("json");
        assert_eq!(list, serde_json::json!([]));
    }
}

#[test]
fn init_container_restore_is_idempotent_and_starts_from_a_base_or_empty() {
    let c = Cli::new();
    c.ok(&["init"]);
    let base_src = c.path("base-src");
    build_everything_tree(&base_src, 31);
    let base_id = c.ok(&["backup", "--workspace", "base", &base_src.display().to_string()]);

    // A new workspace without --base starts empty, and says so.
    let empty = c.path("empty-ws");
    let o = c.run(&[
        "restore",
        "--workspace",
        "fresh",
        "--json",
        &empty.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(v["action"], "empty", "{v}");
    let names: Vec<_> = std::fs::read_dir(&empty)
        .expect("created")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, [".cairn-snapshot"], "only the marker");

    // With --base it starts from the base workspace's latest snapshot.
    let forked = c.path("forked-ws");
    let o = c.run(&[
        "restore",
        "--workspace",
        "fresh",
        "--base",
        "base",
        "--json",
        &forked.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(
        (v["action"].as_str(), v["snapshot"].as_str()),
        (Some("restore"), Some(base_id.trim())),
        "{v}"
    );
    assert_same_tree(&base_src, &forked);
    let bad = c.run(&[
        "restore",
        "--workspace",
        "fresh",
        "--base",
        "nope@abcd",
        &c.path("x").display().to_string(),
    ]);
    assert!(
        !bad.status.success() && stderr(&bad).contains("--base nope@abcd"),
        "{}",
        stderr(&bad)
    );

    // Re-running on a volume that holds the latest snapshot does nothing.
    let out = c.path("ws");
    let reinit = || {
        let o = c.run(&[
            "restore",
            "--workspace",
            "base",
            "--json",
            &out.display().to_string(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_str::<serde_json::Value>(&stdout(&o)).expect("json")
    };
    c.ok(&["restore", "--workspace", "base", &out.display().to_string()]);
    let v = reinit();
    assert_eq!(v["action"], "none", "{v}");
    // A file the agent wrote and nobody saved is never rolled back: saved first, then kept.
    write(&out.join("scratch-note"), b"made by the agent");
    let v = reinit();
    assert_eq!(v["action"], "backup", "{v}");
    assert_eq!(v["is_head"], true, "{v}");
    assert!(
        v["message"].as_str().unwrap_or("").contains("scratch-note"),
        "{v}"
    );
    assert_eq!(
        std::fs::read(out.join("scratch-note")).expect("kept"),
        b"made by the agent"
    );
    let v = reinit();
    assert_eq!(v["action"], "none", "{v}");
    make_writable(&base_src);
    make_writable(&forked);
    make_writable(&out);
}

#[test]
fn fork_is_constant_time_and_forget_keeps_by_rules_and_never_the_head() {
    let c = Cli::new();
    c.ok(&["init"]);
    let src = c.path("src");
    build_everything_tree(&src, 41);
    let s = src.display().to_string();
    let mut ids = Vec::new();
    for i in 0..4 {
        write(&src.join("round"), format!("{i}").as_bytes());
        ids.push(c.ok(&["backup", "--workspace", "base", &s]).trim().to_string());
    }
    let packs_before = c.count_objects("packs");
    // Four snapshots of nearly one tree: stored about once, logically four times.
    let st: serde_json::Value = serde_json::from_str(&c.ok(&["stats", "--json"])).expect("json");
    assert_eq!(
        (st["snapshots"].as_u64(), st["workspaces"].as_u64()),
        (Some(4), Some(1)),
        "{st}"
    );
    assert!(st["dedup_ratio"].as_f64().expect("ratio") > 3.0, "{st}");
    assert_eq!(
        st["data_packs"].as_u64().expect("n") + st["meta_packs"].as_u64().expect("n"),
        packs_before as u64
    );

    // A fork writes no data: same packs, and it restores as its source.
    let fork = c.ok(&[
        "fork",
        "--from",
        &format!("base@{}", &ids[1][..8]),
        "--to",
        "child",
    ]);
    assert_eq!(c.count_objects("packs"), packs_before, "a fork copies nothing");
    let out = c.path("child");
    c.ok(&["restore", "--workspace", "child", &out.display().to_string()]);
    assert_eq!(std::fs::read(out.join("round")).expect("round"), b"1");
    let again = c.run(&["fork", "--from", "base", "--to", "child"]);
    assert!(
        !again.status.success() && stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    assert!(fork.trim().len() == 64, "{fork}");

    // forget: a dry run changes nothing; --keep-last 1 keeps the newest (the head) only.
    let o = c.run(&[
        "forget",
        "--workspace",
        "base",
        "--keep-last",
        "2",
        "--dry-run",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(v["remove"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(c.snapshot_count("base"), 4);
    let o = c.run(&["forget", "--workspace", "base"]);
    assert!(
        !o.status.success() && stderr(&o).contains("no keep rule"),
        "{}",
        stderr(&o)
    );
    c.ok(&["forget", "--workspace", "base", "--keep-last", "1"]);
    assert_eq!(c.snapshot_count("base"), 1);
    // The fork still restores: it names its own manifest, whose records are still there.
    let out2 = c.path("child2");
    c.ok(&["restore", "--workspace", "child", &out2.display().to_string()]);
    // Whole-workspace deletion takes the head too.
    c.ok(&["forget", "--workspace", "child", "--all"]);
    assert_eq!(c.snapshot_count("child"), 0);
    let o = c.run(&[
        "restore",
        "--workspace",
        "child",
        "--snapshot",
        &fork[..8],
        &c.path("x").display().to_string(),
    ]);
    assert!(!o.status.success());
    for d in [&src, &out, &out2] {
        make_writable(d);
    }
}

/// `snapshots --host/--tag/--latest` filter as restic's do, and `forget --keep-tag` keeps tagged
/// snapshots while `forget --host/--tag` applies the rules only to the snapshots they select.
#[test]
fn snapshot_filters_and_tag_rules() {
    let c = Cli::new();
    c.ok(&["init"]);
    let src = c.path("src");
    write(&src.join("f"), b"0");
    let s = src.display().to_string();
    let backup = |host: &str, tags: &str, round: u8| {
        write(&src.join("f"), &[round]);
        let mut args = vec!["backup", "--workspace", "w", "--host", host];
        if !tags.is_empty() {
            args.extend(["--tag", tags]);
        }
        args.push(&s);
        c.ok(&args).trim().to_string()
    };
    let a1 = backup("pod-a", "nightly", 1);
    let b1 = backup("pod-b", "nightly,release", 2);
    let a2 = backup("pod-a", "", 3);
    let b2 = backup("pod-b", "release", 4);
    let ids = |args: &[&str]| {
        let mut all = vec!["snapshots", "--json"];
        all.extend_from_slice(args);
        let v: serde_json::Value = serde_json::from_str(&c.ok(&all)).expect("json");
        v.as_array()
            .expect("array")
            .iter()
            .map(|s| s["id"].as_str().expect("id").to_string())
            .collect::<Vec<String>>()
    };
    assert_eq!(ids(&[]), vec![a1.clone(), b1.clone(), a2.clone(), b2.clone()]);
    assert_eq!(ids(&["--host", "pod-b"]), vec![b1.clone(), b2.clone()]);
    assert_eq!(
        ids(&["--tag", "nightly,release"]),
        vec![b1.clone()],
        "a set means all of its tags"
    );
    assert_eq!(
        ids(&["--tag", "nightly", "--tag", "release"]),
        vec![a1.clone(), b1.clone(), b2.clone()]
    );
    assert_eq!(ids(&["--latest", "1"]), vec![b2.clone()]);
    assert_eq!(ids(&["--host", "pod-a", "--latest", "1"]), vec![a2.clone()]);

    // The rules apply to pod-a's snapshots only: its older one goes, pod-b's stay.
    c.ok(&[
        "forget",
        "--workspace",
        "w",
        "--host",
        "pod-a",
        "--keep-last",
        "1",
    ]);
    assert_eq!(ids(&[]), vec![b1.clone(), a2.clone(), b2.clone()]);
    // --keep-tag keeps every release; the head (b2) is kept anyway; a2 goes.
    let o = c.ok(&["forget", "--workspace", "w", "--keep-tag", "release", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&o).expect("json");
    assert_eq!(v["remove"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(ids(&[]), vec![b1.clone(), b2.clone()]);
}

/// `tag` changes a snapshot's tags (a new manifest, so a new id), moves the head when it named
/// the old one, deletes the old manifest, and a volume whose marker names the old id is still
/// brought up to date by its init step.
#[test]
fn tag_changes_tags_follows_the_head_and_volumes_still_reconcile() {
    let c = Cli::new();
    c.ok(&["init"]);
    let src = c.path("src");
    build_everything_tree(&src, 61);
    let s = src.display().to_string();
    let first = c
        .ok(&["backup", "--workspace", "w", "--tag", "nightly", &s])
        .trim()
        .to_string();
    write(&src.join("later"), b"second");
    let second = c.ok(&["backup", "--workspace", "w", &s]).trim().to_string();
    let listed = || -> Vec<(String, Vec<String>, bool)> {
        let v: serde_json::Value =
            serde_json::from_str(&c.ok(&["snapshots", "--workspace", "w", "--json"])).expect("json");
        v.as_array()
            .expect("array")
            .iter()
            .map(|s| {
                let tags = s["tags"]
                    .as_array()
                    .expect("tags")
                    .iter()
                    .map(|t| t.as_str().expect("tag").to_string())
                    .collect();
                (s["id"].as_str().expect("id").to_string(), tags, s["head"] == true)
            })
            .collect()
    };
    // An older snapshot: a new id, the head untouched.
    let renamed = c
        .ok(&["tag", &format!("w@{}", &first[..8]), "--add", "keep"])
        .trim()
        .to_string();
    assert_ne!(renamed, first);
    assert_eq!(
        listed(),
        vec![
            (
                renamed.clone(),
                vec!["nightly".to_string(), "keep".to_string()],
                false
            ),
            (second.clone(), vec![], true)
        ]
    );
    // A volume restored from the head, then the head renamed by new tags.
    let vol = c.path("vol");
    c.ok(&["restore", "--workspace", "w", &vol.display().to_string()]);
    let o = c.run(&["tag", "w", "--set", "a,b", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(v["head_moved"], true, "{v}");
    let head = v["snapshot"].as_str().expect("id").to_string();
    assert_eq!(
        listed(),
        vec![
            (renamed, vec!["nightly".to_string(), "keep".to_string()], false),
            (head, vec!["a".to_string(), "b".to_string()], true)
        ]
    );
    // The volume's marker names the old head, which is gone: the init step still reconciles it.
    let o = c.run(&["restore", "--workspace", "w", &vol.display().to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_tree(&src, &vol);
    // Nothing to change is refused, and changes nothing.
    let o = c.run(&["tag", "w"]);
    assert!(
        !o.status.success() && stderr(&o).contains("nothing to change"),
        "{}",
        stderr(&o)
    );
    make_writable(&src);
    make_writable(&vol);
}
