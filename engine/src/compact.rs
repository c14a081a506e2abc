//! The compacted index: sorted, sharded segments of every live index record, written by garbage
//! collection, so a backup can deduplicate against what any workspace stored without reading every
//! session's record or holding the repository's index in memory.
//!
//! A set is `index/compact/<set>/<shard>` for `2^bits` shards (a blob's shard is its id's leading
//! bits); `gc/state` names the current set and the generation it was built in. A backup reads the
//! state anyway, so finding the set costs nothing; it uses a set only when it belongs to the
//! current generation (a set from before a deletion could cite a deleted record). A blob the
//! backup does not know from its parent or base is looked up in its shard: the segment is fetched
//! once, loaded into the pod's local index on disk (RocksDB, so memory stays bounded however large
//! the repository is) and remembered for later backups of the same set. Each backup fetches at
//! most a budget of segments (`CAIRN_DEDUP_FETCHES`): a missed deduplication costs an upload,
//! never correctness, and a final flush never waits on a large index.
//!
//! A blob found in a segment is cited through the segment's record, which garbage collection
//! protects like any other: backups skip condemned records and packs, and a record condemned after
//! the backup started is resurrected by the sweep once the backup commits (see [`crate::gc`]).

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use cairn_formats::{
    move_table_key, segment_key, shard_of, shard_of_bytes, BlobId, IndexId, IndexRecord, IndexSegment,
    MoveEntry, MoveTable, PackId, SegmentBlob, SegmentPack, MAX_SHARD_BITS,
};
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::gc::GcView;
use crate::index::LocalIndex;
use crate::repo::{Repo, READ_CONCURRENCY};
use crate::store::StoreExt;
use crate::{Error, Result};

/// Blobs a segment aims to hold: about 120 KiB encoded, so fetching one is cheap.
const SEGMENT_BLOBS: u64 = 2048;
/// Segments a backup fetches at most, unless `CAIRN_DEDUP_FETCHES` says otherwise.
const DEFAULT_FETCHES: usize = 64;
/// A backup whose first this many fetched segments held none of the blobs it looked for stops
/// fetching: its new data is new (edits, build output), not someone else's install.
const FRUITLESS_FETCHES: u64 = 8;

/// A compacted index set, as `gc/state` names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactSet {
    /// Its directory under `index/compact/`.
    pub name: String,
    /// The GC generation it was built in; backups ignore a set of another generation.
    pub generation: u64,
    /// Leading id bits that select a shard.
    pub shard_bits: u8,
    /// Blobs it locates.
    pub blobs: u64,
    /// Records it was built from: BLAKE3 of their sorted ids, to tell whether a rebuild is due.
    pub records: String,
    /// Leading pack-id bits that select a shard of the move table.
    #[serde(default)]
    pub move_bits: u8,
    /// Moves in the table (0: there is no table).
    #[serde(default)]
    pub moves: u64,
}

