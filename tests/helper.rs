//! `cairn-test-helper`: what the scenario suite runs as a separate process.
//!
//! - `prepare ROOT DELAY_MS`: asks for the preparation test's probe item under ROOT (building it
//!   if needed, slowly) and prints how many of its files it found whole.
//! - `corpus`: prints the path of the pristine corpus workspace, building it once per machine
//!   (the benches use this, so they share the suite's cache and its locking).
//! - `swap DIR TARGET NAME...`: the hostile agent. Until killed, swaps each `DIR/NAME` for a
//!   symlink to `TARGET/NAME` and back, as fast as it can: by rename (the entry is briefly gone) and
//!   by `renameat2(RENAME_EXCHANGE)` (it is always there, as one or the other). Prints `ready`
//!   once it has swapped every name at least once (or tried to, where the name is missing).
//! - `swap-special DIR NAME`: until killed, exchanges `DIR/NAME` with a FIFO and with a character
//!   device (1:5, `/dev/zero`, where this process may create one), and back.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_tests::prepared::{corpus_workspace, prepared, probe_build, probe_files_whole};
use rustix::fs::{renameat, renameat_with, RenameFlags, CWD};

fn exchange(a: &Path, b: &Path) -> bool {
    renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE).is_ok()
}

fn side(path: &Path, tag: &str) -> PathBuf {
    let mut s: OsString = path.as_os_str().to_owned();
    s.push(tag);
    PathBuf::from(s)
}

fn swap(dir: &Path, target: &Path, names: &[String]) -> ! {
    let mut round = 0u64;
    loop {
        for name in names {
            let entry = dir.join(name);
            let away = side(&entry, ".away");
            let link = side(&entry, ".link");
            let _ = std::fs::remove_file(&link);
            let _ = std::os::unix::fs::symlink(target.join(name), &link);
            if round.is_multiple_of(2) {
                // By rename: the name is missing for a moment, then a symlink.
                if renameat(CWD, &entry, CWD, &away).is_ok() {
                    let _ = renameat(CWD, &link, CWD, &entry);
                    std::thread::yield_now();
                    let _ = std::fs::remove_file(&entry);
                    let _ = renameat(CWD, &away, CWD, &entry);
                }
            } else if exchange(&entry, &link) {
                // Atomically: the name is the symlink, the real entry sits at NAME.link.
                std::thread::yield_now();
                exchange(&entry, &link);
            }
        }
        round += 1;
        if round == 2 {
            println!("ready");
            let _ = std::io::stdout().flush();
        }
    }
}

fn swap_special(dir: &Path, name: &str) -> ! {
    let entry = dir.join(name);
    let fifo = side(&entry, ".fifo");
    let dev = side(&entry, ".dev");
    let _ = rustix::fs::mknodat(CWD, &fifo, rustix::fs::FileType::Fifo, 0o644.into(), 0);
    let have_dev = rustix::fs::mknodat(
        CWD,
        &dev,
        rustix::fs::FileType::CharacterDevice,
        0o644.into(),
        rustix::fs::makedev(1, 5),
    )
    .is_ok();
    println!("ready {}", if have_dev { "device" } else { "no-device" });
    let _ = std::io::stdout().flush();
    loop {
        for other in [&fifo, &dev] {
            if exchange(&entry, other) {
                std::thread::sleep(Duration::from_micros(50));
                exchange(&entry, other);
            }
        }
    }
}

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
        Some("swap") if args.len() >= 4 => swap(Path::new(&args[1]), Path::new(&args[2]), &args[3..]),
        Some("swap-special") if args.len() == 3 => swap_special(Path::new(&args[1]), &args[2]),
        _ => {
            eprintln!(
                "usage: cairn-test-helper prepare ROOT DELAY_MS | corpus | swap DIR TARGET NAME... | swap-special DIR NAME"
            );
            std::process::exit(2);
        }
    }
}
