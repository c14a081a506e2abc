//! Smoke test of the built binary. Its presence also makes `cargo test --workspace` build the
//! `initctl` executable, which the scenario suite in `tests/` drives as a real process.

#[test]
fn version_and_help() {
    let bin = env!("CARGO_BIN_EXE_initctl");
    let o = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .expect("run initctl");
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("initctl "));
    let o = std::process::Command::new(bin)
        .arg("--help")
        .output()
        .expect("run initctl");
    let help = String::from_utf8_lossy(&o.stdout);
    for cmd in ["init", "backup", "restore", "snapshots", "drill", "check"] {
        assert!(help.contains(cmd), "help lists {cmd}");
    }
}
