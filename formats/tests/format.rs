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
    .append_to(None, &mut p);
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
    let path = std::path::Path::new(&dir).join("tests/golden").join(name);
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
    golden("v1/config.bin", &b);
    assert_eq!(RepoConfig::decode(&b).expect("decodes"), sample_config());
}

#[test]
fn golden_v1_tree() {
    let b = sample_tree().encode();
    golden("v1/tree.bin", &b);
    assert_eq!(Tree::decode(&b).expect("decodes"), sample_tree());
}

#[test]
fn golden_v1_manifest() {
    let b = sample_manifest().encode();
    golden("v1/manifest.bin", &b);
    assert_eq!(Manifest::decode(&b).expect("decodes"), sample_manifest());
}

#[test]
fn golden_v1_head() {
    let h = Head {
        snapshot: SnapshotId(id32(40)),
        time: Timestamp { secs: 1, nanos: 2 },
    };
    let b = h.encode();
    golden("v1/head.bin", &b);
    assert_eq!(Head::decode(&b).expect("decodes"), h);
}

#[test]
fn golden_v1_index() {
    let b = sample_index().encode();
    golden("v1/index.bin", &b);
    assert_eq!(IndexRecord::decode(&b).expect("decodes"), sample_index());
}

#[test]
fn golden_v1_segment() {
    let b = sample_segment().encode();
    golden("v1/segment.bin", &b);
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
    golden("v1/movetable.bin", &b);
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
    golden("v1/pack.bin", &b);
    let t = PackTrailer::decode_pack(None, &b).expect("decodes");
    assert_eq!(t.blobs, vec![sample_entry(30, 8), sample_entry(31, 108)]);
}

