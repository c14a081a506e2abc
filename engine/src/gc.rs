//! Garbage collection without a repository lock: mark, condemn, wait, sweep.
//!
//! A run takes the GC lease (`gc/lease`, compare-and-swap, so one GC at a time), reads the store's
//! clock, marks what every manifest references (its index records, and the packs those records
//! list), then:
//! 1. sweeps what an earlier run condemned: an object condemned at least the protection window ago
//!    and still unreferenced is deleted (index records before packs); one referenced again (a
//!    backup that had deduplicated against it before it was condemned has since committed) is
//!    resurrected;
//! 2. condemns unreferenced records and packs older than the protection window (by the store's
//!    clock), recording when.
//!
//! The condemned set and a generation number live in `gc/state` (JSON, compare-and-swap). A backup
//! reads it when it starts: it never deduplicates against a condemned pack or cites a condemned
//! record, and when the generation moved (something was deleted) it forgets the blob locations its
//! local index learned before and relearns them from its parent snapshot.
//!
//! Why that is safe with writers running: a backup that deduplicated against a pack before the pack
//! was condemned started before the condemnation and commits within its session limit
//! (`CAIRN_MAX_SESSION`), which is shorter than the protection window; so its manifest is listed
//! by the time a sweep may delete the pack, and the sweep resurrects it instead. A backup that
//! starts after the condemnation sees it. Young objects (an unfinished backup's packs) are never
//! condemned. Ages and "now" come from the store's timestamps, never from a pod's clock.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_formats::{IndexId, PackId, PackKind, COMPACT_PREFIX, INDEX_PREFIX};
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::repo::{Repo, READ_CONCURRENCY};
use crate::store::{PutMode, Store, Version};
use crate::{Error, Result};

/// The GC state: generation and condemned objects.
pub const GC_STATE_KEY: &str = "gc/state";
/// The lease naming the GC that runs.
pub const GC_LEASE_KEY: &str = "gc/lease";
const PACKS_PREFIX: &str = "packs/";

/// One condemned object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condemned {
    /// Its key.
    pub key: String,
    /// When it was condemned, by the store's clock (Unix seconds).
    pub at: i64,
    /// Its size in bytes.
    pub size: u64,
}

/// `gc/state`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcState {
    /// Layout version of this object (1).
    pub version: u32,
    /// Bumped by every run that deletes something.
    pub generation: u64,
    /// Objects that will be deleted once the protection window has passed since `at`, unless
    /// referenced again.
    pub condemned: Vec<Condemned>,
    /// The current compacted index set, if one was built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compact: Option<crate::compact::CompactSet>,
    /// Mostly-empty data packs scheduled to be rewritten without their dead blobs, and when (by
    /// the store's clock). Backups avoid them from then on; the rewrite happens once the
    /// protection window has passed, so no backup can still reference a blob it drops.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rewrite: Vec<Condemned>,
    /// Keys of packs rewritten without their dead blobs (or being rewritten), kept while the pack
    /// or its move exists: backups never deduplicate against them, as the records listing them
    /// still name blobs that are gone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rewritten: Vec<String>,
}

impl GcState {
    /// Reads `gc/state` (empty if there is none).
    ///
    /// # Errors
    /// Store errors; [`Error::Corrupt`] if it does not parse.
    pub async fn read(repo: &Repo) -> Result<(GcState, Option<Version>)> {
        match repo.store().get(GC_STATE_KEY).await {
            Ok(g) => {
                let json = repo.crypt().open_json(GC_STATE_KEY, "gc state", &g.data)?;
                let s: GcState = serde_json::from_slice(&json).map_err(|e| Error::Corrupt {
                    object: GC_STATE_KEY.into(),
                    detail: e.to_string(),
                })?;
                Ok((s, Some(g.version)))
            }
            Err(Error::NotFound { .. }) => Ok((GcState::default(), None)),
            Err(e) => Err(e),
        }
    }

    /// The packs backups must not deduplicate against: condemned, scheduled for a rewrite, or
    /// rewritten.
    pub fn condemned_packs(&self) -> HashSet<PackId> {
        self.condemned
            .iter()
            .chain(self.rewrite.iter())
            .filter_map(|c| pack_id(&c.key))
            .chain(self.rewritten.iter().filter_map(|k| pack_id(k)))
            .collect()
    }

