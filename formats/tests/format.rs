//! Format tests: every object round-trips, no input makes a decoder panic, and version-1 bytes
//! are pinned by golden files.
//!
//! Golden files are written once, when a format version is created, with
//! `CAIRN_WRITE_GOLDEN=1 cargo test -p cairn-formats --test format golden`, and never again: a test
//! failure here means the encoding changed, which is a format break.

use cairn_formats::*;
use proptest::prelude::*;

fn id32(seed: u8) -> [u8; 32] {
    let mut a = [0u8; 32];
    for (i, b) in a.iter_mut().enumerate() {
        *b = seed.wrapping_mul(31).wrapping_add(i as u8);
    }
    a
}

fn sample_meta() -> Meta {
    Meta {
        mode: 0o4755,
        uid: 1000,
        gid: 100,
        mtime: Timestamp {
            secs: 1_795_350_718,
            nanos: 123_456_789,
        },
        xattrs: vec![Xattr {
            name: b"user.comment".to_vec(),
            value: b"hello".to_vec(),
        }],
    }
}

fn sample_tree() -> Tree {
    let mut t = Tree {
        entries: vec![
            Entry {
                name: b"bin".to_vec(),
                node: Node::Dir {
                    tree: BlobId(id32(1)),
                },
                meta: sample_meta(),
            },
            Entry {
                name: b"data.db".to_vec(),
                node: Node::File {
                    size: 3 << 20,
                    extents: vec![
                        Extent::Chunk {
                            id: BlobId(id32(2)),
                            len: 1 << 20,
                        },
                        Extent::Hole { len: 1 << 20 },
                        Extent::Chunk {
                            id: BlobId(id32(3)),
                            len: 1 << 20,
                        },
                    ],
                    link_group: Some(42),
                },
                meta: sample_meta(),
            },
            Entry {
                name: b"fifo".to_vec(),
                node: Node::Fifo,
                meta: Meta::default(),
            },
            Entry {
                name: b"link".to_vec(),
                node: Node::Symlink {
                    target: b"../nowhere".to_vec(),
                },
                meta: Meta::default(),
            },
            Entry {
                name: b"null".to_vec(),
                node: Node::CharDevice { rdev: 0x103 },
                meta: Meta::default(),
            },
            Entry {
                name: b"sda".to_vec(),
                node: Node::BlockDevice { rdev: 0x800 },
                meta: Meta::default(),
            },
            Entry {
                name: vec![b'n', 0xff, 0xfe],
                node: Node::File {
                    size: 0,
                    extents: vec![],
                    link_group: None,
                },
                meta: Meta::default(),
            },
        ],
    };
    t.sort();
    t
}

fn sample_config() -> RepoConfig {
    RepoConfig {
        id: RepoId([7; 16]),
        created: Timestamp {
            secs: 1_795_350_718,
            nanos: 0,
        },
        chunker: ChunkerParams {
            min: 256 << 10,
            avg: 1 << 20,
            max: 4 << 20,
        },
        compression: Compression { zstd_level: 3 },
        packs: PackTargets {
            data: 16 << 20,
            meta: 4 << 20,
        },
        encryption: Encryption::None,
    }
}

fn sample_manifest() -> Manifest {
    Manifest {
        workspace: "ws-1".into(),
        time: Timestamp {
            secs: 1_795_350_718,
            nanos: 5,
        },
        host: "node-a".into(),
        source: b"/workspace".to_vec(),
        root: BlobId(id32(9)),
        root_meta: sample_meta(),
        parent: Some(SnapshotId(id32(10))),
        base: None,
        index: vec![IndexId(id32(11)), IndexId(id32(12))],
        stats: SnapshotStats {
            files: 1,
            dirs: 2,
            others: 3,
            bytes: 4,
            files_read: 5,
            bytes_read: 6,
            new_blobs: 7,
            new_bytes: 8,
            uploaded_bytes: 9,
            skipped: 0,
        },
        tags: vec!["nightly".into()],
    }
}

fn sample_entry(seed: u8, offset: u64) -> PackEntry {
    PackEntry {
        id: BlobId(id32(seed)),
        offset,
        stored_len: 100,
        raw_len: 200,
        codec: if seed.is_multiple_of(2) {
            Codec::Zstd
        } else {
            Codec::Raw
        },
    }
}

fn sample_index() -> IndexRecord {
    IndexRecord {
        packs: vec![IndexPack {
            pack: PackId(id32(20)),
            kind: PackKind::Data,
            size: 4096,
            blobs: vec![sample_entry(21, 8), sample_entry(22, 108)],
        }],
    }
}

