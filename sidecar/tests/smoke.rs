//! Smoke test of the built binary. Its presence also makes `cargo test --workspace` build the
//! `sidecar` executable, which the lifecycle tests in `tests/` drive as a real process.

#[test]
fn version_and_help() {
    let bin = env!("CARGO_BIN_EXE_sidecar");
    let o = std::process::Command::new(bin)
        .arg("--help")
        .output()
        .expect("run sidecar");
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    for cmd in ["run", "flush"] {
        assert!(help.contains(cmd), "help lists {cmd}");
    }
}
