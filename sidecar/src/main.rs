//! `sidecar`: Cairn's in-pod daemon (checkpoints, final flush on SIGTERM, health, metrics).
//!
//! Not built yet: this placeholder only parses its command line and says so, so that pod specs
//! and images can reference the binary. The pod-lifecycle issue builds it.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "sidecar",
    version,
    about = "Cairn in-pod daemon (not implemented yet)"
)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    Cli::parse();
    anyhow::bail!("sidecar is not implemented yet; use `initctl backup` for checkpoints")
}