fn sample_pack() -> Vec<u8> {
    let mut p = PACK_MAGIC.to_vec();
    p.extend_from_slice(&[0xAB; 200]);
    PackTrailer {
        kind: PackKind::Meta,
        blobs: vec![sample_entry(30, 8), sample_entry(31, 108)],
    }
    .append_to(&mut p);
    p
}

fn sample_segment() -> IndexSegment {
    // Two ids in shard 0 of 1 bit (leading bit clear), sorted.
    let mut a = id32(1);
    a[0] = 0x10;
    let mut b = id32(2);
    b[0] = 0x20;
    let mut ea = sample_entry(0, 8);
    ea.id = BlobId(a);
    let mut eb = sample_entry(0, 108);
    eb.id = BlobId(b);
    IndexSegment {
        shard_bits: 1,
        shard: 0,
        records: vec![IndexId(id32(50))],
        packs: vec![SegmentPack {
            pack: PackId(id32(51)),
            kind: PackKind::Data,
            size: 4096,
            record: 0,
        }],
        blobs: vec![
            SegmentBlob { pack: 0, entry: ea },
            SegmentBlob { pack: 0, entry: eb },
        ],
    }
}

fn sample_move() -> PackMove {
    PackMove {
        from: PackId(id32(60)),
        kind: PackKind::Data,
        to: PackId(id32(61)),
        to_size: 9000,
        pieces: vec![
            MovePiece {
                offset: 8,
                len: 200,
                at: 1000,
            },
            MovePiece {
                offset: 500,
                len: 100,
                at: 1200,
            },
        ],
    }
}

fn golden(name: &str, bytes: &[u8]) {
    // `cargo test` sets the variable at run time too; prefer it, so a test binary built in a
    // shared target directory from another checkout reads this checkout's files.
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let path = std::path::Path::new(&dir).join("tests/golden/v1").join(name);
    if std::env::var_os("CAIRN_WRITE_GOLDEN").is_some() && !path.exists() {
        std::fs::write(&path, bytes).expect("write golden file");
    }
    let want = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        bytes,
        want.as_slice(),
        "{name}: encoding changed; this is a format break"
    );
}

#[test]
fn golden_v1_config() {
    let b = sample_config().encode();
    golden("config.bin", &b);
    assert_eq!(RepoConfig::decode(&b).expect("decodes"), sample_config());
}

#[test]
fn golden_v1_tree() {
    let b = sample_tree().encode();
    golden("tree.bin", &b);
    assert_eq!(Tree::decode(&b).expect("decodes"), sample_tree());
}

#[test]
fn golden_v1_manifest() {
    let b = sample_manifest().encode();
    golden("manifest.bin", &b);
    assert_eq!(Manifest::decode(&b).expect("decodes"), sample_manifest());
}

#[test]
fn golden_v1_head() {
    let h = Head {
        snapshot: SnapshotId(id32(40)),
        time: Timestamp { secs: 1, nanos: 2 },
    };
    let b = h.encode();
    golden("head.bin", &b);
    assert_eq!(Head::decode(&b).expect("decodes"), h);
}

#[test]
fn golden_v1_index() {
    let b = sample_index().encode();
    golden("index.bin", &b);
    assert_eq!(IndexRecord::decode(&b).expect("decodes"), sample_index());
}

#[test]
fn golden_v1_segment() {
    let b = sample_segment().encode();
    golden("segment.bin", &b);
    assert_eq!(IndexSegment::decode(&b).expect("decodes"), sample_segment());
}

fn sample_move_table() -> MoveTable {
    let m = sample_move();
    MoveTable {
        shard_bits: 1,
        shard: shard_of_bytes(m.from.as_bytes(), 1),
        moves: vec![MoveEntry {
            mv: m,
            unused_since: Some(1_700_000_000),
        }],
    }
}

#[test]
fn golden_v1_move_table() {
    let b = sample_move_table().encode();
    golden("movetable.bin", &b);
    assert_eq!(MoveTable::decode(&b).expect("decodes"), sample_move_table());
    let mut wrong_shard = sample_move_table();
    wrong_shard.shard ^= 1;
    assert!(MoveTable::decode(&wrong_shard.encode()).is_err());
    let mut bad_move = sample_move_table();
    bad_move.moves[0].mv.to_size = 10;
    assert!(MoveTable::decode(&bad_move.encode()).is_err());
}

#[test]
fn segments_refuse_what_would_misdirect_a_backup() {
    let good = sample_segment();
    let mut unsorted = good.clone();
    unsorted.blobs.swap(0, 1);
    let mut wrong_shard = good.clone();
    wrong_shard.shard = 1;
    let mut bad_slot = good.clone();
    bad_slot.blobs[0].pack = 7;
    let mut bad_record = good.clone();
    bad_record.packs[0].record = 3;
    let mut beyond = good.clone();
    beyond.packs[0].size = 100;
    for (what, s) in [
        ("unsorted", unsorted),
        ("wrong shard", wrong_shard),
        ("pack slot", bad_slot),
        ("record slot", bad_record),
        ("beyond the pack", beyond),
    ] {
        assert!(IndexSegment::decode(&s.encode()).is_err(), "{what}");
    }
    assert_eq!(shard_of(&BlobId([0xff; 32]), 16), 0xffff);
    assert_eq!(shard_of(&BlobId([0x80; 32]), 1), 1);
    assert_eq!(shard_of(&BlobId([0x80; 32]), 0), 0);
}

