//! Browsing without restoring: `initctl ls`, `find`, `diff` and `dump`, checked against the tree
//! on disk (described independently by `support::describe`), and what each reads from the store.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::Command;

use crate::cli::{code, Cli};
use crate::support::*;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// A path of an `ls`/`find` JSON entry, as bytes.
fn entry_path(v: &serde_json::Value) -> Vec<u8> {
    match v.get("path_bytes") {
        Some(b) => serde_json::from_value(b.clone()).expect("path bytes"),
        None => v["path"].as_str().expect("path").as_bytes().to_vec(),
    }
}

/// `initctl` with raw (possibly non-UTF-8) arguments and the repository's environment.
fn raw(c: &Cli, args: &[&OsStr]) -> std::process::Output {
    cairn_command("initctl")
        .args(args)
        .env("CAIRN_STORE", c.store())
        .env("CAIRN_CACHE_DIR", c.cache())
        .env_remove("CAIRN_WORKSPACE")
        .output()
        .expect("run initctl")
}

#[test]
fn ls_find_and_dump_show_a_snapshot_as_it_is_on_disk() {
    let c = Cli::new();
    c.ok(&["init"]);
    let src = c.path("src");
    build_everything_tree(&src, 7);
    let want = describe(&src);
    let id = c
        .ok(&["backup", "--workspace", "w", &src.display().to_string()])
        .trim()
        .to_string();
    let at = format!("w@{}", &id[..8]);

    // ls of the root lists its entries; -R everything, with types and sizes as on disk.
    let top = json(&c.ok(&["ls", "w", "--json"]));
    let names: BTreeSet<Vec<u8>> = top["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(entry_path)
        .collect();
    let on_disk: BTreeSet<Vec<u8>> = want
        .keys()
        .filter(|k| !k.is_empty() && !k.contains(&b'/'))
        .cloned()
        .collect();
    assert_eq!(names, on_disk);
    let all = json(&c.ok(&["ls", "-R", &at, "--json"]));
    let mut listed = BTreeMap::new();
    for e in all["entries"].as_array().expect("entries") {
        listed.insert(entry_path(e), e.clone());
    }
    assert_eq!(
        listed.keys().collect::<BTreeSet<_>>(),
        want.keys().collect::<BTreeSet<_>>()
    );
    for (path, seen) in &want {
        let e = &listed[path];
        assert_eq!(e["type"], seen.kind, "{}", String::from_utf8_lossy(path));
        assert_eq!(e["size"], if seen.kind == "file" { seen.size } else { 0 }, "{e}");
        if seen.kind != "symlink" {
            assert_eq!(e["mode"], format!("{:04o}", seen.mode), "{e}");
        }
        assert_eq!(e["uid"], seen.uid, "{e}");
    }
    assert_eq!(listed[&b"link-rel"[..]]["target"], "tiny.txt");
    // Like ls -l, for people.
    let modes = c.ok(&["ls", &at, "/modes/"]);
    assert!(
        modes.contains("-rwsr-xr-x") && modes.contains(" modes/suid"),
        "{modes}"
    );
    assert!(
        modes.contains("drwxrwxrwt") && modes.contains(" modes/sticky"),
        "{modes}"
    );
    let one = c.ok(&["ls", "w", "link-dir"]);
    assert!(
        one.starts_with('l') && one.trim_end().ends_with("link-dir -> a/b"),
        "{one}"
    );

    // find: a glob on the name, or on the path if it has a slash.
    let dat = c.ok(&["find", "w", "*.dat"]);
    assert_eq!(dat.lines().count(), 40, "{dat}");
    let deep = c.ok(&["find", "w", "a/**/deep.txt"]);
    assert_eq!(deep.lines().count(), 1, "{deep}");
    assert!(deep.trim_end().ends_with(" a/b/c/d/e/f/g/deep.txt"), "{deep}");
    assert_eq!(code(&c.run(&["find", "w", "*.nothing"])), 1);

    // dump: a file's bytes (holes as zeros, any name), byte for byte.
    for name in [
        &b"assets/big.bin"[..],
        b"sparse.img",
        b"empty",
        b"latin1-\xe9t\xe9",
        b"hard/two",
    ] {
        let o = raw(
            &c,
            &[OsStr::new("dump"), OsStr::new(&at), OsStr::from_bytes(name)],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(
            Some(blake3::hash(&o.stdout)),
            want[name].content,
            "{}",
            String::from_utf8_lossy(name)
        );
    }
    // A directory, or the whole snapshot, as a tar stream that GNU tar unpacks to the same tree.
    for (what, base) in [("many", "many/"), ("/", "")] {
        let o = c.run(&["dump", "w", what]);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = c.path(&format!("untar-{}", what.len()));
        std::fs::create_dir_all(&out).expect("mkdir");
        let mut tar = Command::new("tar")
            .arg("-x")
            .arg("-C")
            .arg(&out)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("tar");
        std::io::Write::write_all(tar.stdin.as_mut().expect("stdin"), &o.stdout).expect("pipe to tar");
        drop(tar.stdin.take());
        assert!(tar.wait().expect("tar").success());
        let got = describe(&out);
        for (path, seen) in want
            .iter()
            .filter(|(p, _)| p.starts_with(base.as_bytes()) && !p.is_empty())
        {
            let g = got
                .get(path)
                .unwrap_or_else(|| panic!("{} not in the tar", String::from_utf8_lossy(path)));
            assert_eq!(
                (g.kind, g.content, &g.link, g.mode),
                (seen.kind, seen.content, &seen.link, seen.mode),
                "{}",
                String::from_utf8_lossy(path)
            );
        }
        if base.is_empty() {
            // Hard links come out as links.
            assert_eq!(got[&b"hard/two"[..]].link_peer, want[&b"hard/two"[..]].link_peer);
        }
        make_writable(&out);
    }

    // Unknown paths are named, exit 1.
    for args in [["ls", "w", "no/such"], ["dump", "w", "no/such"]] {
        let o = c.run(&args);
        assert_eq!(code(&o), 1, "{args:?}");
        assert!(stderr(&o).contains("no/such"), "{}", stderr(&o));
    }
    let o = c.run(&["dump", "w", "../etc/passwd"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains(".."), "{}", stderr(&o));
    make_writable(&src);
}

#[test]
fn dump_of_one_file_reads_its_trees_and_chunks_not_the_snapshot() {
    let c = Cli::new();
    c.ok(&["init"]);
    let src = c.path("src");
    for d in 0..30 {
        for f in 0..10 {
            write(
                &src.join(format!("d{d:02}/f{f}")),
                &random_bytes(d * 100 + f, 100 << 10),
            );
        }
    }
    c.ok(&["backup", "--workspace", "w", &src.display().to_string()]);
    let o = c.run(&["dump", "w", "d07/f3", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout, std::fs::read(src.join("d07/f3")).expect("read"));
    let v = json(stderr(&o).lines().last().expect("summary"));
    let r = &v["requests"];
    let reads = r["get"].as_u64().expect("get") + r["get_range"].as_u64().expect("range");
    // The head, the manifest, its index record(s), two trees (root, d07) and the file's chunks.
    assert!(reads <= 8, "{v}");
    assert!(
        r["bytes_down"].as_u64().expect("bytes") < 1 << 20,
        "30 MiB stored, {v}"
    );
    assert_eq!(v["bytes"], 100 << 10);
}

/// What `diff` should say, from two descriptions of the tree on disk: every path in one only,
/// and every path in both whose type or content (or link target) differs, or else whose mode,
/// owner, mtime or extended attributes do.
pub fn expected_changes(
    before: &BTreeMap<Vec<u8>, Seen>,
    after: &BTreeMap<Vec<u8>, Seen>,
) -> BTreeMap<Vec<u8>, &'static str> {
    let mut out = BTreeMap::new();
    for (p, a) in before {
        match after.get(p) {
            None => {
                out.insert(p.clone(), "removed");
            }
            Some(b) if a.kind != b.kind || a.content != b.content || a.link != b.link || a.rdev != b.rdev => {
                out.insert(p.clone(), "modified");
            }
            Some(b)
                if (a.mode, a.uid, a.gid, a.mtime, &a.xattrs)
                    != (b.mode, b.uid, b.gid, b.mtime, &b.xattrs) =>
            {
                out.insert(p.clone(), "metadata");
            }
            Some(_) => {}
        }
    }
    for p in after.keys().filter(|p| !before.contains_key(*p)) {
        out.insert(p.clone(), "added");
    }
    out.remove(&Vec::new());
    out
}

/// `diff --json`'s changes as path → change.
pub fn diff_changes(v: &serde_json::Value) -> BTreeMap<Vec<u8>, String> {
    v["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|d| {
            (
                d["path"].as_str().expect("path").as_bytes().to_vec(),
                d["change"].as_str().expect("change").to_string(),
            )
        })
        .collect()
}

#[test]
fn diff_names_what_was_added_removed_modified_and_touched() {
    let c = Cli::new();
    c.ok(&["init"]);
    let src = c.path("src");
    for (name, body) in [
        ("a.txt", "a"),
        ("b.txt", "b"),
        ("dir/c.txt", "c"),
        ("dir/d.txt", "d"),
        ("gone/e.txt", "e"),
        ("gone/deeper/f.txt", "f"),
        ("mode.txt", "m"),
        ("becomes-dir", "x"),
    ] {
        write(&src.join(name), body.as_bytes());
    }
    let s = src.display().to_string();
    let before = describe(&src);
    let s1 = c.ok(&["backup", "--workspace", "w", &s]).trim().to_string();
    std::thread::sleep(std::time::Duration::from_millis(20));
    write(&src.join("new.txt"), b"new");
    write(&src.join("dir/new2.txt"), b"new2");
    std::fs::remove_file(src.join("b.txt")).expect("rm");
    std::fs::remove_dir_all(src.join("gone")).expect("rm -r");
    write(&src.join("a.txt"), b"a, changed");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(src.join("mode.txt"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::remove_file(src.join("becomes-dir")).expect("rm");
    write(&src.join("becomes-dir/inside"), b"i");
    let after = describe(&src);
    let s2 = c.ok(&["backup", "--workspace", "w", &s]).trim().to_string();

    let want = expected_changes(&before, &after);
    let got = json(&c.ok(&[
        "diff",
        &format!("w@{}", &s1[..8]),
        &format!("w@{}", &s2[..8]),
        "--json",
    ]));
    let got_map = diff_changes(&got);
    assert_eq!(
        got_map,
        want.iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect::<BTreeMap<_, _>>()
    );
    // The cases are all there (the test's own expectation is not vacuous).
    for (p, ch) in [
        ("new.txt", "added"),
        ("dir/new2.txt", "added"),
        ("b.txt", "removed"),
        ("gone", "removed"),
        ("gone/deeper/f.txt", "removed"),
        ("a.txt", "modified"),
        ("mode.txt", "metadata"),
        ("becomes-dir", "modified"),
        ("becomes-dir/inside", "added"),
    ] {
        assert_eq!(
            got_map.get(p.as_bytes()).map(String::as_str),
            Some(ch),
            "{p}: {got}"
        );
    }
    assert_eq!(got["added"], 3, "{got}");
    assert_eq!(got["removed"], 5, "{got}");
    // B defaults to the head; people get restic's markers.
    let human = c.ok(&["diff", &format!("w@{}", &s1[..8])]);
    for line in [
        "+    new.txt",
        "-    gone/",
        "M    a.txt",
        "U    mode.txt",
        "T    becomes-dir/",
    ] {
        assert!(human.lines().any(|l| l == line), "{line:?} in {human}");
    }
    // Only below a path.
    let sub = json(&c.ok(&["diff", &format!("w@{}", &s1[..8]), "--path", "dir", "--json"]));
    assert_eq!(
        diff_changes(&sub).keys().cloned().collect::<Vec<_>>(),
        vec![b"dir/new2.txt".to_vec()]
    );
    let o = c.run(&["diff", "w@ffffffff"]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("ffffffff"), "{}", stderr(&o));
}

#[test]
fn restore_include_restores_exactly_what_was_asked_and_names_an_unknown_path() {
    let c = Cli::new();
    c.ok(&["init"]);
    let src = c.path("src");
    build_everything_tree(&src, 8);
    let want = describe(&src);
    c.ok(&["backup", "--workspace", "w", &src.display().to_string()]);

    // A directory, a file in another, a non-UTF-8 name, a symlink, and a path below an include.
    let out = c.path("out");
    let latin1: &[u8] = b"latin1-\xe9t\xe9";
    let args: Vec<&OsStr> = [
        &b"restore"[..],
        b"--workspace",
        b"w",
        b"--include",
        b"a/b",
        b"--include",
        b"./many/f001.dat",
        b"--include",
        latin1,
        b"--include",
        b"link-rel",
        b"--include",
        b"a/b/c/d",
        out.as_os_str().as_bytes(),
    ]
    .into_iter()
    .map(OsStr::from_bytes)
    .collect();
    let o = raw(&c, &args);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = describe(&out);
    let included = |k: &[u8]| {
        k.starts_with(b"a/b/") || [&b"a/b"[..], b"many/f001.dat", latin1, b"link-rel"].contains(&k)
    };
    let expected: BTreeSet<&[u8]> = want
        .keys()
        .map(|k| k.as_slice())
        .filter(|k| included(k) || [&b""[..], b"a", b"many"].contains(k))
        .collect();
    assert_eq!(
        got.keys().map(|k| k.as_slice()).collect::<BTreeSet<_>>(),
        expected
    );
    for (k, seen) in &got {
        if included(k) {
            assert_eq!(seen, &want[k], "{}", String::from_utf8_lossy(k));
        } else {
            assert_eq!(seen.kind, "dir", "{}", String::from_utf8_lossy(k));
        }
    }
    assert!(
        !out.join(cairn_engine::RESTORE_MARKER).exists(),
        "a partial restore claims nothing about its target"
    );

    // Into a directory with content of its own: the directories on the way stay as they are.
    let live = c.path("live");
    write(&live.join("many/keep.txt"), b"mine");
    std::fs::set_permissions(
        live.join("many"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod");
    c.ok(&[
        "restore",
        "--workspace",
        "w",
        "--include",
        "many/f001.dat",
        &live.display().to_string(),
    ]);
    let now = describe(&live);
    assert_eq!(now[&b"many/f001.dat"[..]], want[&b"many/f001.dat"[..]]);
    assert_eq!(std::fs::read(live.join("many/keep.txt")).expect("kept"), b"mine");
    assert_eq!(now[&b"many"[..]].mode, 0o700);

    // A path the snapshot does not hold: named, exit 1, nothing created.
    let never = c.path("never");
    let o = c.run(&[
        "restore",
        "--workspace",
        "w",
        "--include",
        "no/such/file",
        &never.display().to_string(),
    ]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("no/such/file"), "{}", stderr(&o));
    assert!(
        !never.exists(),
        "the target was created before the path was checked"
    );
}