/// The segment budget for one backup: `CAIRN_DEDUP_FETCHES`, else 64 (0 turns cross-workspace
/// deduplication off).
pub fn dedup_fetches_from_env() -> usize {
    std::env::var("CAIRN_DEDUP_FETCHES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_FETCHES)
}

/// The digest of a set of record ids, as [`CompactSet::records`] stores it.
pub(crate) fn records_digest(ids: &[IndexId]) -> String {
    let mut ids = ids.to_vec();
    ids.sort();
    let mut h = blake3::Hasher::new();
    for id in &ids {
        h.update(id.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// The shard bits for `blobs` blobs: enough shards that each holds about [`SEGMENT_BLOBS`].
fn shard_bits_for(blobs: u64) -> u8 {
    let mut bits = 0u8;
    while bits < MAX_SHARD_BITS && (blobs >> bits) > SEGMENT_BLOBS {
        bits += 1;
    }
    bits
}

/// Indexes of a record, one of its packs and one of that pack's blobs.
type Place = (usize, usize, usize);

/// Builds the segments of `records` (each blob once, located through the first record, by id,
/// that lists it).
pub(crate) fn build_segments(records: &[(IndexId, IndexRecord)]) -> (u8, Vec<IndexSegment>) {
    let mut sorted: Vec<&(IndexId, IndexRecord)> = records.iter().collect();
    sorted.sort_by_key(|(id, _)| *id);
    // blob -> where in `sorted` (record, pack, entry); the first record wins.
    let mut blobs: HashMap<BlobId, Place> = HashMap::new();
    for (ri, (_, r)) in sorted.iter().enumerate() {
        for (pi, p) in r.packs.iter().enumerate() {
            for (bi, b) in p.blobs.iter().enumerate() {
                blobs.entry(b.id).or_insert((ri, pi, bi));
            }
        }
    }
    let bits = shard_bits_for(blobs.len() as u64);
    let mut by_shard: Vec<Vec<(BlobId, Place)>> = vec![Vec::new(); 1 << bits];
    for (id, at) in blobs {
        by_shard[shard_of(&id, bits) as usize].push((id, at));
    }
    let segments = by_shard
        .into_iter()
        .enumerate()
        .map(|(shard, mut list)| {
            list.sort_by_key(|(id, _)| *id);
            let mut seg = IndexSegment {
                shard_bits: bits,
                shard: shard as u32,
                ..IndexSegment::default()
            };
            let mut record_slot: HashMap<usize, u32> = HashMap::new();
            let mut pack_slot: HashMap<(usize, usize), u32> = HashMap::new();
            for (_, (ri, pi, bi)) in list {
                let (rid, r) = sorted[ri];
                let p = &r.packs[pi];
                let pack = *pack_slot.entry((ri, pi)).or_insert_with(|| {
                    let record = *record_slot.entry(ri).or_insert_with(|| {
                        seg.records.push(*rid);
                        (seg.records.len() - 1) as u32
                    });
                    seg.packs.push(SegmentPack {
                        pack: p.pack,
                        kind: p.kind,
                        size: p.size,
                        record,
                    });
                    (seg.packs.len() - 1) as u32
                });
                seg.blobs.push(SegmentBlob {
                    pack,
                    entry: p.blobs[bi],
                });
            }
            seg
        })
        .collect();
    (bits, segments)
}

/// Writes a new set built from the live `records` for `generation`, with the move table `moves`.
/// Objects are create-only under a fresh name, so a reader of the previous set is never
/// disturbed.
///
/// # Errors
/// Store errors.
pub(crate) async fn write_set(
    repo: &Repo,
    generation: u64,
    records: &[(IndexId, IndexRecord)],
    moves: &HashMap<PackId, MoveEntry>,
) -> Result<CompactSet> {
    let (bits, segments) = build_segments(records);
    let name = format!("{generation:08}-{:016x}", rand::random::<u64>());
    let blobs = segments.iter().map(|s| s.blobs.len() as u64).sum();
    let move_bits = shard_bits_for(moves.len() as u64);
    // No table at all without moves (`CompactSet::moves` = 0 tells readers so).
    let shards = if moves.is_empty() { 0 } else { 1u32 << move_bits };
    let mut tables: Vec<MoveTable> = (0..shards)
        .map(|shard| MoveTable {
            shard_bits: move_bits,
            shard,
            moves: Vec::new(),
        })
        .collect();
    for e in moves.values() {
        tables[shard_of_bytes(e.mv.from.as_bytes(), move_bits) as usize]
            .moves
            .push(e.clone());
    }
    let objects = segments
        .into_iter()
        .map(|seg| {
            let key = segment_key(&name, seg.shard);
            let sealed = repo.crypt().seal(&key, seg.encode());
            (key, sealed)
        })
        .chain(tables.into_iter().map(|mut t| {
            t.moves.sort_by_key(|e| e.mv.from);
            let key = move_table_key(&name, t.shard);
            let sealed = repo.crypt().seal(&key, t.encode());
            (key, sealed)
        }));
    stream::iter(objects)
        .map(|(key, bytes)| async move { repo.store().put_immutable(&key, Bytes::from(bytes)).await })
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    let ids: Vec<IndexId> = records.iter().map(|(id, _)| *id).collect();
    Ok(CompactSet {
        name,
        generation,
        shard_bits: bits,
        blobs,
        records: records_digest(&ids),
        move_bits,
        moves: moves.len() as u64,
    })
}

/// One shard of a set's move table.
///
/// # Errors
/// Store errors ([`Error::NotFound`] if the set was deleted); [`Error::Corrupt`].
pub(crate) async fn read_move_shard(repo: &Repo, set: &CompactSet, shard: u32) -> Result<MoveTable> {
    let key = move_table_key(&set.name, shard);
    let got = repo.store().get(&key).await?;
    let plain = repo.crypt().open(&key, "move table", &key, &got.data)?;
    let t = MoveTable::decode(&plain).map_err(|e| Error::format(&key, e))?;
    if t.shard != shard || t.shard_bits != set.move_bits {
        return Err(Error::Corrupt {
            object: key,
            detail: "holds another shard".into(),
        });
    }
    Ok(t)
}

/// The whole move table of `set` (none without a set).
///
/// # Errors
/// As [`read_move_shard`].
pub(crate) async fn read_moves(repo: &Repo, set: Option<&CompactSet>) -> Result<HashMap<PackId, MoveEntry>> {
    let Some(set) = set.filter(|s| s.moves > 0) else {
        return Ok(HashMap::new());
    };
    let tables: Vec<MoveTable> = stream::iter(0..1u32 << set.move_bits)
        .map(|shard| read_move_shard(repo, set, shard))
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(tables
        .into_iter()
        .flat_map(|t| t.moves)
        .map(|e| (e.mv.from, e))
        .collect())
}

/// A backup's view of the compacted index: fetches segments on demand, within a budget.
pub(crate) struct GlobalIndex {
    set: Option<CompactSet>,
    repo: Repo,
    runtime: tokio::runtime::Handle,
    state: Mutex<Budget>,
}

struct Budget {
    left: usize,
    fetched: u64,
    hits: u64,
}

/// What the compacted index did for one backup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GlobalDedup {
    /// Segments fetched from the store.
    pub segments_fetched: u64,
    /// Fetches that found the blob they were made for.
    pub useful_fetches: u64,
}

impl GlobalIndex {
    /// The set a backup in the generation `view` may use, with `budget` fetches.
    pub(crate) fn new(repo: &Repo, view: &GcView, budget: usize) -> Self {
        GlobalIndex {
            set: view
                .compact
                .clone()
                .filter(|s| s.generation == view.generation && budget > 0),
            repo: repo.clone(),
            runtime: tokio::runtime::Handle::current(),
            state: Mutex::new(Budget {
                left: budget,
                fetched: 0,
                hits: 0,
            }),
        }
    }

    /// What it did.
    pub(crate) fn report(&self) -> GlobalDedup {
        let b = self.state.lock().expect("invariant: lock not poisoned");
        GlobalDedup {
            segments_fetched: b.fetched,
            useful_fetches: b.hits,
        }
    }

    /// Counts a fetch that found the blob it was made for.
    pub(crate) fn hit(&self) {
        self.state.lock().expect("invariant: lock not poisoned").hits += 1;
    }

    /// Makes sure the shard of `id` is in `index` if the budget allows. Returns whether anything
    /// new was loaded (so the caller looks again). Blocks: call from a blocking thread.
    pub(crate) fn load_shard_of(&self, index: &LocalIndex, view: &GcView, id: &BlobId) -> Result<bool> {
        let Some(set) = &self.set else {
            return Ok(false);
        };
        let shard = shard_of(id, set.shard_bits);
        if index.has_shard(&set.name, shard)? {
            return Ok(false);
        }
        // One fetch at a time: two threads missing in one shard fetch it once.
        let mut budget = self.state.lock().expect("invariant: lock not poisoned");
        if index.has_shard(&set.name, shard)? {
            return Ok(true);
        }
        if budget.left == 0 || (budget.fetched >= FRUITLESS_FETCHES && budget.hits == 0) {
            return Ok(false);
        }
        budget.left -= 1;
        budget.fetched += 1;
        let key = segment_key(&set.name, shard);
        let got = self.runtime.block_on(self.repo.store().get_opt(&key));
        let seg = match got {
            Ok(Some(g)) => self
                .repo
                .crypt()
                .open(&key, "index segment", &key, &g.data)
                .and_then(|plain| IndexSegment::decode(&plain).map_err(|e| Error::format(key.clone(), e))),
            // The set was replaced and its segments deleted meanwhile: no deduplication here.
            Ok(None) => return Ok(false),
            Err(e) => Err(e),
        };
        let seg = match seg {
            Ok(s) if s.shard == shard && s.shard_bits == set.shard_bits => s,
            Ok(_) => {
                tracing::warn!(%key, "index segment holds another shard; ignored");
                return Ok(false);
            }
            // The compacted index only saves uploads: a bad segment is reported, not fatal.
            Err(e) => {
                tracing::warn!(error = %e, "index segment unusable; backing up without it");
                budget.left = 0;
                return Ok(false);
            }
        };
        index.add_segment(&set.name, &seg, &view.packs, &view.records)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_formats::{Codec, IndexPack, PackEntry, PackId, PackKind};

    fn record(seed: u64, packs: usize, blobs: usize, shared: &[BlobId]) -> (IndexId, IndexRecord) {
        let mut r = IndexRecord::default();
        for p in 0..packs {
            let mut ip = IndexPack {
                pack: PackId::of(format!("pack {seed} {p}").as_bytes()),
                kind: PackKind::Data,
                size: 1 << 20,
                blobs: Vec::new(),
            };
            let ids = (0..blobs).map(|b| BlobId::of(format!("blob {seed} {p} {b}").as_bytes()));
            for (i, id) in ids.chain(shared.iter().copied()).enumerate() {
                ip.blobs.push(PackEntry {
                    id,
                    offset: 8 + 100 * i as u64,
                    stored_len: 100,
                    raw_len: 100,
                    codec: Codec::Raw,
                });
            }
            r.packs.push(ip);
        }
        (IndexId::of(&r.encode()), r)
    }

    #[test]
    fn every_blob_lands_once_in_its_shard_cited_through_a_record_that_lists_it() {
        let shared: Vec<BlobId> = (0..50)
            .map(|i| BlobId::of(format!("shared {i}").as_bytes()))
            .collect();
        let records: Vec<_> = (0..8).map(|s| record(s, 3, 400, &shared)).collect();
        let (bits, segs) = build_segments(&records);
        assert_eq!(segs.len(), 1 << bits);
        let distinct = 8 * 3 * 400 + 50;
        assert!(bits >= 2, "{distinct} blobs need several shards, got {bits} bits");
        let mut seen = std::collections::HashSet::new();
        for s in &segs {
            let s = IndexSegment::decode(&s.encode()).expect("valid segment");
            for b in &s.blobs {
                assert!(seen.insert(b.entry.id), "blob listed twice");
                let p = &s.packs[b.pack as usize];
                let rid = s.records[p.record as usize];
                let (_, r) = records.iter().find(|(id, _)| *id == rid).expect("a live record");
                let ip = r
                    .packs
                    .iter()
                    .find(|x| x.pack == p.pack)
                    .expect("the record lists the pack");
                assert!(ip.blobs.contains(&b.entry));
            }
        }
        assert_eq!(seen.len(), distinct);
    }

    #[test]
    fn shard_bits_grow_with_the_index() {
        assert_eq!(shard_bits_for(0), 0);
        assert_eq!(shard_bits_for(SEGMENT_BLOBS), 0);
        assert_eq!(shard_bits_for(SEGMENT_BLOBS * 4), 2);
        assert_eq!(shard_bits_for(u64::MAX), MAX_SHARD_BITS);
    }
}
