//! Micro-benches of the backup pipeline's CPU stages on seeded inputs: chunking, hashing,
//! compression (compressible and incompressible), and pack building.
//!
//! `cargo bench -p cairn-benches` (save a baseline with `-- --save-baseline NAME`, compare with
//! `-- --baseline NAME`).

use cairn_engine::formats::{BlobId, ChunkerParams, PackKind};
use cairn_engine::{chunk_slice, encode_blob, Crypt, PackBuilder};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rand::{RngCore, SeedableRng};

const MIB: usize = 1 << 20;

fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(42).fill_bytes(&mut v);
    v
}

/// Source-code-like text: compressible about 4-6x, like a workspace's sources.
fn text(len: usize) -> Vec<u8> {
    let words = [
        "fn", "let", "match", "return", "user", "session", "agent", "build", "=>", "{", "}", ";\n",
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        out.extend_from_slice(words[(rng.next_u32() as usize) % words.len()].as_bytes());
        out.push(b' ');
    }
    out.truncate(len);
    out
}

/// The crypt of an encrypted repository with a fresh random key.
fn sealed() -> Crypt {
    Crypt::sealed(cairn_engine::formats::RepoKeys::derive(
        &cairn_engine::formats::RootKey::generate(),
        cairn_engine::formats::RepoId([3; 16]),
    ))
}

fn chunking(c: &mut Criterion) {
    let data = random(64 * MIB);
    let mut g = c.benchmark_group("chunk");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    for (name, seed) in [
        ("fastcdc_256k_1m_4m", 0),
        ("fastcdc_256k_1m_4m_keyed", 0x9e37_79b9_7f4a_7c15),
    ] {
        g.bench_function(name, |b| {
            let p = ChunkerParams::default();
            b.iter(|| {
                let mut n = 0usize;
                chunk_slice::<()>(&p, seed, &data, |c| {
                    n += c.len();
                    Ok(())
                })
                .expect("no sink error");
                black_box(n)
            })
        });
    }
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let mut g = c.benchmark_group("hash");
    for size in [4 << 10, MIB] {
        let data = random(size);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("blake3", size), &data, |b, d| {
            b.iter(|| BlobId::of(black_box(d)))
        });
        let sealed = sealed();
        g.bench_with_input(BenchmarkId::new("blake3_keyed", size), &data, |b, d| {
            b.iter(|| sealed.blob_id(black_box(d)))
        });
    }
    g.finish();
}

fn compression(c: &mut Criterion) {
    let mut g = c.benchmark_group("compress");
    g.sample_size(20);
    for (crypt, suffix) in [(Crypt::plain(), ""), (sealed(), "_sealed")] {
        for (name, data) in [("text", text(MIB)), ("random", random(MIB))] {
            let id = crypt.blob_id(&data);
            g.throughput(Throughput::Bytes(data.len() as u64));
            g.bench_with_input(BenchmarkId::new(format!("zstd3{suffix}"), name), &data, |b, d| {
                b.iter(|| encode_blob(&crypt, id, black_box(d), 3))
            });
            let enc = encode_blob(&crypt, id, &data, 3);
            g.bench_with_input(
                BenchmarkId::new(format!("decode_verify{suffix}"), name),
                &enc,
                |b, e| {
                    b.iter(|| {
                        cairn_engine::decode_blob(&crypt, || "bench".into(), &id, &e.data, e.raw_len, e.codec)
                            .expect("valid")
                    })
                },
            );
        }
    }
    g.finish();
}

fn packing(c: &mut Criterion) {
    let blobs: Vec<_> = (0..64u64)
        .map(|i| {
            let mut d = text(256 << 10);
            d[..8].copy_from_slice(&i.to_le_bytes());
            encode_blob(&Crypt::plain(), BlobId::of(&d), &d, 3)
        })
        .collect();
    let total: usize = blobs.iter().map(|b| b.data.len()).sum();
    let mut g = c.benchmark_group("pack");
    g.throughput(Throughput::Bytes(total as u64));
    g.bench_function("build_and_seal_16m", |b| {
        b.iter(|| {
            let mut p = PackBuilder::new(&Crypt::plain(), PackKind::Data, 16 * MIB);
            for blob in &blobs {
                p.add(blob);
            }
            black_box(p.finish().id)
        })
    });
    g.finish();
}

criterion_group!(benches, chunking, hashing, compression, packing);
criterion_main!(benches);