    /// The condemned index records.
    pub fn condemned_records(&self) -> HashSet<IndexId> {
        self.condemned.iter().filter_map(|c| record_id(&c.key)).collect()
    }
}

fn pack_id(key: &str) -> Option<PackId> {
    key.strip_prefix(PACKS_PREFIX)?.rsplit('/').next()?.parse().ok()
}

fn record_id(key: &str) -> Option<IndexId> {
    key.strip_prefix(INDEX_PREFIX)?.rsplit('/').next()?.parse().ok()
}

/// How to collect.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Unreferenced objects younger than this are left alone, and condemned ones are deleted only
    /// this long after condemnation. Must exceed the writers' session limit.
    pub protect: Duration,
    /// Report only; change nothing.
    pub dry_run: bool,
    /// Who runs (for the lease).
    pub holder: String,
    /// A lease older than this (by the store's clock) is taken over.
    pub lease_ttl: Duration,
    /// Merge small live packs into full-size ones.
    pub repack: bool,
    /// Packs smaller than this are repacked (default: a quarter of the repository's pack target
    /// for their kind).
    pub repack_below: Option<u64>,
    /// Data packs whose dead bytes exceed this share (0.0-1.0) are rewritten without them, one
    /// protection window after being scheduled.
    pub max_unused: f64,
}

/// What a run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    /// The generation after this run.
    pub generation: u64,
    /// Manifests marked from.
    pub snapshots: u64,
    /// Index records and packs referenced.
    pub live_records: u64,
    /// Packs referenced.
    pub live_packs: u64,
    /// Objects condemned by this run, and their bytes.
    pub condemned: u64,
    /// Bytes condemned by this run.
    pub condemned_bytes: u64,
    /// Condemned objects referenced again, kept.
    pub resurrected: u64,
    /// Index records deleted.
    pub deleted_records: u64,
    /// Packs deleted.
    pub deleted_packs: u64,
    /// Bytes deleted.
    pub deleted_bytes: u64,
    /// Moves in the current move table.
    pub moves: u64,
    /// The compacted index set current after this run.
    pub compact_set: Option<String>,
    /// Segments this run wrote (0 when the set was already up to date).
    pub compact_segments: u64,
    /// Blobs the current set locates.
    pub compact_blobs: u64,
    /// Small packs repacked (and deleted) by this run; with `dry_run`, that would be.
    pub repacked_packs: u64,
    /// Their bytes.
    pub repacked_bytes: u64,
    /// Packs written by the repack.
    pub repack_written: u64,
    /// Mostly-empty packs scheduled by this run for a rewrite (after the window).
    pub sparse_scheduled: u64,
    /// Mostly-empty packs rewritten by this run, their bytes, and the bytes kept.
    pub sparse_rewritten: u64,
    /// Bytes of the packs rewritten.
    pub sparse_bytes: u64,
    /// Condemned objects still waiting out the window.
    pub waiting: u64,
    /// Unreferenced objects too young to condemn.
    pub young: u64,
    /// Wall time.
    pub elapsed: Duration,
}

#[derive(Serialize, Deserialize)]
struct Lease {
    holder: String,
    token: u64,
}

