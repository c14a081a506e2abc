//! Forks: a new workspace that starts from any snapshot, without copying data.
//!
//! The fork is one new manifest under the new workspace naming the same root tree, metadata and
//! index records as the source snapshot (so it locates the same packs), with `base` set to the
//! source and no parent, and the new workspace's head, created create-only. Three small writes
//! and one read, whatever the snapshot's size.

use bytes::Bytes;
use cairn_formats::{head_key, snapshot_key, validate_workspace, Head, Manifest, SnapshotId, Timestamp};

use crate::repo::Repo;
use crate::store::{PutMode, StoreExt};
use crate::{Error, Result};

/// What a fork made.
#[derive(Clone, Debug)]
pub struct ForkReport {
    /// The source snapshot.
    pub from: SnapshotId,
    /// The new workspace's first snapshot.
    pub snapshot: SnapshotId,
}

/// Creates workspace `to` from snapshot `snapshot` (an id prefix or `latest`) of workspace `from`.
///
/// # Errors
/// [`Error::Invalid`] for a bad name or when `to` already exists (nothing is changed);
/// [`Error::Unknown`] for an unknown source; store errors.
pub async fn fork(
    repo: &Repo,
    from: &str,
    snapshot: Option<&str>,
    to: &str,
    host: &str,
) -> Result<ForkReport> {
    validate_workspace(to).map_err(|e| Error::Invalid(e.to_string()))?;
    if repo.head(to).await?.is_some() {
        return Err(Error::Invalid(format!(
            "workspace {to:?} already exists; fork into a new name (or forget it first)"
        )));
    }
    let (source, m) = repo.resolve(from, snapshot).await?;
    let time = Timestamp::now();
    let manifest = Manifest {
        workspace: to.to_string(),
        time,
        host: host.to_string(),
        parent: None,
        base: Some(source),
        tags: vec![format!("fork:{from}@{}", source.to_hex())],
        ..m
    };
    let bytes = repo
        .crypt()
        .seal(&cairn_formats::snapshot_prefix(Some(to)), manifest.encode());
    let id = SnapshotId::of(&bytes);
    repo.store()
        .put_immutable(&snapshot_key(to, &id), Bytes::from(bytes))
        .await?;
    let head_at = head_key(to);
    let head = Bytes::from(repo.crypt().seal(&head_at, Head { snapshot: id, time }.encode()));
    match repo.store().put(&head_at, head, PutMode::Create).await {
        Ok(_) => Ok(ForkReport {
            from: source,
            snapshot: id,
        }),
        Err(Error::AlreadyExists { .. }) => Err(Error::Invalid(format!(
            "workspace {to:?} was created by someone else meanwhile; its head was left alone"
        ))),
        Err(e) => Err(e),
    }
}
