//! Repacking: small packs (short preStop backups make many) merged into full-size ones, mostly
//! empty ones rewritten with only their live blobs, and readers that find blobs whose pack moved.
//!
//! Manifests name index records and records name packs; both are immutable, so a repack cannot
//! rewrite the references to a pack it replaces. Instead it copies whole blobs, byte for byte and
//! in order, into a new pack, adds a move for each old pack (the new pack and where each copied
//! range went) to the move table of the compacted index set it writes next, names that set in
//! `gc/state`, and only then deletes the old packs. A reader that gets "not found" for a pack reads
//! `gc/state`, the move-table shard of the current set that holds the pack, and reads the same
//! ranges from the new pack. A pack that is still there costs readers nothing extra, and the move
//! table costs a few objects however many packs moved.
//!
//! Garbage collection carries each move from set to set while a live record lists the old pack,
//! keeps the new pack live through it, and drops it a protection window after the last such record
//! went (a backup could still resurrect one until then).

use std::collections::HashSet;
use std::ops::Range;

use bytes::Bytes;
use cairn_formats::{
    pack_key, shard_of_bytes, MoveEntry, MovePiece, PackId, PackKind, PackMove, PackTrailer, PACK_FOOTER_LEN,
    PACK_HEADER_LEN,
};
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::pack::PackBuilder;
use crate::repo::{Repo, READ_CONCURRENCY};
use crate::store::StoreExt;
use crate::{Error, Result};

/// Moves followed at most from one pack.
const MAX_HOPS: usize = 4;

