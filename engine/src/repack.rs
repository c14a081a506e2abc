//! Repacking: small packs (short preStop backups make many) merged into full-size ones, and
//! readers that find blobs whose pack was repacked.
//!
//! Manifests name index records and records name packs; both are immutable, so a repack cannot
//! rewrite the references to a pack it replaces. Instead it copies each small pack's whole blob
//! region, byte for byte and in order, into a new pack, writes a move (`index/moved/<hh>/<pack>`:
//! the new pack and the region's offset in it), and only then deletes the old pack. Every reader
//! that gets "not found" for a pack looks for its move and reads the same range, shifted, from the
//! new pack (a hop or two at most; a new pack is never small enough to be repacked again). A pack
//! that is still there costs readers nothing extra.
//!
//! Garbage collection keeps a move and its new pack as long as a live record names the old pack,
//! and condemns them like anything else once none does.

use std::collections::HashSet;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use cairn_formats::{
    move_key, pack_key, PackId, PackKind, PackMove, PackTrailer, PACK_FOOTER_LEN, PACK_HEADER_LEN, PACK_MAGIC,
};
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::pack::PackBuilder;
use crate::repo::{Repo, READ_CONCURRENCY};
use crate::store::StoreExt;
use crate::{Error, Result};

/// Moves followed at most from one pack.
const MAX_HOPS: usize = 4;

impl Repo {
    /// The move of a repacked pack, if there is one (cached for the life of this handle).
    ///
    /// # Errors
    /// Store errors; [`Error::Corrupt`] if the move does not decode or names another pack.
    pub async fn pack_move(&self, pack: &PackId) -> Result<Option<PackMove>> {
        if let Some(m) = self
            .moves()
            .lock()
            .expect("invariant: lock not poisoned")
            .get(pack)
        {
            return Ok(Some(m.clone()));
        }
        let key = move_key(pack);
        let Some(got) = self.store().get_opt(&key).await? else {
            return Ok(None);
        };
        let m = PackMove::decode(&got.data).map_err(|e| Error::format(&key, e))?;
        if m.from != *pack {
            return Err(Error::Corrupt {
                object: key,
                detail: format!("describes pack {}", m.from),
            });
        }
        self.moves()
            .lock()
            .expect("invariant: lock not poisoned")
            .insert(*pack, m.clone());
        Ok(Some(m))
    }

    /// Reads `range` of a pack (the whole pack with `None`), following moves if garbage
    /// collection repacked it. A moved pack read whole yields its header and blob region, at the
    /// same offsets as before, without the old trailer.
    ///
    /// # Errors
    /// [`Error::NotFound`] naming the original pack if it is gone and no move explains it; store
    /// errors; a range outside a moved pack's blob region is [`Error::Corrupt`].
    pub async fn read_pack(&self, kind: PackKind, pack: &PackId, range: Option<Range<u64>>) -> Result<Bytes> {
        let original = pack_key(kind, pack);
        let mut at = *pack;
        let mut range = range;
        let mut whole_moved = false;
        for _ in 0..=MAX_HOPS {
            let key = pack_key(kind, &at);
            let got = match &range {
                Some(r) => self.store().get_range(&key, r.clone()).await,
                None => self.store().get(&key).await.map(|g| g.data),
            };
            match got {
                Ok(data) if whole_moved => {
                    let mut b = BytesMut::with_capacity(data.len() + PACK_HEADER_LEN as usize);
                    b.extend_from_slice(PACK_MAGIC);
                    b.extend_from_slice(&data);
                    return Ok(b.freeze());
                }
                Ok(data) => return Ok(data),
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
            let Some(m) = self.pack_move(&at).await? else {
                return Err(Error::NotFound { key: original });
            };
            let want = match range.take() {
                Some(r) => r,
                None => {
                    whole_moved = true;
                    PACK_HEADER_LEN..PACK_HEADER_LEN + m.len
                }
            };
            range = Some(m.map(&want).ok_or_else(|| Error::Corrupt {
                object: move_key(&at),
                detail: format!(
                    "range {}..{} lies outside the moved blob region",
                    want.start, want.end
                ),
            })?);
            at = m.to;
        }
        Err(Error::Corrupt {
            object: original,
            detail: format!("moved more than {MAX_HOPS} times"),
        })
    }
}

/// What one repack did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RepackReport {
    /// Small packs merged (and deleted).
    pub packs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// New packs written.
    pub written: u64,
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

/// Merges small live packs: new pack first, then the moves, then the old packs are deleted.
/// `moved` lists packs that already have a move (an interrupted run): they are only deleted.
pub(crate) async fn repack(
    repo: &Repo,
    cands: Vec<Candidate>,
    moved: &HashSet<PackId>,
    small: [u64; 2],
) -> Result<RepackReport> {
    let mut report = RepackReport::default();
    let (done, cands): (Vec<_>, Vec<_>) = cands.into_iter().partition(|c| moved.contains(&c.pack));
    for c in &done {
        repo.store().delete(&pack_key(c.kind, &c.pack)).await?;
        report.packs += 1;
        report.bytes += c.size;
    }
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
        let mut b = PackBuilder::new(kind, total);
        let mut placed = Vec::new();
        for (c, data) in &fetched {
            let key = pack_key(c.kind, &c.pack);
            // Only a pack that is exactly what its name says is copied; anything else stays for
            // `check` to report.
            if PackId::of(data) != c.pack {
                tracing::warn!(%key, "pack does not hash to its id; not repacked");
                continue;
            }
            let trailer = match PackTrailer::decode_pack(data) {
                Ok(t) if t.kind == kind => t,
                _ => {
                    tracing::warn!(%key, "pack trailer unreadable; not repacked");
                    continue;
                }
            };
            let tlen = u64::from(PackTrailer::trailer_len(data).map_err(|e| Error::format(&key, e))?);
            let end = data.len() as u64 - tlen - PACK_FOOTER_LEN;
            let region = &data[PACK_HEADER_LEN as usize..end as usize];
            let at = b.append_region(region, &trailer.blobs);
            placed.push((c, at, region.len() as u64));
        }
        if placed.len() < 2 {
            continue;
        }
        let new = b.seal();
        let (to, to_size) = (new.id, new.bytes.len() as u64);
        repo.store()
            .put_immutable(&pack_key(kind, &to), new.bytes)
            .await?;
        report.written += 1;
        stream::iter(placed.iter())
            .map(|(c, at, len)| {
                let m = PackMove {
                    from: c.pack,
                    kind,
                    len: *len,
                    to,
                    to_size,
                    at: *at,
                };
                async move {
                    repo.store()
                        .put_immutable(&move_key(&m.from), Bytes::from(m.encode()))
                        .await
                }
            })
            .buffer_unordered(READ_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        for (c, _, _) in &placed {
            repo.store().delete(&pack_key(c.kind, &c.pack)).await?;
            report.packs += 1;
            report.bytes += c.size;
        }
    }
    Ok(report)
}
