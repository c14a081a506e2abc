//! Whether a volume changed since its marker: a walk of `lstat`s by directory descriptor (see
//! the module docs of `volume`), no reads, no link followed, no other mount entered.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;
use serde::Serialize;

use super::dir::Dir;
use super::{is_volume_file, RestoreMarker};
use crate::error::IoContext;
use crate::Result;

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
/// [`crate::Error::Io`] if the root cannot be read (unreadable entries below it count as changed).
pub fn local_changes(target: &Path, marker: &RestoreMarker) -> Result<LocalChanges> {
    let Some(since) = marker.synced_ns.map(i128::from) else {
        return Ok(LocalChanges {
            changed: true,
            examples: vec!["(the marker does not say when the volume was last in sync)".into()],
        });
    };
    let root = Dir::open(target).at(target)?;
    let found = Found::default();
    let st = root.stat().at(target)?;
    let top_level_moved = match marker.root_mtime_ns {
        Some(m) => i128::from(m) != st.mtime_ns(),
        None => true,
    };
    if top_level_moved {
        found.add("(top-level entries added or removed)".into());
    }
    let names: Vec<OsString> = root
        .names()
        .at(target)?
        .into_iter()
        .filter(|n| !is_volume_file(n.as_bytes()))
        .collect();
    if marker.snapshot.is_none() && !names.is_empty() {
        found.add(names[0].to_string_lossy().into_owned());
    }
    let w = Walk {
        since,
        dev: st.dev,
        found: &found,
    };
    names
        .par_iter()
        .for_each(|n| w.entry(&root, n, &PathBuf::from(n), 0));
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

struct Walk<'a> {
    since: i128,
    dev: u64,
    found: &'a Found,
}

impl Walk<'_> {
    fn entry(&self, parent: &Dir, name: &OsString, rel: &Path, depth: usize) {
        if self.found.enough.load(Ordering::Relaxed) {
            return;
        }
        let st = match parent.stat_at(name) {
            Ok(st) => st,
            Err(_) => return self.found.add(format!("{} (unreadable)", rel.display())),
        };
        if st.ctime_ns() >= self.since {
            self.found.add(rel.display().to_string());
        }
        if !st.is_dir() {
            return;
        }
        // Backups leave out what is mounted inside the volume and what is nested deeper than
        // they walk; so does this walk.
        if st.dev != self.dev || depth >= crate::backup::MAX_DEPTH {
            return;
        }
        let sub = match parent.open_dir(Path::new(name)) {
            Ok(d) => d,
            Err(e) if super::dir::is_mount(&e) => return,
            Err(_) => return self.found.add(format!("{} (unreadable)", rel.display())),
        };
        let Ok(names) = sub.names() else {
            return self.found.add(format!("{} (unreadable)", rel.display()));
        };
        names
            .par_iter()
            .for_each(|n| self.entry(&sub, n, &rel.join(n), depth + 1));
    }
}