#[test]
fn moves_map_ranges_piece_by_piece() {
    let m = sample_move();
    assert_eq!(m.map(&(8..108)), Some(vec![(8..108, 1000)]));
    assert_eq!(m.map(&(108..208)), Some(vec![(108..208, 1100)]));
    assert_eq!(
        m.map(&(100..600)),
        Some(vec![(100..208, 1092), (500..600, 1200)]),
        "a read across a dropped gap maps to both pieces"
    );
    assert_eq!(m.map(&(0..8)), None, "the old header is not moved");
    assert_eq!(m.map(&(300..400)), None, "dropped bytes are gone");
    assert!(m.covers(&(520..540)) && !m.covers(&(190..520)));
    assert!(m.validate().is_ok());
    let mut outside = m.clone();
    outside.to_size = 1250;
    assert!(outside.validate().is_err());
    let mut overlapping = m.clone();
    overlapping.pieces[1].offset = 100;
    assert!(overlapping.validate().is_err());
    let mut onto_itself = m;
    onto_itself.to = onto_itself.from;
    assert!(onto_itself.validate().is_err());
}

#[test]
fn golden_v1_pack() {
    let b = sample_pack();
    golden("pack.bin", &b);
    let t = PackTrailer::decode_pack(&b).expect("decodes");
    assert_eq!(t.blobs, vec![sample_entry(30, 8), sample_entry(31, 108)]);
}

#[test]
fn header_errors_name_the_problem() {
    let mut b = sample_manifest().encode();
    assert!(matches!(Tree::decode(&b), Err(FormatError::WrongKind { .. })));
    b[6] = 2;
    assert!(matches!(
        Manifest::decode(&b),
        Err(FormatError::UnsupportedVersion { found: 2, .. })
    ));
    assert!(matches!(
        Manifest::decode(b"nope"),
        Err(FormatError::BadMagic { .. })
    ));
    let mut t = sample_tree().encode();
    t.push(0);
    assert!(matches!(Tree::decode(&t), Err(FormatError::Malformed { .. })));
}

#[test]
fn unsafe_tree_names_are_refused() {
    for bad in [&b".."[..], b".", b"", b"a/b", b"/etc", b"a\0b"] {
        let mut t = sample_tree();
        t.entries[0].name = bad.to_vec();
        t.sort();
        let err = Tree::decode(&t.encode()).expect_err("must refuse");
        assert!(err.to_string().contains("entry name"), "{bad:?}: {err}");
    }
}

#[test]
fn duplicate_or_unsorted_names_are_refused() {
    let mut t = sample_tree();
    t.entries[1].name = t.entries[0].name.clone();
    assert!(Tree::decode(&t.encode()).is_err());
    let mut t = sample_tree();
    t.entries.swap(0, 1);
    assert!(Tree::decode(&t.encode()).is_err());
}

#[test]
fn extents_must_add_up() {
    let mut t = sample_tree();
    if let Node::File { size, .. } = &mut t.entries[1].node {
        *size += 1;
    }
    assert!(Tree::decode(&t.encode()).is_err());
}

#[test]
fn pack_trailer_checksum_catches_a_flipped_byte() {
    let mut p = sample_pack();
    let n = p.len();
    p[n - PACK_FOOTER_LEN as usize - 3] ^= 0x10;
    assert!(matches!(
        PackTrailer::decode_pack(&p),
        Err(FormatError::Checksum { .. }) | Err(FormatError::Malformed { .. })
    ));
}

#[test]
fn workspace_names() {
    for ok in ["a", "ws-1", "team.alpha_2"] {
        validate_workspace(ok).expect(ok);
    }
    for bad in ["", ".hidden", "-x", "a/b", "a b", &"x".repeat(129)] {
        assert!(validate_workspace(bad).is_err(), "{bad:?}");
    }
}

fn arb_name() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0),
        1..40,
    )
    .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn arb_meta() -> impl Strategy<Value = Meta> {
    (
        0u32..0o10000,
        any::<u32>(),
        any::<u32>(),
        any::<i64>(),
        0u32..1_000_000_000,
        proptest::collection::vec((arb_name(), proptest::collection::vec(any::<u8>(), 0..20)), 0..3),
    )
        .prop_map(|(mode, uid, gid, secs, nanos, x)| Meta {
            mode,
            uid,
            gid,
            mtime: Timestamp { secs, nanos },
            xattrs: x.into_iter().map(|(name, value)| Xattr { name, value }).collect(),
        })
}

