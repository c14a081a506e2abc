//! Tags: changing a snapshot's tags, as restic's `tag` does.
//!
//! A manifest is named by the hash of its bytes, so new tags make a new manifest: it is written
//! create-only (same time, host, trees and records), the head moves to it by compare-and-swap if
//! it named the old one, and the old manifest is deleted. The snapshot's id changes; a volume whose
//! marker names the old id is brought up to date by a full restore instead of a diff the next
//! time its init step runs. Deleting needs the GC (operator) role.

use bytes::Bytes;
use cairn_formats::{head_key, snapshot_key, snapshot_prefix, Head, SnapshotId};

use crate::repo::Repo;
use crate::store::{PutMode, StoreExt};
use crate::{Error, Result};

/// What to do to a snapshot's tags.
#[derive(Clone, Debug, Default)]
pub struct TagChange {
    /// Replace all tags with these (applied first).
    pub set: Option<Vec<String>>,
    /// Add these.
    pub add: Vec<String>,
    /// Remove these.
    pub remove: Vec<String>,
}

/// What `tag` did.
#[derive(Clone, Debug)]
pub struct TagReport {
    /// The snapshot before.
    pub from: SnapshotId,
    /// The snapshot now (the same id when the tags did not change).
    pub snapshot: SnapshotId,
    /// Its tags now.
    pub tags: Vec<String>,
    /// Whether the workspace's head moved to the new id.
    pub head_moved: bool,
}

/// Changes the tags of `snapshot` (an id prefix or `latest`) of `workspace`.
///
/// # Errors
/// [`Error::Invalid`] for an empty change or a tag with a comma; [`Error::Unknown`] for an unknown
/// snapshot; store errors (a refused delete leaves both manifests: run it again with the GC role).
pub async fn tag(
    repo: &Repo,
    workspace: &str,
    snapshot: Option<&str>,
    change: &TagChange,
) -> Result<TagReport> {
    if change.set.is_none() && change.add.is_empty() && change.remove.is_empty() {
        return Err(Error::Invalid(
            "nothing to change: give --set, --add or --remove".into(),
        ));
    }
    let all = change
        .set
        .iter()
        .flatten()
        .chain(&change.add)
        .chain(&change.remove);
    if let Some(t) = all.into_iter().find(|t| t.is_empty() || t.contains(',')) {
        return Err(Error::Invalid(format!(
            "tag {t:?}: tags are non-empty and hold no comma"
        )));
    }
    let (from, m) = repo.resolve(workspace, snapshot).await?;
    let mut tags = change.set.clone().unwrap_or_else(|| m.tags.clone());
    for t in &change.add {
        if !tags.contains(t) {
            tags.push(t.clone());
        }
    }
    tags.retain(|t| !change.remove.contains(t));
    if tags == m.tags {
        return Ok(TagReport {
            from,
            snapshot: from,
            tags,
            head_moved: false,
        });
    }
    let time = m.time;
    let manifest = cairn_formats::Manifest {
        tags: tags.clone(),
        ..m
    };
    let bytes = repo
        .crypt()
        .seal(&snapshot_prefix(Some(workspace)), manifest.encode());
    let id = SnapshotId::of(&bytes);
    repo.store()
        .put_immutable(&snapshot_key(workspace, &id), Bytes::from(bytes))
        .await?;
    // The head follows if it named the old snapshot; a backup that moved it meanwhile wins.
    let key = head_key(workspace);
    let mut head_moved = false;
    for _ in 0..8 {
        let Some((h, version)) = repo.head(workspace).await? else {
            break;
        };
        if h.snapshot != from {
            break;
        }
        let body = Bytes::from(repo.crypt().seal(&key, Head { snapshot: id, time }.encode()));
        match repo.store().put(&key, body, PutMode::Update(version)).await {
            Ok(_) => {
                head_moved = true;
                break;
            }
            Err(Error::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    repo.store().delete(&snapshot_key(workspace, &from)).await?;
    Ok(TagReport {
        from,
        snapshot: id,
        tags,
        head_moved,
    })
}