#[test]
fn header_errors_name_the_problem() {
    let mut b = sample_manifest().encode();
    assert!(matches!(Tree::decode(&b), Err(FormatError::WrongKind { .. })));
    b[6] = 3;
    assert!(matches!(
        Manifest::decode(&b),
        Err(FormatError::UnsupportedVersion { found: 3, .. })
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
        PackTrailer::decode_pack(None, &p),
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
        t.append_to(None, &mut p);
        prop_assert_eq!(PackTrailer::decode_pack(None, &p).expect("decodes"), t);
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
        let _ = PackTrailer::decode_pack(None, &bytes);
        let _ = PackTrailer::decode_tail(None, &bytes, bytes.len() as u64);
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
        let _ = PackTrailer::decode_pack(None, b);
    }
}

// ---- Version 2: sealed objects, pinned with fixed keys and salts -------------------------------

fn v2_root() -> RootKey {
    RootKey::from_bytes(zeroize::Zeroizing::new([0x11; 32]))
}

fn v2_keys() -> RepoKeys {
    RepoKeys::derive(&v2_root(), sample_config().id)
}

fn v2_config() -> RepoConfig {
    RepoConfig {
        encryption: Encryption::Aes256Gcm,
        ..sample_config()
    }
}

const V2_KEY_FILE: &[u8] = b"0123456789abcdef0123456789abcdef\n";

fn v2_key_object() -> KeyObject {
    let id = [9; 16];
    let binding = KeyObject::binding(sample_config().id, &id, &v2_config().encode());
    let kek = FileKek::from_file_bytes(V2_KEY_FILE).expect("32 bytes");
    KeyObject {
        id,
        created: Timestamp {
            secs: 1_795_350_718,
            nanos: 0,
        },
        host: "golden".into(),
        wrap: KeyWrap::File,
        wrapped: kek.wrap_with(&v2_root(), &binding, &[0x21; SALT_LEN]),
    }
}

#[test]
fn golden_v2_config_and_key() {
    let c = v2_config().encode();
    golden("v2/config.bin", &c);
    assert_eq!(RepoConfig::decode(&c).expect("decodes"), v2_config());
    assert_eq!(v2_config().version(), 2);
    // A config whose version and encryption disagree is refused (a downgrade by rewriting it).
    let mut lie = c.clone();
    lie[6] = 1;
    assert!(RepoConfig::decode(&lie).is_err());

    let k = v2_key_object().encode();
    golden("v2/key.bin", &k);
    let k = KeyObject::decode(&k).expect("decodes");
    let kek = FileKek::from_file_bytes(V2_KEY_FILE).expect("32 bytes");
    let binding = KeyObject::binding(sample_config().id, &k.id, &c);
    let root = kek.unwrap(&binding, &k.wrapped).expect("the key file opens it");
    assert_eq!(root.expose(), v2_root().expose());
    // Another key file, another repository, another config: none opens it.
    let other = FileKek::from_file_bytes(b"another key file of at least 32 bytes").expect("long enough");
    assert!(other.unwrap(&binding, &k.wrapped).is_none());
    assert!(kek
        .unwrap(&KeyObject::binding(RepoId([8; 16]), &k.id, &c), &k.wrapped)
        .is_none());
    assert!(kek
        .unwrap(
            &KeyObject::binding(sample_config().id, &k.id, &sample_config().encode()),
            &k.wrapped
        )
        .is_none());
    assert!(FileKek::from_file_bytes(b"short\n").is_err());
    // 32 random bytes that end in a newline are a key of 32 bytes, not 31.
    let mut binary = [0x5a; 32];
    binary[31] = b'\n';
    assert!(FileKek::from_file_bytes(&binary).is_ok());
    let with_newline = FileKek::from_file_bytes(V2_KEY_FILE).expect("text key");
    let without = FileKek::from_file_bytes(&V2_KEY_FILE[..32]).expect("same key without newline");
    let b = KeyObject::binding(sample_config().id, &k.id, &c);
    let wrapped = with_newline.wrap(&v2_root(), &b);
    assert!(
        without.unwrap(&b, &wrapped).is_some(),
        "a trailing newline changed the key"
    );
}

#[test]
fn golden_v2_keyed_ids() {
    let k = v2_keys();
    let mut b = k.blob_id(b"hello").0.to_vec();
    b.extend_from_slice(&k.chunker_seed().to_le_bytes());
    golden("v2/ids.bin", &b);
    assert_ne!(k.blob_id(b"hello"), BlobId::of(b"hello"));
    let other = RepoKeys::derive(
        &RootKey::from_bytes(zeroize::Zeroizing::new([0x12; 32])),
        sample_config().id,
    );
    assert_ne!(other.blob_id(b"hello"), k.blob_id(b"hello"));
    assert_ne!(other.chunker_seed(), k.chunker_seed());
}

/// Every sealed object kind: its golden bytes, its binding, and its decoder.
fn v2_objects() -> Vec<(&'static str, String, Vec<u8>)> {
    let head = Head {
        snapshot: SnapshotId(id32(40)),
        time: Timestamp { secs: 1, nanos: 2 },
    };
    let set = "00000001-0123456789abcdef";
    vec![
        (
            "v2/manifest.bin",
            "snapshots/ws-1/".to_string(),
            sample_manifest().encode(),
        ),
        ("v2/head.bin", "heads/ws-1".to_string(), head.encode()),
        (
            "v2/index.bin",
            "index/records/".to_string(),
            sample_index().encode(),
        ),
        ("v2/segment.bin", segment_key(set, 0), sample_segment().encode()),
        (
            "v2/movetable.bin",
            move_table_key(set, 1),
            sample_move_table().encode(),
        ),
    ]
}

#[test]
fn golden_v2_sealed_objects() {
    let k = v2_keys();
    for (i, (name, binding, plain)) in v2_objects().into_iter().enumerate() {
        let sealed = k.seal_object_with(&binding, &plain, &[0x30 + i as u8; SALT_LEN]);
        golden(name, &sealed);
        assert_eq!(
            &sealed[..8],
            &[b'C', b'A', b'I', b'R', b'N', plain[5], 2, 0],
            "{name}: header"
        );
        let opened = k.open_object("object", &binding, &sealed).expect("opens");
        assert_eq!(&opened[8..], &plain[8..], "{name}");
        // The opened encoding decodes like version 1.
        match name {
            "v2/manifest.bin" => assert_eq!(Manifest::decode(&opened).expect("decodes"), sample_manifest()),
            "v2/index.bin" => assert_eq!(IndexRecord::decode(&opened).expect("decodes"), sample_index()),
            "v2/segment.bin" => assert_eq!(IndexSegment::decode(&opened).expect("decodes"), sample_segment()),
            "v2/movetable.bin" => {
                assert_eq!(MoveTable::decode(&opened).expect("decodes"), sample_move_table())
            }
            _ => {
                Head::decode(&opened).expect("decodes");
            }
        }
        // Nothing of the body is visible: the plaintext body appears nowhere in the object.
        assert!(
            !sealed.windows(plain.len() - 8).any(|w| w == &plain[8..]),
            "{name}"
        );
        // A flipped byte anywhere, another place, another repository or key: refused.
        for at in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[at] ^= 0x40;
            assert!(
                k.open_object("object", &binding, &bad).is_err(),
                "{name}: byte {at} flipped opened"
            );
        }
        assert!(matches!(
            k.open_object("object", "snapshots/ws-2/", &sealed),
            Err(FormatError::Sealed { .. })
        ));
        let elsewhere = RepoKeys::derive(&v2_root(), RepoId([8; 16]));
        assert!(
            elsewhere.open_object("object", &binding, &sealed).is_err(),
            "{name}: other repository"
        );
        let wrong = RepoKeys::derive(&RootKey::generate(), sample_config().id);
        assert!(
            wrong.open_object("object", &binding, &sealed).is_err(),
            "{name}: other key"
        );
    }
}

