//! `check`: is every snapshot complete and every object intact?
//!
//! Without `read_data` it reads every head, manifest, index record and tree, and checks that every
//! blob a snapshot references is located by its records in a pack that exists with the recorded
//! size. With `read_data` it also downloads every referenced pack, checks its id, its trailer, and
//! every blob's hash, and that every place an index record gives for a referenced blob is where
//! the pack holds that blob (a record whose entries lie, written by a key holder, is found here).
//! It reports every problem it finds rather than stopping at the first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use cairn_formats::{
    pack_key, pack_prefix, BlobId, Extent, Node, PackId, PackKind, PackTrailer, HEADS_PREFIX,
};
use futures::stream::{self, StreamExt};
use serde::Serialize;

use crate::compress::decode_blob;
use crate::progress::Progress;
use crate::repo::Repo;
use crate::tree::SnapshotTrees;
use crate::Result;

/// Packs downloaded at once by `--read-data`.
const READ_DATA_CONCURRENCY: usize = 4;

/// What `check` found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    /// Snapshots checked.
    pub snapshots: u64,
    /// Trees read.
    pub trees: u64,
    /// Distinct blobs referenced.
    pub blobs: u64,
    /// Packs referenced.
    pub packs: u64,
    /// Referenced packs that garbage collection repacked (their blobs are in a newer pack).
    pub moved_packs: u64,
    /// Packs in the store that no snapshot references (a later `gc` removes them).
    pub unreferenced_packs: u64,
    /// Bytes downloaded and verified by `read_data`.
    pub bytes_read: u64,
    /// Every problem found, one line each, naming the object.
    pub errors: Vec<String>,
}

