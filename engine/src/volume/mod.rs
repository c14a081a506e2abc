//! The workspace volume as an init container finds it, and the marker that says what it holds.
//!
//! A restored volume carries `.cairn-snapshot` at its root: the workspace, the snapshot whose
//! content it holds, and `synced_ns`, the instant (by the clock the file system stamps ctimes with)
//! after which every change is local. A restore writes it last; a backup of the volume rewrites it
//! in place (so the root directory's own times stay as they were) to name the snapshot it sealed.
//!
//! Whether anything changed since is a stat walk, no reads: every create, write, rename, chmod,
//! link or unlink sets the ctime of the inode it touches (or of the directory it touches) to the
//! current time, and no process can set a ctime back. So an entry whose ctime is at or after
//! `synced_ns` is a local change, and so is a top-level entry added or removed (the root's mtime,
//! recorded in the marker, moves). The root's own ctime is not used: writing the marker moves it.
//!
//! An unfinished restore leaves `.cairn-restoring` (written before anything else, removed after the
//! marker), so a volume is never mistaken for one with content of its own.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use cairn_formats::SnapshotId;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::IoContext;
use crate::meta::{now_ns, ns};
use crate::{Error, Result, RESTORE_MARKER};

/// Written at the root before a restore touches anything, removed after its marker.
pub const RESTORING_MARKER: &str = ".cairn-restoring";
/// Where an update restore keeps replaced files whose chunks it reuses; removed at the end.
pub const STAGING_DIR: &str = ".cairn-staging";

/// Whether a top-level name belongs to Cairn (backups and comparisons leave these out).
pub fn is_volume_file(name: &[u8]) -> bool {
    name == RESTORE_MARKER.as_bytes() || name == RESTORING_MARKER.as_bytes() || name == STAGING_DIR.as_bytes()
}

/// The marker at the root of a workspace volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreMarker {
    /// The workspace the volume belongs to.
    pub workspace: String,
    /// The snapshot whose content the volume held at `synced_ns`; `None` for a workspace that
    /// started empty and has not been backed up yet. Hex in the JSON.
    #[serde(with = "hex_id")]
    pub snapshot: Option<SnapshotId>,
    /// That snapshot's time.
    #[serde(default)]
    pub snapshot_time: Option<String>,
    /// `WORKSPACE@SNAPSHOT` when the content came from another workspace (a base).
    #[serde(default)]
    pub from: Option<String>,
    /// When the marker was written.
    pub restored_at: String,
    /// Nanoseconds since the epoch: changes at or after this instant are local. `None` (a marker
    /// cut short, or from an older build) means the volume's changes are unknown.
    #[serde(default)]
    pub synced_ns: Option<i64>,
    /// The root directory's mtime as the snapshot has it (entries added or removed at the top
    /// level move it).
    #[serde(default)]
    pub root_mtime_ns: Option<i64>,
}

/// Reads the completion marker of `target`, if there is a valid one and no restore is unfinished.
pub fn read_marker(target: &Path) -> Option<RestoreMarker> {
    if target.join(RESTORING_MARKER).exists() {
        return None;
    }
    let bytes = fs::read(target.join(RESTORE_MARKER)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// What a workspace volume holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeState {
    /// Missing or empty (Cairn's own files aside).
    Empty,
    /// A restore was started and did not finish: the content is partial and nobody used it.
    Restoring,
    /// A completed restore or a backed-up volume.
    Marked(RestoreMarker),
    /// Content without a (readable) marker: provenance unknown.
    Unmarked,
}

/// Looks at `target`.
///
/// # Errors
/// [`Error::Io`] if the directory cannot be read.
pub fn inspect(target: &Path) -> Result<VolumeState> {
    let rd = match fs::read_dir(target) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(VolumeState::Empty),
        Err(e) => return Err(Error::io(target, e)),
    };
    if target.join(RESTORING_MARKER).exists() {
        return Ok(VolumeState::Restoring);
    }
    if let Some(m) = read_marker(target) {
        return Ok(VolumeState::Marked(m));
    }
    for ent in rd {
        let ent = ent.at(target)?;
        if !is_volume_file(ent.file_name().as_bytes()) {
            return Ok(VolumeState::Unmarked);
        }
    }
    Ok(VolumeState::Empty)
}

/// Local changes found on a volume.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LocalChanges {
    /// Whether anything changed since the marker (or whether that cannot be known).
    pub changed: bool,
    /// Up to a few changed paths, relative to the volume root, for the report.
    pub examples: Vec<String>,
}

/// How many changed paths a report names.
const EXAMPLES: usize = 5;

/// Finds changes made on `target` after `marker` was written (see the module docs). Stops early
/// once a few are found.
///
/// # Errors
/// [`Error::Io`] if the root cannot be read (unreadable entries below it count as changed).
pub fn local_changes(target: &Path, marker: &RestoreMarker) -> Result<LocalChanges> {
    let Some(since) = marker.synced_ns.map(i128::from) else {
        return Ok(LocalChanges {
            changed: true,
            examples: vec!["(the marker does not say when the volume was last in sync)".into()],
        });
    };
    let found = Found::default();
    let root = fs::symlink_metadata(target).at(target)?;
    let top_level_moved = match marker.root_mtime_ns {
        Some(m) => i128::from(m) != ns(root.mtime(), root.mtime_nsec()),
        None => true,
    };
    if top_level_moved {
        found.add("(top-level entries added or removed)".into());
    }
    let names: Vec<_> = fs::read_dir(target)
        .at(target)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| !is_volume_file(n.as_bytes()))
        .collect();
    if marker.snapshot.is_none() && !names.is_empty() {
        found.add(names[0].to_string_lossy().into_owned());
    }
    names
        .par_iter()
        .for_each(|n| walk(&target.join(n), &PathBuf::from(n), since, &found));
    let examples = found.examples.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok(LocalChanges {
        changed: !examples.is_empty(),
        examples,
    })
}