#[test]
fn golden_v2_pack() {
    let k = v2_keys();
    let tree = sample_tree().encode();
    let id = k.blob_id(&tree);
    let blob = k.seal_blob_with(&id, Codec::Raw, tree.len() as u32, &tree, &[0x40; SALT_LEN]);
    let mut p = PACK_MAGIC_V2.to_vec();
    p.extend_from_slice(&blob);
    let entry = PackEntry {
        id,
        offset: 8,
        stored_len: blob.len() as u32,
        raw_len: tree.len() as u32,
        codec: Codec::Raw,
    };
    PackTrailer {
        kind: PackKind::Meta,
        blobs: vec![entry],
    }
    .append_with(Some(&k), &mut p, Some(&[0x41; SALT_LEN]));
    golden("v2/pack.bin", &p);
    let t = PackTrailer::decode_pack(Some(&k), &p).expect("decodes");
    assert_eq!(t.blobs, vec![entry]);
    let r = entry.range();
    let open_in = |pack: &[u8]| {
        k.open_blob(
            &id,
            Codec::Raw,
            entry.raw_len,
            &pack[r.start as usize..r.end as usize],
        )
    };
    let opened = open_in(&p).expect("opens");
    assert_eq!(Tree::decode(&opened).expect("tree"), sample_tree());
    // Neither the trailer's ids nor the tree's names are visible.
    assert!(!p.windows(32).any(|w| w == id.as_bytes()));
    assert!(!p.windows(tree.len()).any(|w| w == &tree[..]));
    // Without the keys, or with a plaintext reader, the pack is refused, never misread.
    assert!(PackTrailer::decode_pack(None, &p).is_err());
    assert!(PackTrailer::decode_pack(Some(&k), &sample_pack()).is_err());
    for at in 8..p.len() - 44 {
        let mut bad = p.clone();
        bad[at] ^= 1;
        let blob_ok = open_in(&bad).is_ok();
        assert!(
            !blob_ok || PackTrailer::decode_pack(Some(&k), &bad).is_err(),
            "byte {at} flipped went unnoticed"
        );
    }
}