/// Runs one garbage collection.
///
/// # Errors
/// [`Error::Invalid`] if another GC holds the lease; [`Error::Conflict`] if the lease or the state
/// changed under this run (it stops before deleting); store errors; [`Error::Corrupt`] or
/// [`Error::NotFound`] when a manifest or a record it names cannot be read (nothing is deleted
/// from a repository whose references cannot all be read: run `check`).
pub async fn gc(repo: &Repo, opts: &GcOptions) -> Result<GcReport> {
    let started = Instant::now();
    let store = repo.store().as_ref();
    let (now, lease) = acquire_lease(store, opts).await?;
    let result = collect(repo, opts, now, &lease).await;
    release_lease(store, &lease).await;
    let mut report = result?;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The store's current time: write a probe object and read its timestamp.
async fn store_now(store: &dyn Store) -> Result<i64> {
    let key = format!("gc/clock-{:016x}", rand::random::<u64>());
    store
        .put(&key, Bytes::from_static(b"clock"), PutMode::Create)
        .await?;
    let meta = store.head(&key).await;
    let _ = store.delete(&key).await;
    meta?.modified.map(|t| t.secs).ok_or_else(|| {
        Error::Invalid(format!(
            "{}: the store reports no modification times, which garbage collection needs",
            store.location()
        ))
    })
}

async fn acquire_lease(store: &dyn Store, opts: &GcOptions) -> Result<(i64, Version)> {
    let now = store_now(store).await?;
    let mine = Lease {
        holder: opts.holder.clone(),
        token: rand::random(),
    };
    let body = Bytes::from(serde_json::to_vec(&mine).map_err(|e| Error::Invalid(e.to_string()))?);
    let mode = match store.get(GC_LEASE_KEY).await {
        Ok(cur) => {
            let age = store
                .head(GC_LEASE_KEY)
                .await
                .ok()
                .and_then(|m| m.modified)
                .map_or(i64::MAX, |t| now - t.secs);
            if age < i64::try_from(opts.lease_ttl.as_secs()).unwrap_or(i64::MAX) {
                let holder = serde_json::from_slice::<Lease>(&cur.data)
                    .map(|l| l.holder)
                    .unwrap_or_else(|_| "?".into());
                return Err(Error::Invalid(format!(
                    "another gc ({holder}) holds the lease since {age}s ago; one runs at a time \
                     (a lease older than {:?} is taken over)",
                    opts.lease_ttl
                )));
            }
            PutMode::Update(cur.version)
        }
        Err(Error::NotFound { .. }) => PutMode::Create,
        Err(e) => return Err(e),
    };
    match store.put(GC_LEASE_KEY, body, mode).await {
        Ok(v) => Ok((now, v)),
        Err(Error::AlreadyExists { .. } | Error::Conflict { .. }) => Err(Error::Invalid(
            "another gc took the lease at the same moment; one runs at a time".into(),
        )),
        Err(e) => Err(e),
    }
}

async fn release_lease(store: &dyn Store, lease: &Version) {
    // Only our own lease: if it was taken over, the version differs and it is left alone.
    if let Ok(cur) = store.get(GC_LEASE_KEY).await {
        if &cur.version == lease {
            let _ = store.delete(GC_LEASE_KEY).await;
        }
    }
}

async fn collect(repo: &Repo, opts: &GcOptions, now: i64, lease: &Version) -> Result<GcReport> {
    let store = repo.store().as_ref();
    // Store times have whole seconds: round the window up, and compare strictly, so a truncated
    // timestamp can never make an object look older than it is.
    let protect = i64::try_from(opts.protect.as_secs() + u64::from(opts.protect.subsec_nanos() > 0))
        .unwrap_or(i64::MAX);
    let (state, state_version) = GcState::read(repo).await?;

    // Mark. Listing the objects first and the references second means an object written after
    // the listing is simply not seen (and young), never mistaken for garbage.
    let records_listed = store.list(INDEX_PREFIX).await?;
    let packs_listed = store.list(PACKS_PREFIX).await?;
    let mut table = crate::compact::read_moves(repo, state.compact.as_ref()).await?;
    let manifests = live_manifests(repo).await?;
    let mut live_records: HashSet<IndexId> = HashSet::new();
    for m in &manifests {
        live_records.extend(m.index.iter().copied());
    }
    let records: Vec<(IndexId, cairn_formats::IndexRecord)> = stream::iter(live_records.iter().copied())
        .map(|id| async move { repo.index_record(&id).await.map(|r| (id, r)) })
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect()
        .await?;
    // Packs live records list, and the packs that hold the blobs of those since repacked.
    let mut listed_packs: HashMap<PackId, PackKind> = HashMap::new();
    for (_, r) in &records {
        listed_packs.extend(r.packs.iter().map(|p| (p.pack, p.kind)));
    }
    // The move table: a move is kept while a live record lists its old pack, and for a window
    // after the last one went (a backup may still cite a record that lists it, and resurrect it).
    let mut table_changed = false;
    table.retain(|p, e| {
        let unused = match (listed_packs.contains_key(p), e.unused_since) {
            (true, _) => None,
            (false, None) => Some(now),
            (false, Some(t)) => Some(t),
        };
        table_changed |= unused != e.unused_since;
        e.unused_since = unused;
        let keep = unused.is_none_or(|t| now - t <= protect);
        table_changed |= !keep;
        keep
    });
    let mut live_packs: HashSet<PackId> = listed_packs.keys().copied().collect();
    live_packs.extend(table.values().map(|e| e.mv.to));
    let referenced = |key: &str| {
        pack_id(key).is_some_and(|p| live_packs.contains(&p))
            || record_id(key).is_some_and(|r| live_records.contains(&r))
    };
    let mut report = GcReport {
        snapshots: manifests.len() as u64,
        live_records: live_records.len() as u64,
        live_packs: live_packs.len() as u64,
        ..GcReport::default()
    };

    // Sweep what earlier runs condemned.
    let listed: HashMap<&str, &crate::store::ObjectMeta> = records_listed
        .iter()
        .chain(packs_listed.iter())
        .map(|o| (o.key.as_str(), o))
        .collect();
    let mut still = Vec::new();
    let mut doomed = Vec::new();
    for c in &state.condemned {
        if !listed.contains_key(c.key.as_str()) {
            continue; // already gone
        }
        if referenced(&c.key) {
            report.resurrected += 1;
        } else if now - c.at > protect {
            doomed.push(c.clone());
        } else {
            report.waiting += 1;
            still.push(c.clone());
        }
    }
    // Condemn what is unreferenced and older than the window.
    let already: HashSet<&str> = state.condemned.iter().map(|c| c.key.as_str()).collect();
    for o in records_listed.iter().chain(packs_listed.iter()) {
        if referenced(&o.key) || already.contains(o.key.as_str()) {
            continue;
        }
        if pack_id(&o.key).is_none() && record_id(&o.key).is_none() {
            continue; // not ours (a stray temp name): leave it
        }
        match o.modified {
            Some(t) if now - t.secs > protect => {
                report.condemned += 1;
                report.condemned_bytes += o.size;
                still.push(Condemned {
                    key: o.key.clone(),
                    at: now,
                    size: o.size,
                });
            }
            _ => report.young += 1,
        }
    }
    report.generation = state.generation + u64::from(!doomed.is_empty());
    // Small live packs, for the repack; those with a move already (an interrupted run) are only
    // deleted.
    let targets = repo.config().packs;
    let small = [
        opts.repack_below.unwrap_or(u64::from(targets.data) / 4),
        opts.repack_below.unwrap_or(u64::from(targets.meta) / 4),
    ];
    let has_move: HashSet<PackId> = table.keys().copied().collect();
    let candidates: Vec<crate::repack::Candidate> = if opts.repack {
        packs_listed
            .iter()
            .filter_map(|o| {
                let pack = pack_id(&o.key)?;
                let kind = *listed_packs.get(&pack)?;
                let limit = small[usize::from(kind == PackKind::Meta)];
                (o.size < limit || has_move.contains(&pack)).then_some(crate::repack::Candidate {
                    pack,
                    kind,
                    size: o.size,
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    // Mostly-empty data packs: scheduled now, rewritten a window later (see `GcState::rewrite`).
    let existing: HashMap<PackId, u64> = packs_listed
        .iter()
        .filter_map(|o| Some((pack_id(&o.key)?, o.size)))
        .collect();
    let listed_data = |p: &PackId| listed_packs.get(p) == Some(&PackKind::Data);
    let live = if opts.repack {
        Some(crate::repack::live_blobs(repo, &manifests, &records).await?)
    } else {
        None
    };
    let mut rewrite = Vec::new();
    let mut rewritten: Vec<String> = state
        .rewritten
        .iter()
        .filter(|k| pack_id(k).is_some_and(|p| existing.contains_key(&p) || has_move.contains(&p)))
        .cloned()
        .collect();
    let mut due: Vec<crate::repack::Sparse> = Vec::new();
    for r in &state.rewrite {
        let Some(p) = pack_id(&r.key) else { continue };
        if !listed_data(&p) || !existing.contains_key(&p) || has_move.contains(&p) {
            continue; // garbage now (condemned the usual way), or already moved
        }
        if now - r.at > protect {
            rewritten.push(r.key.clone());
        } else {
            rewrite.push(r.clone());
        }
    }
    if let Some(live) = &live {
        let scheduled: HashSet<&str> = state
            .rewrite
            .iter()
            .map(|c| c.key.as_str())
            .chain(rewritten.iter().map(String::as_str))
            .collect();
        let mut entries: HashMap<PackId, HashMap<u64, (u32, bool)>> = HashMap::new();
        for (_, r) in &records {
            for p in r.packs.iter().filter(|p| p.kind == PackKind::Data) {
                let e = entries.entry(p.pack).or_default();
                for b in &p.blobs {
                    e.insert(b.offset, (b.stored_len, live.contains(&b.id)));
                }
            }
        }
        for (pack, blobs) in &entries {
            let key = cairn_formats::pack_key(PackKind::Data, pack);
            let Some(&size) = existing.get(pack) else { continue };
            if size < small[0] || has_move.contains(pack) || scheduled.contains(key.as_str()) {
                continue;
            }
            let live_bytes: u64 = blobs
                .values()
                .filter(|(_, l)| *l)
                .map(|(n, _)| u64::from(*n))
                .sum();
            if (size.saturating_sub(live_bytes)) as f64 > opts.max_unused * size as f64 {
                report.sparse_scheduled += 1;
                rewrite.push(Condemned { key, at: now, size });
            }
        }
        // Rewritten but still there without a move: due now, or interrupted last time.
        for k in &rewritten {
            if let Some(p) = pack_id(k).filter(|p| listed_data(p) && !has_move.contains(p)) {
                if let Some(&size) = existing.get(&p) {
                    due.push(crate::repack::Sparse { pack: p, size });
                }
            }
        }
    }
    let rewriting: HashSet<PackId> = rewrite
        .iter()
        .map(|c| c.key.as_str())
        .chain(rewritten.iter().map(String::as_str))
        .filter_map(pack_id)
        .collect();
    let candidates: Vec<crate::repack::Candidate> = candidates
        .into_iter()
        .filter(|c| has_move.contains(&c.pack) || !rewriting.contains(&c.pack))
        .collect();
    if opts.dry_run {
        for c in &doomed {
            count_deleted(&mut report, c);
        }
        let (n, bytes) = crate::repack::would_repack(repo, &candidates, &has_move, small);
        report.repacked_packs = n;
        report.repacked_bytes = bytes;
        report.sparse_rewritten = due.len() as u64;
        report.sparse_bytes = due.iter().map(|d| d.size).sum();
        report.compact_set = state.compact.as_ref().map(|c| c.name.clone());
        return Ok(report);
    }

    // Repack: new packs now; their moves go into the table of the set written next; the old
    // packs are deleted only once `gc/state` names that set. Packs moved by an interrupted run
    // (their move is in the table already) are only deleted.
    let mut old_packs: Vec<(PackKind, PackId)> = candidates
        .iter()
        .filter(|c| has_move.contains(&c.pack))
        .map(|c| (c.kind, c.pack))
        .collect();
    let fresh: Vec<_> = candidates
        .into_iter()
        .filter(|c| !has_move.contains(&c.pack))
        .collect();
    let mut moved = crate::repack::repack(repo, fresh, small).await?;
    report.repacked_packs = moved.packs;
    report.repacked_bytes = moved.bytes;
    report.repack_written = moved.written;
    if let (Some(live), false) = (&live, due.is_empty()) {
        let r = crate::repack::rewrite_sparse(repo, due, live).await?;
        report.sparse_rewritten = r.packs;
        report.sparse_bytes = r.bytes;
        report.repack_written += r.written;
        moved.moves.extend(r.moves);
    }
    for e in moved.moves {
        old_packs.push((e.mv.kind, e.mv.from));
        table.insert(e.mv.from, e);
        table_changed = true;
    }

    // The compacted index: rebuilt when the live records, the generation or the moves changed.
    let digest = crate::compact::records_digest(&live_records.iter().copied().collect::<Vec<_>>());
    let current = state
        .compact
        .clone()
        .filter(|c| c.generation == report.generation && c.records == digest && !table_changed);
    let compact = match current {
        Some(c) => c,
        None => {
            let c = crate::compact::write_set(repo, report.generation, &records, &table).await?;
            report.compact_segments = 1 << c.shard_bits;
            c
        }
    };
    report.compact_blobs = compact.blobs;
    report.compact_set = Some(compact.name.clone());
    report.moves = compact.moves;

    // The lease must still be ours before anything is written.
    if store
        .get(GC_LEASE_KEY)
        .await
        .map(|g| &g.version != lease)
        .unwrap_or(true)
    {
        return Err(Error::Conflict {
            key: GC_LEASE_KEY.into(),
        });
    }
    // The new state first: from here on, backups see the new generation and drop what they knew
    // of the doomed objects (a crash before the deletes leaves garbage a later run condemns again).
    let previous_set = state.compact.as_ref().map(|c| c.name.clone());
    let new_state = GcState {
        version: 1,
        generation: report.generation,
        condemned: still,
        compact: Some(compact.clone()),
        rewrite,
        rewritten,
    };
    let body = Bytes::from(repo.crypt().seal_json(
        GC_STATE_KEY,
        serde_json::to_vec(&new_state).map_err(|e| Error::Invalid(e.to_string()))?,
    ));
    let mode = state_version.map_or(PutMode::Create, PutMode::Update);
    match store.put(GC_STATE_KEY, body, mode).await {
        Ok(_) => {}
        Err(Error::AlreadyExists { .. } | Error::Conflict { .. }) => {
            return Err(Error::Conflict {
                key: GC_STATE_KEY.into(),
            })
        }
        Err(e) => return Err(e),
    }
    // Index records before packs: a record never names a pack that is gone unmoved.
    let (recs, packs): (Vec<_>, Vec<_>) = doomed.into_iter().partition(|c| record_id(&c.key).is_some());
    for batch in [recs, packs] {
        stream::iter(batch.iter())
            .map(|c| store.delete(&c.key))
            .buffer_unordered(READ_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        for c in &batch {
            count_deleted(&mut report, c);
        }
    }
    // Compacted sets other than the current and the previous one (a backup that read the
    // previous state may still fetch from it; one that finds a segment gone just dedups less).
    let stale: Vec<String> = store
        .list(COMPACT_PREFIX)
        .await?
        .into_iter()
        .filter(|o| {
            let set = o.key[COMPACT_PREFIX.len()..].split('/').next().unwrap_or("");
            set != compact.name && Some(set) != previous_set.as_deref()
        })
        .map(|o| o.key)
        .collect();
    stream::iter(stale.iter())
        .map(|k| store.delete(k))
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    // The repacked packs: the state names their moves now.
    stream::iter(old_packs.iter())
        .map(|(kind, p)| async move { store.delete(&cairn_formats::pack_key(*kind, p)).await })
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(report)
}

/// Every manifest in the store, verified. One deleted between the listing and the read was
/// forgotten meanwhile: it references nothing any more.
async fn live_manifests(repo: &Repo) -> Result<Vec<cairn_formats::Manifest>> {
    let wanted = repo.snapshot_keys(None).await?;
    let got: Vec<Option<cairn_formats::Manifest>> = stream::iter(wanted)
        .map(|(ws, id)| async move {
            match repo.manifest(&ws, &id).await {
                Ok(m) => Ok(Some(m)),
                Err(Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(got.into_iter().flatten().collect())
}

fn count_deleted(report: &mut GcReport, c: &Condemned) {
    if record_id(&c.key).is_some() {
        report.deleted_records += 1;
    } else {
        report.deleted_packs += 1;
    }
    report.deleted_bytes += c.size;
}

/// What a backup needs to know of the GC: what it must not deduplicate against.
#[derive(Clone, Debug, Default)]
pub struct GcView {
    /// The generation when the backup started.
    pub generation: u64,
    /// Packs it must not reuse.
    pub packs: HashSet<PackId>,
    /// Records it must not cite.
    pub records: HashSet<IndexId>,
    /// The compacted index set, if any.
    pub compact: Option<crate::compact::CompactSet>,
}

impl GcView {
    /// Reads the current view.
    ///
    /// # Errors
    /// As [`GcState::read`].
    pub async fn read(repo: &Repo) -> Result<GcView> {
        let (s, _) = GcState::read(repo).await?;
        Ok(GcView {
            generation: s.generation,
            packs: s.condemned_packs(),
            records: s.condemned_records(),
            compact: s.compact,
        })
    }
}

/// Reads the GC view for a backup or restore using `index`: if the generation moved since the
/// index learned its locations, they are forgotten first (some may name deleted objects).
///
/// # Errors
/// Store and index errors.
pub(crate) async fn sync_generation(repo: &Repo, index: &crate::index::LocalIndex) -> Result<GcView> {
    let view = GcView::read(repo).await?;
    if index.gc_generation()? != view.generation {
        index.reset_locations(view.generation)?;
    }
    Ok(view)
}
