//! `cairn-test-helper`: what the scenario suite runs as a separate process.
//!
//! - `prepare ROOT DELAY_MS`: asks for the preparation test's probe item under ROOT (building it
//!   if needed, slowly) and prints how many of its files it found whole.
//! - `corpus`: prints the path of the pristine corpus workspace, building it once per machine
//!   (the benches use this, so they share the suite's cache and its locking).

use std::path::Path;
use std::time::Duration;

use cairn_tests::prepared::{corpus_workspace, prepared, probe_build, probe_files_whole};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("prepare") if args.len() == 3 => {
            let root = Path::new(&args[1]);
            let delay = Duration::from_millis(args[2].parse().expect("DELAY_MS"));
            let item = prepared(root, "probe", "v1", |dir| probe_build(root, dir, delay));
            println!("{}", probe_files_whole(&item));
        }
        Some("corpus") if args.len() == 1 => println!("{}", corpus_workspace().display()),
        _ => {
            eprintln!("usage: cairn-test-helper prepare ROOT DELAY_MS | corpus");
            std::process::exit(2);
        }
    }
}