#[derive(Default)]
struct Found {
    enough: AtomicBool,
    examples: Mutex<Vec<String>>,
}

impl Found {
    fn add(&self, what: String) {
        let mut v = self.examples.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() < EXAMPLES {
            v.push(what);
        }
        if v.len() >= EXAMPLES {
            self.enough.store(true, Ordering::Relaxed);
        }
    }
}

fn walk(path: &Path, rel: &Path, since: i128, found: &Found) {
    if found.enough.load(Ordering::Relaxed) {
        return;
    }
    let md = match fs::symlink_metadata(path) {
        Ok(md) => md,
        Err(_) => return found.add(format!("{} (unreadable)", rel.display())),
    };
    if ns(md.ctime(), md.ctime_nsec()) >= since {
        found.add(rel.display().to_string());
    }
    if md.is_dir() {
        let Ok(rd) = fs::read_dir(path) else {
            return found.add(format!("{} (unreadable)", rel.display()));
        };
        let names: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        names
            .par_iter()
            .for_each(|n| walk(&path.join(n), &rel.join(n), since, found));
    }
}

/// A nanosecond time as the marker stores it (`None` past the year 2262: "unknown", which is safe).
pub(crate) fn marker_ns(t: i128) -> Option<i64> {
    i64::try_from(t).ok()
}

/// Records in `m` that the volume at `target` is in sync from now on, with its root's mtime as it
/// is now.
pub(crate) fn mark_synced(target: &Path, m: &mut RestoreMarker) -> Result<()> {
    let md = fs::symlink_metadata(target).at(target)?;
    m.root_mtime_ns = marker_ns(ns(md.mtime(), md.mtime_nsec()));
    m.synced_ns = marker_ns(now_ns());
    Ok(())
}

/// Marks `target` as the volume of `workspace` that starts empty, in sync from now on.
///
/// # Errors
/// [`Error::Io`] naming the marker.
pub fn mark_empty(target: &Path, workspace: &str) -> Result<()> {
    let mut m = RestoreMarker {
        workspace: workspace.to_string(),
        snapshot: None,
        snapshot_time: None,
        from: None,
        restored_at: cairn_formats::Timestamp::now().to_rfc3339(),
        synced_ns: None,
        root_mtime_ns: None,
    };
    write_marker(target, &m)?;
    mark_synced(target, &mut m)?;
    rewrite_marker(target, &m)
}

/// Writes `marker` on a volume with content of unknown origin, so the backup that follows can
/// record what it sealed (a marker without `synced_ns` says nothing is known to be in sync).
///
/// # Errors
/// [`Error::Io`] naming the marker.
pub fn adopt_volume(target: &Path, marker: &RestoreMarker) -> Result<()> {
    write_marker(target, marker)
}

/// Writes `marker` as a new file (temp file, fsync, rename, directory fsync).
pub(crate) fn write_marker(target: &Path, marker: &RestoreMarker) -> Result<()> {
    let path = target.join(RESTORE_MARKER);
    let mut tmp = tempfile::Builder::new()
        .prefix(".cairn-marker-")
        .tempfile_in(target)
        .at(target)?;
    serde_json::to_writer_pretty(&mut tmp, marker).map_err(|e| Error::io(&path, e.into()))?;
    tmp.as_file().sync_all().at(&path)?;
    tmp.persist(&path).map_err(|e| Error::io(&path, e.error))?;
    File::open(target).and_then(|d| d.sync_all()).at(target)
}

/// Rewrites the existing marker in place, so the root directory's times do not move. A write cut
/// short leaves a marker that does not parse, which reads as "changes unknown": safe.
pub(crate) fn rewrite_marker(target: &Path, marker: &RestoreMarker) -> Result<()> {
    let path = target.join(RESTORE_MARKER);
    let mut body = serde_json::to_vec_pretty(marker).map_err(|e| Error::io(&path, e.into()))?;
    body.push(b'\n');
    let mut f = OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)
        .at(&path)?;
    f.write_all(&body).at(&path)?;
    f.set_len(body.len() as u64).at(&path)?;
    f.sync_data().at(&path)
}

/// Writes `.cairn-restoring` (before a restore changes anything).
pub(crate) fn begin_restore(target: &Path, what: &str) -> Result<()> {
    let path = target.join(RESTORING_MARKER);
    fs::write(&path, format!("{what}\n")).at(&path)?;
    File::open(&path).and_then(|f| f.sync_all()).at(&path)?;
    File::open(target).and_then(|d| d.sync_all()).at(target)
}

/// Removes `.cairn-restoring` and the staging directory (after the marker is written).
pub(crate) fn end_restore(target: &Path) -> Result<()> {
    remove_staging(target)?;
    let path = target.join(RESTORING_MARKER);
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&path, e)),
    }
    File::open(target).and_then(|d| d.sync_all()).at(target)
}

/// Removes a staging directory an earlier restore left.
pub(crate) fn remove_staging(target: &Path) -> Result<()> {
    crate::restore::clear(&target.join(STAGING_DIR))
}

/// Snapshot ids as hex strings in the marker's JSON.
mod hex_id {
    use cairn_formats::SnapshotId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &Option<SnapshotId>, s: S) -> Result<S::Ok, S::Error> {
        match id {
            Some(id) => s.serialize_some(&id.to_hex()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SnapshotId>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|h| h.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}
