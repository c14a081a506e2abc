//! `drill`: restore a snapshot into a scratch directory and prove it matches, with timings.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_formats::{Manifest, SnapshotId};
use serde::Serialize;

use crate::progress::Progress;
use crate::repo::Repo;
use crate::restore::{restore_with_trees, RestoreOptions, RestoreReport};
use crate::tree::SnapshotTrees;
use crate::verify::verify_dir;
use crate::{Error, Result};

/// What a drill measured and found.
#[derive(Clone, Debug, Serialize)]
pub struct DrillReport {
    /// The snapshot drilled.
    pub snapshot: SnapshotId,
    /// The restore.
    pub restore: RestoreReport,
    /// Time spent verifying.
    pub verify_elapsed: Duration,
    /// Entries compared.
    pub entries: u64,
    /// Bytes re-read and hashed.
    pub verified_bytes: u64,
    /// Differences found (empty when the drill passed).
    pub mismatches: Vec<String>,
}

/// Restores `id` into a fresh directory under `scratch` (the system temp dir by default),
/// verifies every entry against the snapshot, and removes the directory.
///
/// # Errors
/// Restore failures; [`Error::Mismatch`] is not returned here: mismatches are in the report so
/// the caller can print them all.
pub async fn drill(
    repo: &Repo,
    id: SnapshotId,
    manifest: &Manifest,
    scratch: Option<PathBuf>,
    progress: Arc<Progress>,
) -> Result<DrillReport> {
    let base = scratch.unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).map_err(|e| Error::io(&base, e))?;
    let dir = tempfile::Builder::new()
        .prefix("cairn-drill-")
        .tempdir_in(&base)
        .map_err(|e| Error::io(&base, e))?;
    let target = dir.path().join("restore");
    let opts = RestoreOptions::new(&target);
    let trees = Arc::new(SnapshotTrees::load(repo, manifest).await?);
    let restored = restore_with_trees(repo, id, manifest, trees.clone(), &opts, progress.clone()).await?;
    let started = Instant::now();
    let m = manifest.clone();
    let t = target.clone();
    let p = progress.clone();
    let verified = tokio::task::spawn_blocking(move || verify_dir(&trees, &m, &t, None, &p))
        .await
        .map_err(|e| Error::Invalid(format!("verifier panicked: {e}")))??;
    // Read-only directories in the snapshot would stop the clean-up; open them up first.
    make_removable(&target);
    Ok(DrillReport {
        snapshot: id,
        restore: restored,
        verify_elapsed: started.elapsed(),
        entries: verified.entries,
        verified_bytes: verified.bytes,
        mismatches: verified.mismatches,
    })
}

fn make_removable(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700));
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(e.path());
                }
            }
        }
    }
}
