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
//!
//! The agent writes this volume too, so everything here goes through the root's descriptor
//! ([`dir::Dir`]): the marker and `.cairn-restoring` are opened with `O_NOFOLLOW` (a symlink or
//! directory planted in their place is removed, never written through), the staging directory is
//! created and removed by descriptor, and the walks never follow a link or enter another mount.

mod changes;
pub mod dir;

pub use changes::{local_changes, LocalChanges};
use dir::Dir;

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use cairn_formats::SnapshotId;
use rustix::fs::OFlags;
use serde::{Deserialize, Serialize};

use crate::error::IoContext;
use crate::meta::now_ns;
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
    read_marker_in(&Dir::open(target).ok()?)
}

/// [`read_marker`] of an open volume root.
pub(crate) fn read_marker_in(root: &Dir) -> Option<RestoreMarker> {
    if root.stat_at(OsStr::new(RESTORING_MARKER)).is_ok() {
        return None;
    }
    let (mut f, st) = root
        .open_file_beneath(Path::new(RESTORE_MARKER), OFlags::RDONLY, None)
        .ok()?;
    // A marker is a small JSON document; anything larger is not one of ours.
    if st.size > MARKER_MAX {
        return None;
    }
    let mut bytes = Vec::new();
    Read::by_ref(&mut f)
        .take(MARKER_MAX)
        .read_to_end(&mut bytes)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The largest marker read (they are a few hundred bytes).
const MARKER_MAX: u64 = 64 << 10;

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
    let root = match Dir::open(target) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(VolumeState::Empty),
        Err(e) => return Err(Error::io(target, e)),
    };
    if root.stat_at(OsStr::new(RESTORING_MARKER)).is_ok() {
        return Ok(VolumeState::Restoring);
    }
    if let Some(m) = read_marker_in(&root) {
        return Ok(VolumeState::Marked(m));
    }
    let names = root.names().at(target)?;
    if names.iter().any(|n| !is_volume_file(n.as_bytes())) {
        return Ok(VolumeState::Unmarked);
    }
    Ok(VolumeState::Empty)
}

/// A nanosecond time as the marker stores it (`None` past the year 2262: "unknown", which is safe).
pub(crate) fn marker_ns(t: i128) -> Option<i64> {
    i64::try_from(t).ok()
}

/// Records in `m` that the volume is in sync from `synced` on, with its root's mtime as it is now.
pub(crate) fn mark_synced(root: &Dir, target: &Path, m: &mut RestoreMarker, synced: i128) -> Result<()> {
    let st = root.stat().at(target)?;
    m.root_mtime_ns = marker_ns(st.mtime_ns());
    m.synced_ns = marker_ns(synced);
    Ok(())
}

/// Marks `target` as the volume of `workspace` that starts empty, in sync from now on.
///
/// # Errors
/// [`Error::Io`] naming the marker.
pub fn mark_empty(target: &Path, workspace: &str) -> Result<()> {
    let root = Dir::open(target).at(target)?;
    let mut m = RestoreMarker {
        workspace: workspace.to_string(),
        snapshot: None,
        snapshot_time: None,
        from: None,
        restored_at: cairn_formats::Timestamp::now().to_rfc3339(),
        synced_ns: None,
        root_mtime_ns: None,
    };
    write_marker(&root, target, &m)?;
    mark_synced(&root, target, &mut m, now_ns())?;
    rewrite_marker(&root, target, &m)
}

/// Writes `marker` on a volume with content of unknown origin, so the backup that follows can
/// record what it sealed (a marker without `synced_ns` says nothing is known to be in sync).
///
/// # Errors
/// [`Error::Io`] naming the marker.
pub fn adopt_volume(target: &Path, marker: &RestoreMarker) -> Result<()> {
    write_marker(&Dir::open(target).at(target)?, target, marker)
}

/// Writes `marker` as a new file (temp file, fsync, rename, directory fsync), all by the root's
/// descriptor.
pub(crate) fn write_marker(root: &Dir, target: &Path, marker: &RestoreMarker) -> Result<()> {
    let path = target.join(RESTORE_MARKER);
    let body = serde_json::to_vec_pretty(marker).map_err(|e| Error::io(&path, e.into()))?;
    let tmp = OsString::from(format!(".cairn-marker-{:016x}", rand::random::<u64>()));
    let mut f = root.create_file(&tmp, 0o644).at(target.join(&tmp))?;
    let written = f.write_all(&body).and_then(|()| f.sync_all());
    if let Err(e) = written.and_then(|()| root.rename(&tmp, root, OsStr::new(RESTORE_MARKER))) {
        let _ = root.remove_file(&tmp);
        return Err(Error::io(&path, e));
    }
    root.sync().at(target)
}

/// Rewrites the existing marker in place, so the root directory's times do not move. A write cut
/// short leaves a marker that does not parse, which reads as "changes unknown": safe.
pub(crate) fn rewrite_marker(root: &Dir, target: &Path, marker: &RestoreMarker) -> Result<()> {
    rewrite_marker_in(root, marker).at(target.join(RESTORE_MARKER))
}

/// [`rewrite_marker`] without a path for messages (the backup's, which only warns).
pub(crate) fn rewrite_marker_in(root: &Dir, marker: &RestoreMarker) -> std::io::Result<()> {
    let mut body = serde_json::to_vec_pretty(marker)?;
    body.push(b'\n');
    let (mut f, _) = root.open_file_beneath(Path::new(RESTORE_MARKER), OFlags::WRONLY, None)?;
    f.write_all(&body)?;
    f.set_len(body.len() as u64)?;
    f.sync_data()
}

/// Writes `.cairn-restoring` (before a restore changes anything). Whatever is in its place (a
/// symlink, a directory) is removed first, never written through.
pub(crate) fn begin_restore(root: &Dir, target: &Path, what: &str) -> Result<()> {
    let name = OsStr::new(RESTORING_MARKER);
    let path = target.join(RESTORING_MARKER);
    root.remove(name).at(&path)?;
    let mut f = root.create_file(name, 0o644).at(&path)?;
    f.write_all(format!("{what}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .at(&path)?;
    root.sync().at(target)
}

/// Removes `.cairn-restoring` and the staging directory (after the marker is written).
pub(crate) fn end_restore(root: &Dir, target: &Path) -> Result<()> {
    remove_staging(root, target)?;
    root.remove(OsStr::new(RESTORING_MARKER))
        .at(target.join(RESTORING_MARKER))?;
    root.sync().at(target)
}

/// Removes a staging directory an earlier restore left.
pub(crate) fn remove_staging(root: &Dir, target: &Path) -> Result<()> {
    root.remove(OsStr::new(STAGING_DIR)).at(target.join(STAGING_DIR))
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