/// Checks the whole repository.
///
/// # Errors
/// Only failures to list the store; damage is reported in [`CheckReport::errors`].
pub async fn check(repo: &Repo, read_data: bool, progress: Arc<Progress>) -> Result<CheckReport> {
    let mut report = CheckReport::default();
    let store = repo.store();

    // Heads point at existing, valid manifests.
    for h in store.list(HEADS_PREFIX).await? {
        let ws = &h.key[HEADS_PREFIX.len()..];
        match repo.head(ws).await {
            Ok(Some((head, _))) => {
                if let Err(e) = repo.manifest(ws, &head.snapshot).await {
                    report.errors.push(format!("head of {ws}: {e}"));
                }
            }
            Ok(None) => {}
            Err(e) => report.errors.push(e.to_string()),
        }
    }

    // Every snapshot: records, trees, blob locations.
    let mut packs: BTreeMap<PackId, (PackKind, u64)> = BTreeMap::new();
    let mut blobs: HashSet<BlobId> = HashSet::new();
    // Referenced byte ranges per pack, to check that a repack moved every one of them.
    let mut ranges: HashMap<PackId, HashSet<(u64, u64)>> = HashMap::new();
    // Where the records place each referenced blob, per pack, to check against the packs' own
    // trailers (with read_data).
    let mut placed: HashMap<PackId, HashMap<cairn_formats::PackEntry, String>> = HashMap::new();
    let listed = store.list(&cairn_formats::snapshot_prefix(None)).await?;
    for o in listed {
        let mut parts = o.key.splitn(3, '/').skip(1);
        let (Some(ws), Some(id)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(id) = id.parse() else {
            report.errors.push(format!("{}: not a snapshot id", o.key));
            continue;
        };
        report.snapshots += 1;
        let manifest = match repo.manifest(ws, &id).await {
            Ok(m) => m,
            Err(e) => {
                report.errors.push(e.to_string());
                continue;
            }
        };
        let trees = match SnapshotTrees::load(repo, &manifest).await {
            Ok(t) => t,
            Err(e) => {
                report
                    .errors
                    .push(format!("snapshot {} of {ws}: {e}", id.short()));
                continue;
            }
        };
        let snap: cairn_formats::SnapshotId = id;
        let mut note = |id: &BlobId, errors: &mut Vec<String>| match trees.locations().get(id) {
            Ok(loc) => {
                blobs.insert(*id);
                let size = trees.locations().pack_size(&loc.pack).unwrap_or(0);
                packs.insert(loc.pack, (loc.kind, size));
                let r = loc.entry.range();
                ranges.entry(loc.pack).or_default().insert((r.start, r.end));
                // Every distinct place, each with the first snapshot that uses it.
                placed
                    .entry(loc.pack)
                    .or_default()
                    .entry(loc.entry)
                    .or_insert_with(|| format!("snapshot {} of {ws}", snap.short()));
            }
            Err(e) => errors.push(format!("snapshot {} of {ws}: {e}", snap.short())),
        };
        let mut errors = Vec::new();
        note(&manifest.root, &mut errors);
        let walked = trees.walk(&manifest.root, &mut |_, e| {
            match &e.node {
                Node::Dir { tree } => {
                    report.trees += 1;
                    note(tree, &mut errors);
                }
                Node::File { extents, .. } => {
                    for x in extents {
                        if let Extent::Chunk { id, .. } = x {
                            note(id, &mut errors);
                        }
                    }
                }
                _ => {}
            }
            Progress::add(&progress.entries, 1);
            Ok(())
        });
        report.trees += 1;
        if let Err(e) = walked {
            errors.push(format!("snapshot {} of {ws}: {e}", id.short()));
        }
        report.errors.extend(errors);
    }
    report.blobs = blobs.len() as u64;
    report.packs = packs.len() as u64;

    // Referenced packs exist with the recorded size.
    let mut stored: HashMap<String, u64> = HashMap::new();
    for kind in [PackKind::Data, PackKind::Meta] {
        for o in store.list(&pack_prefix(kind)).await? {
            stored.insert(o.key, o.size);
        }
    }
    // A pack garbage collection repacked is gone, and its move names the pack holding its blobs
    // now: check (and with read_data, verify) that one instead.
    let mut moved: Vec<PackId> = Vec::new();
    let mut now_in: BTreeMap<PackId, (PackKind, u64)> = BTreeMap::new();
    for (id, (kind, _)) in &packs {
        if stored.contains_key(&pack_key(*kind, id)) {
            continue;
        }
        // Follow each referenced range from move to move until a stored pack holds it.
        let mut last = None;
        for &(start, end) in ranges.get(id).into_iter().flatten() {
            let (mut at, mut r) = (*id, start..end);
            let mut hops = 0;
            while !stored.contains_key(&pack_key(*kind, &at)) && hops < 4 {
                hops += 1;
                match repo.pack_move(&at).await {
                    Ok(Some(m)) => match m.map(&r).filter(|_| m.covers(&r)) {
                        Some(parts) => {
                            let (old, new_at) = &parts[0];
                            r = *new_at..new_at + (old.end - old.start);
                            last = Some((m.to, m.to_size));
                            at = m.to;
                        }
                        None => {
                            report.errors.push(format!(
                                "{}: a blob at {}..{} was repacked away but is referenced",
                                pack_key(*kind, id),
                                start,
                                end
                            ));
                            break;
                        }
                    },
                    Ok(None) => break,
                    Err(e) => {
                        report.errors.push(e.to_string());
                        break;
                    }
                }
            }
            if let Some((to, size)) = last {
                now_in.insert(to, (*kind, size));
            }
        }
        if last.is_some() {
            moved.push(*id);
        }
    }
    report.moved_packs = moved.len() as u64;
    for id in &moved {
        packs.remove(id);
    }
    packs.extend(now_in);
    let referenced: HashSet<String> = packs.iter().map(|(id, (kind, _))| pack_key(*kind, id)).collect();
    report.unreferenced_packs = stored.keys().filter(|k| !referenced.contains(*k)).count() as u64;
    for (id, (kind, size)) in &packs {
        let key = pack_key(*kind, id);
        match stored.get(&key) {
            None => report
                .errors
                .push(format!("{key}: referenced but missing from the store")),
            Some(s) if *size != 0 && s != size => report
                .errors
                .push(format!("{key}: {s} bytes in the store, {size} recorded")),
            Some(_) => {}
        }
    }

    if read_data {
        let results: Vec<(u64, Vec<String>)> = stream::iter(
            packs
                .iter()
                .filter(|(id, (kind, _))| stored.contains_key(&pack_key(*kind, id))),
        )
        .map(|(id, (kind, _))| {
            let progress = progress.clone();
            let placed = placed.get(id).cloned().unwrap_or_default();
            async move {
                let key = pack_key(*kind, id);
                let data = match repo.store().get(&key).await {
                    Ok(g) => g.data,
                    Err(e) => return (0, vec![e.to_string()]),
                };
                Progress::add(&progress.transferred, data.len() as u64);
                let id = *id;
                let crypt = repo.crypt().clone();
                tokio::task::spawn_blocking(move || {
                    (data.len() as u64, verify_pack(&crypt, &key, &id, &data, &placed))
                })
                .await
                .unwrap_or_else(|e| (0, vec![format!("pack verifier panicked: {e}")]))
            }
        })
        .buffer_unordered(READ_DATA_CONCURRENCY)
        .collect()
        .await;
        for (n, errs) in results {
            report.bytes_read += n;
            report.errors.extend(errs);
        }
    }
    report.errors.sort();
    report.errors.dedup();
    Ok(report)
}

/// Checks one whole pack: its id, header, trailer, every blob, and that each place in `placed`
/// (where records say a referenced blob is) is an entry of the trailer.
fn verify_pack(
    crypt: &crate::keys::Crypt,
    key: &str,
    id: &PackId,
    data: &[u8],
    placed: &HashMap<cairn_formats::PackEntry, String>,
) -> Vec<String> {
    let mut errors = Vec::new();
    if PackId::of(data) != *id {
        errors.push(format!("{key}: content does not hash to the pack id"));
    }
    let trailer = match PackTrailer::decode_pack(crypt.keys(), data) {
        Ok(t) => t,
        Err(e) => {
            errors.push(crate::keys::sealed_error(key, e).to_string());
            return errors;
        }
    };
    let held: HashSet<&cairn_formats::PackEntry> = trailer.blobs.iter().collect();
    for (entry, by) in placed {
        if !held.contains(entry) {
            errors.push(format!(
                "{by}: its index record places blob {} in {key} at {}..{}, where the pack does not hold it \
                 (the record is damaged or lies; a restore of that snapshot fails)",
                entry.id.short(),
                entry.offset,
                entry.offset + u64::from(entry.stored_len)
            ));
        }
    }
    for b in &trailer.blobs {
        let r = b.range();
        let stored = &data[r.start as usize..r.end as usize];
        if let Err(e) = decode_blob(
            crypt,
            || format!("blob {} in {key}", b.id.short()),
            &b.id,
            stored,
            b.raw_len,
            b.codec,
        ) {
            errors.push(e.to_string());
        }
    }
    errors
}