impl Repo {
    /// The move of a repacked pack, if the current move table has one (each table shard read
    /// is cached for the life of this handle).
    ///
    /// # Errors
    /// Store errors; [`Error::Corrupt`] if the table does not decode.
    pub async fn pack_move(&self, pack: &PackId) -> Result<Option<PackMove>> {
        if let Some(m) = self
            .moves()
            .lock()
            .expect("invariant: lock not poisoned")
            .get(pack)
        {
            return Ok(Some(m.clone()));
        }
        for attempt in 0..2 {
            let (state, _) = crate::gc::GcState::read(self).await?;
            let Some(set) = state.compact.filter(|s| s.moves > 0) else {
                return Ok(None);
            };
            let shard = shard_of_bytes(pack.as_bytes(), set.move_bits);
            match crate::compact::read_move_shard(self, &set, shard).await {
                Ok(t) => {
                    let mut cache = self.moves().lock().expect("invariant: lock not poisoned");
                    for e in t.moves {
                        cache.insert(e.mv.from, e.mv);
                    }
                    return Ok(cache.get(pack).cloned());
                }
                // The set was replaced (and the old one deleted) between the two reads.
                Err(Error::NotFound { .. }) if attempt == 0 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Reads `range` of a pack (the whole pack with `None`), following moves if garbage
    /// collection repacked it. The result has the length and offsets of the original read; bytes
    /// a repack dropped (dead blobs) read as zeros, which no blob a snapshot references can be, as
    /// every blob is verified against its id. A moved pack read whole yields its header and blob
    /// region without the old trailer.
    ///
    /// # Errors
    /// [`Error::NotFound`] naming the original pack if it is gone and no move explains it;
    /// [`Error::Corrupt`] if a move does not cover the range; store errors.
    pub async fn read_pack(&self, kind: PackKind, pack: &PackId, range: Option<Range<u64>>) -> Result<Bytes> {
        let key = pack_key(kind, pack);
        let first = match &range {
            Some(r) => self.store().get_range(&key, r.clone()).await,
            None => self.store().get(&key).await.map(|g| g.data),
        };
        match first {
            Err(Error::NotFound { .. }) => {}
            other => return other,
        }
        let m = match self.pack_move(pack).await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(Error::NotFound { key }),
            Err(e) => {
                return Err(Error::Corrupt {
                    object: key,
                    detail: format!("gone from the store, and the move table cannot be read: {e}"),
                })
            }
        };
        let (range, mut out) = match range {
            Some(r) => {
                let len = (r.end - r.start) as usize;
                (r, vec![0u8; len])
            }
            None => {
                let mut out = vec![0u8; m.old_end() as usize];
                out[..PACK_HEADER_LEN as usize].copy_from_slice(PackTrailer::magic(self.crypt().keys()));
                (0..m.old_end(), out)
            }
        };
        // Work: (pack, [(range in that pack, offset in `out`)]), one group per pack reached.
        let mut work = vec![(m, range.clone(), 0usize)];
        let mut covered = 0u64;
        while let Some((m, want, hops)) = work.pop() {
            if hops > MAX_HOPS {
                return Err(Error::Corrupt {
                    object: key,
                    detail: format!("moved more than {MAX_HOPS} times"),
                });
            }
            let Some(parts) = m.map(&want) else {
                return Err(Error::Corrupt {
                    object: key,
                    detail: format!(
                        "repacked into {} without {}..{}, which a snapshot references",
                        pack_key(kind, &m.to),
                        want.start,
                        want.end
                    ),
                });
            };
            // The pieces lie back to back in the new pack: one read covers them.
            let span = parts[0].1
                ..parts[parts.len() - 1].1 + (parts[parts.len() - 1].0.end - parts[parts.len() - 1].0.start);
            match self.store().get_range(&pack_key(kind, &m.to), span.clone()).await {
                Ok(data) => {
                    for (old, at) in &parts {
                        let src = (at - span.start) as usize;
                        let len = (old.end - old.start) as usize;
                        let dst = (old.start - range.start) as usize;
                        let bytes = data.get(src..src + len).ok_or_else(|| Error::Corrupt {
                            object: pack_key(kind, &m.to),
                            detail: format!("short read of {}..{}", span.start, span.end),
                        })?;
                        out[dst..dst + len].copy_from_slice(bytes);
                        covered += len as u64;
                    }
                }
                Err(Error::NotFound { .. }) => {
                    let Some(next) = self.pack_move(&m.to).await? else {
                        return Err(Error::NotFound {
                            key: pack_key(kind, &m.to),
                        });
                    };
                    // Re-express each part in the next pack's terms: the pieces of `next`
                    // that overlap the part's bytes in `m.to`, clipped and shifted back to the
                    // coordinates `out` uses.
                    for (old, at) in parts {
                        let end = at + (old.end - old.start);
                        let pieces = next
                            .pieces
                            .iter()
                            .filter(|p| p.offset < end && p.offset + p.len > at)
                            .map(|p| {
                                let start = p.offset.max(at);
                                let stop = (p.offset + p.len).min(end);
                                MovePiece {
                                    offset: start - at + old.start,
                                    len: stop - start,
                                    at: p.at + (start - p.offset),
                                }
                            })
                            .collect();
                        let sub = PackMove {
                            pieces,
                            ..next.clone()
                        };
                        work.push((sub, old, hops + 1));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if covered == 0 {
            return Err(Error::NotFound { key });
        }
        Ok(Bytes::from(out))
    }
}

/// What one repack did, and what it leaves for after `gc/state` names the new move table.
#[derive(Clone, Debug, Default)]
pub struct RepackReport {
    /// Packs merged or rewritten.
    pub packs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// New packs written.
    pub written: u64,
    /// The moves to add to the table.
    pub(crate) moves: Vec<MoveEntry>,
}

/// A live pack that may be repacked.
#[derive(Clone, Debug)]
pub(crate) struct Candidate {
    pub pack: PackId,
    pub kind: PackKind,
    pub size: u64,
}

/// Groups candidates of one kind into new packs of at most `target` bytes; a group is kept only
/// if it merges at least two packs into at least `small` bytes (the rest waits for more).
fn plan(mut cands: Vec<Candidate>, target: u64, small: u64) -> Vec<Vec<Candidate>> {
    cands.sort_by_key(|c| c.pack);
    let mut groups: Vec<Vec<Candidate>> = Vec::new();
    let mut cur: Vec<Candidate> = Vec::new();
    let mut size = 0u64;
    for c in cands {
        if !cur.is_empty() && size + c.size > target {
            groups.push(std::mem::take(&mut cur));
            size = 0;
        }
        size += c.size;
        cur.push(c);
    }
    groups.push(cur);
    groups.retain(|g| g.len() >= 2 && g.iter().map(|c| c.size).sum::<u64>() >= small);
    groups
}

/// The groups of both kinds, each within its kind's pack target.
fn groups(repo: &Repo, cands: Vec<Candidate>, small: [u64; 2]) -> Vec<Vec<Candidate>> {
    let targets = repo.config().packs;
    let (data, meta): (Vec<_>, Vec<_>) = cands.into_iter().partition(|c| c.kind == PackKind::Data);
    let mut groups = plan(data, u64::from(targets.data), small[0]);
    groups.extend(plan(meta, u64::from(targets.meta), small[1]));
    groups
}

/// What [`repack`] would merge and delete: packs and bytes.
pub(crate) fn would_repack(
    repo: &Repo,
    cands: &[Candidate],
    moved: &HashSet<PackId>,
    small: [u64; 2],
) -> (u64, u64) {
    let (done, rest): (Vec<_>, Vec<_>) = cands.iter().cloned().partition(|c| moved.contains(&c.pack));
    let groups = groups(repo, rest, small);
    done.iter()
        .chain(groups.iter().flatten())
        .fold((0, 0), |(n, b), c| (n + 1, b + c.size))
}

/// Merges small live packs into new ones (uploaded here) and returns their moves; the old packs
/// are deleted by the caller once `gc/state` names a move table that has them.
pub(crate) async fn repack(repo: &Repo, cands: Vec<Candidate>, small: [u64; 2]) -> Result<RepackReport> {
    let mut report = RepackReport::default();
    for group in groups(repo, cands, small) {
        let kind = group[0].kind;
        let fetched: Vec<(Candidate, Bytes)> = stream::iter(group)
            .map(|c| async move {
                let data = repo.store().get(&pack_key(c.kind, &c.pack)).await?.data;
                Ok::<_, Error>((c, data))
            })
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        let total: usize = fetched.iter().map(|(_, d)| d.len()).sum();
        let mut b = PackBuilder::new(repo.crypt(), kind, total);
        let mut placed = Vec::new();
        for (c, data) in &fetched {
            let Some((trailer, end)) = verified(repo, c.kind, &c.pack, data) else {
                continue;
            };
            let region = &data[PACK_HEADER_LEN as usize..end as usize];
            let at = b.append_region(region, &trailer.blobs);
            placed.push((
                c.pack,
                c.size,
                vec![MovePiece {
                    offset: PACK_HEADER_LEN,
                    len: region.len() as u64,
                    at,
                }],
            ));
        }
        if placed.len() < 2 {
            continue;
        }
        seal_and_move(repo, kind, b, &mut placed, &mut report).await?;
    }
    Ok(report)
}

/// A fetched pack's trailer and where its blob region ends, if the pack is exactly what its name
/// says (id, trailer, kind). Anything else is left in place, with a warning, for `check` to report.
fn verified(repo: &Repo, kind: PackKind, pack: &PackId, data: &[u8]) -> Option<(PackTrailer, u64)> {
    let key = pack_key(kind, pack);
    if PackId::of(data) != *pack {
        tracing::warn!(%key, "pack does not hash to its id; not repacked");
        return None;
    }
    match (
        PackTrailer::decode_pack(repo.crypt().keys(), data),
        PackTrailer::trailer_len(data),
    ) {
        (Ok(t), Ok(tlen)) if t.kind == kind => {
            Some((t, data.len() as u64 - u64::from(tlen) - PACK_FOOTER_LEN))
        }
        _ => {
            tracing::warn!(%key, "pack trailer unreadable; not repacked");
            None
        }
    }
}

/// Seals and uploads the new pack and turns `placed` (old pack, its size, its pieces) into moves.
async fn seal_and_move(
    repo: &Repo,
    kind: PackKind,
    b: PackBuilder,
    placed: &mut Vec<(PackId, u64, Vec<MovePiece>)>,
    report: &mut RepackReport,
) -> Result<()> {
    if placed.is_empty() {
        return Ok(());
    }
    let new = b.seal();
    let (to, to_size) = (new.id, new.bytes.len() as u64);
    repo.store()
        .put_immutable(&pack_key(kind, &to), new.bytes)
        .await?;
    report.written += 1;
    for (from, size, pieces) in placed.drain(..) {
        report.moves.push(MoveEntry {
            mv: PackMove {
                from,
                kind,
                to,
                to_size,
                pieces,
            },
            unused_since: None,
        });
        report.packs += 1;
        report.bytes += size;
    }
    Ok(())
}

/// Every blob the trees of `manifests` reference (chunks and the trees themselves), read through
/// `records` (the live index records); metadata packs are fetched once each.
///
/// # Errors
/// A tree that cannot be located, fetched or decoded: nothing is rewritten from a repository whose
/// references cannot all be read.
pub(crate) async fn live_blobs(
    repo: &Repo,
    manifests: &[cairn_formats::Manifest],
    records: &[(cairn_formats::IndexId, cairn_formats::IndexRecord)],
) -> Result<HashSet<cairn_formats::BlobId>> {
    use cairn_formats::{BlobId, Extent, Node, PackEntry, Tree};
    use std::collections::HashMap;
    let mut trees_at: HashMap<BlobId, (PackId, PackEntry)> = HashMap::new();
    for (_, r) in records {
        for p in r.packs.iter().filter(|p| p.kind == PackKind::Meta) {
            for e in &p.blobs {
                trees_at.insert(e.id, (p.pack, *e));
            }
        }
    }
    let metas: HashSet<PackId> = trees_at.values().map(|(p, _)| *p).collect();
    let packs: HashMap<PackId, Bytes> = stream::iter(metas)
        .map(|p| async move { Ok::<_, Error>((p, repo.read_pack(PackKind::Meta, &p, None).await?)) })
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect()
        .await?;
    let mut live: HashSet<BlobId> = HashSet::new();
    let mut stack: Vec<BlobId> = manifests.iter().map(|m| m.root).collect();
    while let Some(id) = stack.pop() {
        if !live.insert(id) {
            continue;
        }
        let (pack, e) = trees_at.get(&id).ok_or_else(|| Error::Corrupt {
            object: format!("tree {id}"),
            detail: "not located by any live index record".into(),
        })?;
        let key = pack_key(PackKind::Meta, pack);
        let r = e.range();
        let stored = packs
            .get(pack)
            .and_then(|b| b.get(r.start as usize..r.end as usize))
            .ok_or_else(|| Error::Corrupt {
                object: key.clone(),
                detail: format!("tree {} lies beyond the pack", id.short()),
            })?;
        let raw = crate::compress::decode_blob(
            repo.crypt(),
            || format!("tree {} in {key}", id.short()),
            &id,
            stored,
            e.raw_len,
            e.codec,
        )?;
        let tree = Tree::decode(&raw).map_err(|e| Error::format(format!("tree {id} in {key}"), e))?;
        for entry in tree.entries {
            match entry.node {
                Node::Dir { tree } => stack.push(tree),
                Node::File { extents, .. } => {
                    for x in extents {
                        if let Extent::Chunk { id, .. } = x {
                            live.insert(id);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(live)
}

/// A data pack to rewrite with only its live blobs.
#[derive(Clone, Debug)]
pub(crate) struct Sparse {
    pub pack: PackId,
    pub size: u64,
}

/// Rewrites mostly-empty data packs: their live blobs (by `live`) copied into new packs, runs of
/// adjacent live blobs as one piece each; returns the moves (the caller deletes the old packs once
/// `gc/state` names a move table that has them). Only packs that every backup has avoided for a
/// whole protection window may be given (see `gc.rs`).
pub(crate) async fn rewrite_sparse(
    repo: &Repo,
    packs: Vec<Sparse>,
    live: &HashSet<cairn_formats::BlobId>,
) -> Result<RepackReport> {
    let mut report = RepackReport::default();
    let target = u64::from(repo.config().packs.data);
    let mut b = PackBuilder::new(repo.crypt(), PackKind::Data, target as usize);
    let mut placed: Vec<(PackId, u64, Vec<MovePiece>)> = Vec::new();
    for s in packs {
        let key = pack_key(PackKind::Data, &s.pack);
        let data = repo.store().get(&key).await?.data;
        let Some((trailer, _)) = verified(repo, PackKind::Data, &s.pack, &data) else {
            continue;
        };
        // Runs of adjacent live blobs.
        let mut runs: Vec<(u64, u64, Vec<cairn_formats::PackEntry>)> = Vec::new();
        for e in trailer.blobs.iter().filter(|e| live.contains(&e.id)) {
            let r = e.range();
            match runs.last_mut() {
                Some((_, end, es)) if *end == r.start => {
                    *end = r.end;
                    es.push(*e);
                }
                _ => runs.push((r.start, r.end, vec![*e])),
            }
        }
        let live_len: u64 = runs.iter().map(|(a, z, _)| z - a).sum();
        if !b.is_empty() && (b.len() as u64) + live_len > target {
            let full = std::mem::replace(
                &mut b,
                PackBuilder::new(repo.crypt(), PackKind::Data, target as usize),
            );
            seal_and_move(repo, PackKind::Data, full, &mut placed, &mut report).await?;
        }
        let mut pieces = Vec::new();
        for (start, end, es) in &runs {
            let at = b.append_range(&data[*start as usize..*end as usize], *start, es);
            pieces.push(MovePiece {
                offset: *start,
                len: end - start,
                at,
            });
        }
        placed.push((s.pack, s.size, pieces));
    }
    seal_and_move(repo, PackKind::Data, b, &mut placed, &mut report).await?;
    Ok(report)
}