fn arb_node() -> impl Strategy<Value = Node> {
    prop_oneof![
        any::<[u8; 32]>().prop_map(|t| Node::Dir { tree: BlobId(t) }),
        (
            proptest::collection::vec((any::<[u8; 32]>(), 1u32..5_000_000, any::<bool>()), 0..6),
            proptest::option::of(any::<u64>())
        )
            .prop_map(|(xs, link_group)| {
                let extents: Vec<Extent> = xs
                    .into_iter()
                    .map(|(id, len, hole)| {
                        if hole {
                            Extent::Hole { len: u64::from(len) }
                        } else {
                            Extent::Chunk { id: BlobId(id), len }
                        }
                    })
                    .collect();
                Node::File {
                    size: extents.iter().map(|x| x.len()).sum(),
                    extents,
                    link_group,
                }
            }),
        arb_name().prop_map(|target| Node::Symlink { target }),
        Just(Node::Fifo),
        any::<u64>().prop_map(|rdev| Node::CharDevice { rdev }),
        any::<u64>().prop_map(|rdev| Node::BlockDevice { rdev }),
    ]
}

proptest! {
    #[test]
    fn tree_round_trips(entries in proptest::collection::btree_map(arb_name(), (arb_node(), arb_meta()), 0..12)) {
        let tree = Tree {
            entries: entries.into_iter().map(|(name, (node, meta))| Entry { name, node, meta }).collect(),
        };
        let b = tree.encode();
        prop_assert_eq!(Tree::decode(&b).expect("valid tree decodes"), tree);
    }

    #[test]
    fn manifest_round_trips(secs in any::<i64>(), n in 0usize..5, tags in proptest::collection::vec("[a-z]{0,8}", 0..3), meta in arb_meta()) {
        let mut m = sample_manifest();
        m.time.secs = secs;
        m.index = (0..n).map(|i| IndexId(id32(i as u8))).collect();
        m.tags = tags;
        m.root_meta = meta;
        prop_assert_eq!(Manifest::decode(&m.encode()).expect("decodes"), m);
    }

    #[test]
    fn index_and_pack_round_trip(sizes in proptest::collection::vec(1u32..10_000, 0..20)) {
        let mut p = PACK_MAGIC.to_vec();
        let mut blobs = Vec::new();
        for (i, s) in sizes.iter().enumerate() {
            blobs.push(PackEntry { id: BlobId(id32(i as u8)), offset: p.len() as u64, stored_len: *s, raw_len: *s, codec: Codec::Raw });
            p.extend(std::iter::repeat_n(i as u8, *s as usize));
        }
        let t = PackTrailer { kind: PackKind::Data, blobs: blobs.clone() };
        t.append_to(&mut p);
        prop_assert_eq!(PackTrailer::decode_pack(&p).expect("decodes"), t);
        let r = IndexRecord { packs: vec![IndexPack { pack: PackId::of(&p), kind: PackKind::Data, size: p.len() as u64, blobs }] };
        prop_assert_eq!(IndexRecord::decode(&r.encode()).expect("decodes"), r);
    }

    #[test]
    fn decoders_never_panic_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = RepoConfig::decode(&bytes);
        let _ = Tree::decode(&bytes);
        let _ = Manifest::decode(&bytes);
        let _ = Head::decode(&bytes);
        let _ = IndexRecord::decode(&bytes);
        let _ = IndexSegment::decode(&bytes);
        let _ = MoveTable::decode(&bytes);
        let _ = PackTrailer::decode_pack(&bytes);
        let _ = PackTrailer::decode_tail(&bytes, bytes.len() as u64);
    }

    #[test]
    fn decoders_never_panic_on_mutations(which in 0usize..8, pos in any::<prop::sample::Index>(), val in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let good = [sample_config().encode(), sample_tree().encode(), sample_manifest().encode(),
            Head { snapshot: SnapshotId(id32(1)), time: Timestamp::default() }.encode(), sample_index().encode(), sample_pack(),
            sample_segment().encode(), sample_move_table().encode()];
        let mut b = good[which].clone();
        let i = pos.index(b.len());
        b[i] = val;
        let b = &b[..cut.index(b.len() + 1)];
        let _ = RepoConfig::decode(b);
        let _ = Tree::decode(b);
        let _ = Manifest::decode(b);
        let _ = Head::decode(b);
        let _ = IndexRecord::decode(b);
        let _ = IndexSegment::decode(b);
        let _ = MoveTable::decode(b);
        let _ = PackTrailer::decode_pack(b);
    }
}
