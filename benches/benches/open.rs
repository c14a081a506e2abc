//! What reading a workspace file by descriptor costs (issue 12), per file, against the plain
//! `open(path)` it replaced: both `lstat` the entry first, as the backup walk does, then open it
//! and `fstat` what was opened. The descriptor way opens an `O_PATH` handle, checks it is a regular
//! file and reopens that inode through `/proc/self/fd`, so a FIFO or device node swapped in is
//! never opened.
//!
//! `cargo bench -p cairn-benches --bench open`

use std::ffi::OsString;
use std::path::PathBuf;

use cairn_engine::WorkspaceDir;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

const FILES: usize = 2000;

fn open(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let names: Vec<OsString> = (0..FILES).map(|i| OsString::from(format!("f{i}.rs"))).collect();
    for n in &names {
        std::fs::write(tmp.path().join(n), b"fn main() {}\n").expect("a file");
    }
    let paths: Vec<PathBuf> = names.iter().map(|n| tmp.path().join(n)).collect();
    let dir = WorkspaceDir::open(tmp.path()).expect("the directory");

    let mut g = c.benchmark_group("open");
    g.throughput(Throughput::Elements(FILES as u64));
    g.bench_function("by_path", |b| {
        b.iter(|| {
            for p in &paths {
                let st = std::fs::symlink_metadata(p).expect("lstat");
                let f = std::fs::File::open(p).expect("open");
                black_box((st, f.metadata().expect("fstat")));
            }
        })
    });
    g.bench_function("by_descriptor", |b| {
        b.iter(|| {
            for n in &names {
                let st = dir.stat_at(n).expect("lstat");
                let f = dir.open_file(n).expect("open").expect("a regular file");
                black_box((st, f));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, open);
criterion_main!(benches);
