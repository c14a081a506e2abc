//! The restore plan: walk the snapshot's trees (or the difference between two snapshots' trees),
//! create directories, symlinks and special files on the way, and list which blob goes to which
//! file offset. Every entry is created relative to its parent's descriptor (`volume/dir.rs`):
//! whatever was planted where an entry goes (a symlink, a file where a directory belongs) is
//! removed, never followed.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use cairn_formats::{BlobId, Entry, Extent, Meta, Node, PackEntry, PackId, PackKind};
use rustix::fs::FileType;

use crate::tree::SnapshotTrees;
use crate::volume::dir::Dir;
use crate::volume::{self};
use crate::{Error, Result};

pub(super) struct FilePlan {
    /// Relative to the target.
    pub rel: PathBuf,
    pub meta: Meta,
    pub size: u64,
    /// Another file of the same link group created first; this one becomes a hard link to it.
    pub link_to: Option<usize>,
}

pub(super) struct Need {
    pub entry: PackEntry,
    pub file: usize,
    pub offset: u64,
}

/// A chunk to copy from a file already on disk (moved into the staging directory).
pub(super) struct LocalNeed {
    pub id: BlobId,
    pub from: u64,
    pub len: u32,
    pub file: usize,
    pub offset: u64,
}

#[derive(Default)]
pub(super) struct Plan {
    /// Directories (relative), parents before children.
    pub dirs: Vec<(PathBuf, Meta)>,
    pub files: Vec<FilePlan>,
    /// Symlinks and special files, with their type.
    pub others: Vec<(PathBuf, Meta, FileType)>,
    pub needs: HashMap<PackId, Vec<Need>>,
    /// Staged files (names in the staging directory) and the chunks copied from each.
    pub local: Vec<(OsString, Vec<LocalNeed>)>,
    pub removed: u64,
}

/// The parent directory and name of a relative path.
pub(super) fn split(rel: &Path) -> (&Path, &OsStr) {
    (
        rel.parent().unwrap_or(Path::new("")),
        rel.file_name().expect("invariant: planned paths name an entry"),
    )
}

/// Opens the parent directory of `rel` below `root` (the root itself for a top-level entry).
pub(super) fn open_parent(root: &Dir, rel: &Path) -> std::io::Result<Option<Dir>> {
    let (parent, _) = split(rel);
    if parent.as_os_str().is_empty() {
        Ok(None)
    } else {
        root.open_dir(parent).map(Some)
    }
}

/// Lays out entries: creates directories, links and special files, and lists file content.
pub(super) struct Planner<'a> {
    trees: &'a SnapshotTrees,
    root: &'a Dir,
    target: &'a Path,
    pub plan: Plan,
    groups: HashMap<u64, usize>,
    exact: bool,
    /// Chunks of staged files (update restores): id -> (staged file, offset, length).
    sources: Option<HashMap<BlobId, (usize, u64, u32)>>,
    /// Open directories on the way to the entry being planned (a walk visits parents first, so
    /// this is the current path; bounded by its depth).
    open: Vec<(PathBuf, Dir)>,
}

impl<'a> Planner<'a> {
    pub fn new(trees: &'a SnapshotTrees, root: &'a Dir, target: &'a Path, exact: bool) -> Self {
        Planner {
            trees,
            root,
            target,
            plan: Plan::default(),
            groups: HashMap::new(),
            exact,
            sources: None,
            open: Vec::new(),
        }
    }

    fn io(&self, rel: &Path) -> impl FnOnce(std::io::Error) -> Error {
        let path = self.target.join(rel);
        move |e| Error::io(path, e)
    }

    /// The open directory `rel` (the root for ""), from the stack of open directories or opened
    /// beneath the root.
    fn dir(&mut self, rel: &Path) -> Result<&Dir> {
        if rel.as_os_str().is_empty() {
            return Ok(self.root);
        }
        while let Some((top, _)) = self.open.last() {
            if rel.starts_with(top) {
                break;
            }
            self.open.pop();
        }
        if self.open.last().is_none_or(|(top, _)| top != rel) {
            let d = self.root.open_dir(rel).map_err(self.io(rel))?;
            self.open.push((rel.to_path_buf(), d));
        }
        Ok(&self.open.last().expect("invariant: just pushed or matched").1)
    }

    /// Plans every entry below the directory `dir` (whose tree is `id`), parents first.
    pub fn subtree(&mut self, dir: &Path, id: &BlobId) -> Result<()> {
        let trees = self.trees;
        trees.walk(id, &mut |rel, e| self.entry(dir.join(OsStr::from_bytes(rel)), e))
    }

    /// Removes whatever is in the directory `rel` that the tree `id` does not list (at the root,
    /// Cairn's own files stay).
    pub fn prune(&mut self, rel: &Path, id: &BlobId) -> Result<()> {
        let tree = self.trees.tree(id)?;
        let keep: HashSet<&[u8]> = tree.entries.iter().map(|e| e.name.as_slice()).collect();
        let is_root = rel.as_os_str().is_empty();
        let base = self.target.join(rel);
        let dir = self.dir(rel)?;
        let names = dir.names().map_err(|e| Error::io(&base, e))?;
        let mut removed = 0;
        for name in names {
            let n = name.as_bytes();
            if !(keep.contains(n) || (is_root && volume::is_volume_file(n))) {
                dir.remove(&name).map_err(|e| Error::io(base.join(&name), e))?;
                removed += 1;
            }
        }
        self.plan.removed += removed;
        Ok(())
    }

    pub fn entry(&mut self, rel: PathBuf, e: &Entry) -> Result<()> {
        let (parent, name) = split(&rel);
        let (parent, name) = (parent.to_path_buf(), name.to_os_string());
        let io = self.io(&rel);
        match &e.node {
            Node::Dir { tree } => {
                let (d, existed) = self.dir(&parent)?.ensure_dir(&name).map_err(io)?;
                self.open.push((rel.clone(), d));
                if existed && self.exact {
                    self.prune(&rel, tree)?;
                }
                self.plan.dirs.push((rel, e.meta.clone()));
            }
            Node::File {
                size,
                extents,
                link_group,
            } => {
                let idx = self.plan.files.len();
                let link_to = match link_group {
                    Some(g) => match self.groups.get(g) {
                        Some(first) => Some(*first),
                        None => {
                            self.groups.insert(*g, idx);
                            None
                        }
                    },
                    None => None,
                };
                if link_to.is_none() {
                    self.plan_content(idx, extents)?;
                }
                self.plan.files.push(FilePlan {
                    rel,
                    meta: e.meta.clone(),
                    size: *size,
                    link_to,
                });
            }
            Node::Symlink { target: to } => {
                let dir = self.dir(&parent)?;
                dir.remove(&name)
                    .and_then(|()| dir.symlink(to, &name))
                    .map_err(io)?;
                self.plan.others.push((rel, e.meta.clone(), FileType::Symlink));
            }
            Node::Fifo | Node::CharDevice { .. } | Node::BlockDevice { .. } => {
                let (ft, dev) = match e.node {
                    Node::Fifo => (FileType::Fifo, 0),
                    Node::CharDevice { rdev } => (FileType::CharacterDevice, rdev),
                    Node::BlockDevice { rdev } => (FileType::BlockDevice, rdev),
                    _ => unreachable!("matched above"),
                };
                let dir = self.dir(&parent)?;
                dir.remove(&name)
                    .and_then(|()| dir.mknod(&name, ft, dev))
                    .map_err(io)?;
                self.plan.others.push((rel, e.meta.clone(), ft));
            }
        }
        Ok(())
    }

    fn plan_content(&mut self, idx: usize, extents: &[Extent]) -> Result<()> {
        let mut offset = 0u64;
        for x in extents {
            if let Extent::Chunk { id, len: want } = x {
                // A staged copy is used only if its extent agrees on the length (else fetch, which
                // checks the blob's length against the tree).
                let staged = self
                    .sources
                    .as_ref()
                    .and_then(|s| s.get(id))
                    .filter(|(_, _, len)| len == want);
                if let Some(&(src, from, len)) = staged {
                    self.plan.local[src].1.push(LocalNeed {
                        id: *id,
                        from,
                        len,
                        file: idx,
                        offset,
                    });
                } else {
                    let loc = self.trees.locations().get(id)?;
                    if loc.kind != PackKind::Data {
                        return Err(Error::Corrupt {
                            object: format!("blob {id}"),
                            detail: "file content located in a metadata pack".into(),
                        });
                    }
                    if loc.entry.raw_len != *want {
                        return Err(Error::Corrupt {
                            object: format!("blob {id}"),
                            detail: format!(
                                "the tree gives it {want} bytes, the index {}: the snapshot's trees and index disagree",
                                loc.entry.raw_len
                            ),
                        });
                    }
                    self.plan.needs.entry(loc.pack).or_default().push(Need {
                        entry: loc.entry,
                        file: idx,
                        offset,
                    });
                }
            }
            offset += x.len();
        }
        Ok(())
    }
}

/// Builds the plan of a whole snapshot, creating directories, links and special files on the way.
pub(super) fn plan_full(
    trees: &SnapshotTrees,
    root_id: &BlobId,
    root: &Dir,
    target: &Path,
    exact: bool,
) -> Result<Plan> {
    let mut p = Planner::new(trees, root, target, exact);
    if exact {
        p.prune(Path::new(""), root_id)?;
    }
    p.subtree(Path::new(""), root_id)?;
    Ok(p.plan)
}

/// An entry a restore of some paths restores, with the directories on its way from the root.
pub(super) struct Included {
    way: Vec<Entry>,
    entry: Entry,
}

/// The entries of the snapshot at `includes` (normalized relative paths: components joined by
/// `/`), in order, each with the directory entries on its way; the includes themselves reduced to
/// the outermost (an include below another adds nothing).
///
/// # Errors
/// [`Error::Invalid`] naming the first path the snapshot does not hold (or holds below something
/// that is not a directory); tree read errors.
pub(super) fn resolve_includes(
    trees: &SnapshotTrees,
    root_id: &BlobId,
    includes: &[Vec<u8>],
) -> Result<Vec<Included>> {
    let mut sorted: Vec<&Vec<u8>> = includes.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut outer: Vec<&Vec<u8>> = Vec::new();
    for inc in sorted {
        let below = outer
            .iter()
            .any(|o| o.is_empty() || (inc.starts_with(o) && inc.get(o.len()) == Some(&b'/')));
        if !below {
            outer.push(inc);
        }
    }
    let missing = |inc: &[u8], why: &str| {
        Error::Invalid(format!(
            "{}: {why} in this snapshot (`initctl ls` shows what it holds)",
            String::from_utf8_lossy(inc)
        ))
    };
    let mut out = Vec::new();
    for inc in outer {
        let mut way = Vec::new();
        let mut tree = *root_id;
        let parts: Vec<&[u8]> = inc.split(|b| *b == b'/').collect();
        for (i, part) in parts.iter().enumerate() {
            let e = trees
                .tree(&tree)?
                .entries
                .into_iter()
                .find(|e| e.name == *part)
                .ok_or_else(|| missing(inc, "no such file or directory"))?;
            if i + 1 == parts.len() {
                out.push(Included {
                    way: std::mem::take(&mut way),
                    entry: e,
                });
                break;
            }
            match &e.node {
                Node::Dir { tree: t } => tree = *t,
                _ => return Err(missing(inc, "a component on the way is not a directory")),
            }
            way.push(e);
        }
    }
    Ok(out)
}

/// Builds the plan of the entries `resolve_includes` found and everything below them. A
/// directory on the way is created where missing (with the snapshot's metadata) and left as it
/// is where it exists: restoring one file into a workspace does not touch its parents.
pub(super) fn plan_include(
    trees: &SnapshotTrees,
    root: &Dir,
    target: &Path,
    includes: &[Included],
) -> Result<Plan> {
    let mut p = Planner::new(trees, root, target, false);
    let mut made: HashSet<PathBuf> = HashSet::new();
    for Included { way, entry: e } in includes {
        let mut rel = PathBuf::new();
        for d in way {
            let here = rel.join(OsStr::from_bytes(&d.name));
            if made.insert(here.clone()) {
                let io = p.io(&here);
                let (dir, existed) = p.dir(&rel)?.ensure_dir(OsStr::from_bytes(&d.name)).map_err(io)?;
                p.open.push((here.clone(), dir));
                if !existed {
                    p.plan.dirs.push((here.clone(), d.meta.clone()));
                }
            }
            rel = here;
        }
        let here = rel.join(OsStr::from_bytes(&e.name));
        p.entry(here.clone(), e)?;
        if let Node::Dir { tree } = &e.node {
            p.subtree(&here, tree)?;
        }
    }
    Ok(p.plan)
}

/// Builds the plan that turns a target holding `old_root` (unchanged) into `root_id`: identical
/// subtrees are skipped without a look; changed entries are removed and re-created, and the files
/// they replace are staged so their chunks are copied rather than fetched. `None` if the
/// snapshots differ in hard-linked files, which only a full restore lays out right.
pub(super) fn plan_update(
    trees: &SnapshotTrees,
    old: &SnapshotTrees,
    root_id: &BlobId,
    old_root: &BlobId,
    root: &Dir,
    target: &Path,
) -> Result<Option<Plan>> {
    let mut diff = Diff::default();
    diff.dir(trees, old, Path::new(""), root_id, old_root)?;
    if diff.links {
        return Ok(None);
    }
    let mut p = Planner::new(trees, root, target, false);
    // Stage what goes away (files by rename, for their chunks), then create what is new.
    let mut staging: Option<Dir> = None;
    let mut sources: HashMap<BlobId, (usize, u64, u32)> = HashMap::new();
    for (rel, entry) in &diff.removes {
        p.plan.removed += 1;
        let mut files = Vec::new();
        match &entry.node {
            Node::File { extents, .. } => files.push((rel.clone(), extents.clone())),
            Node::Dir { tree } => old.walk(tree, &mut |sub, e| {
                if let Node::File { extents, .. } = &e.node {
                    files.push((rel.join(OsStr::from_bytes(sub)), extents.clone()));
                }
                Ok(())
            })?,
            _ => {}
        }
        for (from, extents) in files {
            if staging.is_none() {
                let (d, _) = root
                    .ensure_dir(OsStr::new(volume::STAGING_DIR))
                    .map_err(|e| Error::io(target.join(volume::STAGING_DIR), e))?;
                staging = Some(d);
            }
            let staged = OsString::from(p.plan.local.len().to_string());
            let (parent, name) = split(&from);
            let moved = match p.dir(parent) {
                Ok(d) => d
                    .rename(name, staging.as_ref().expect("invariant: created above"), &staged)
                    .is_ok(),
                Err(_) => false,
            };
            if !moved {
                continue; // gone or unreachable: fetched instead
            }
            let mut offset = 0u64;
            for x in &extents {
                if let Extent::Chunk { id, len } = x {
                    sources.entry(*id).or_insert((p.plan.local.len(), offset, *len));
                }
                offset += x.len();
            }
            p.plan.local.push((staged, Vec::new()));
        }
        let (parent, name) = split(rel);
        let io = p.io(rel);
        p.dir(parent)?.remove(name).map_err(io)?;
    }
    p.sources = Some(sources);
    for (rel, entry) in &diff.adds {
        p.entry(rel.clone(), entry)?;
        if let Node::Dir { tree } = &entry.node {
            p.subtree(rel, tree)?;
        }
    }
    p.plan.others.extend(diff.meta_only);
    // Changed directories were recorded parents first, as the full walk does.
    p.plan.dirs.extend(diff.dirs);
    Ok(Some(p.plan))
}

/// The differences between two snapshots' trees, found without touching the disk.
#[derive(Default)]
struct Diff {
    removes: Vec<(PathBuf, Entry)>,
    adds: Vec<(PathBuf, Entry)>,
    meta_only: Vec<(PathBuf, Meta, FileType)>,
    dirs: Vec<(PathBuf, Meta)>,
    /// A hard-linked file is among the changes.
    links: bool,
}

impl Diff {
    fn dir(
        &mut self,
        new: &SnapshotTrees,
        old: &SnapshotTrees,
        path: &Path,
        id: &BlobId,
        old_id: &BlobId,
    ) -> Result<()> {
        if id == old_id {
            return Ok(());
        }
        let (a, b) = (new.tree(id)?, old.tree(old_id)?);
        let (mut i, mut j) = (0, 0);
        while i < a.entries.len() || j < b.entries.len() {
            let order = match (a.entries.get(i), b.entries.get(j)) {
                (Some(x), Some(y)) => x.name.cmp(&y.name),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => {
                    let e = &a.entries[i];
                    self.add(new, path.join(OsStr::from_bytes(&e.name)), e)?;
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    let e = &b.entries[j];
                    self.removes
                        .push((path.join(OsStr::from_bytes(&e.name)), e.clone()));
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    let (e, o) = (&a.entries[i], &b.entries[j]);
                    let child = path.join(OsStr::from_bytes(&e.name));
                    match (&e.node, &o.node) {
                        (Node::Dir { tree }, Node::Dir { tree: old_tree }) => {
                            if tree != old_tree || e.meta != o.meta {
                                self.dirs.push((child.clone(), e.meta.clone()));
                            }
                            self.dir(new, old, &child, tree, old_tree)?;
                        }
                        _ if same_node(&e.node, &o.node) => {
                            if e.meta != o.meta {
                                let kind = match e.node {
                                    Node::File { .. } => FileType::RegularFile,
                                    Node::Symlink { .. } => FileType::Symlink,
                                    Node::Fifo => FileType::Fifo,
                                    Node::CharDevice { .. } => FileType::CharacterDevice,
                                    Node::BlockDevice { .. } => FileType::BlockDevice,
                                    Node::Dir { .. } => FileType::Directory,
                                };
                                self.meta_only.push((child, e.meta.clone(), kind));
                            }
                        }
                        _ => {
                            self.removes.push((child.clone(), o.clone()));
                            self.add(new, child, e)?;
                        }
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        Ok(())
    }

    fn add(&mut self, new: &SnapshotTrees, path: PathBuf, e: &Entry) -> Result<()> {
        match &e.node {
            Node::File { link_group, .. } => self.links |= link_group.is_some(),
            Node::Dir { tree } => new.walk(tree, &mut |_, e| {
                if let Node::File {
                    link_group: Some(_), ..
                } = e.node
                {
                    self.links = true;
                }
                Ok(())
            })?,
            _ => {}
        }
        self.adds.push((path, e.clone()));
        Ok(())
    }
}

/// Whether two entries' nodes have the same content. Link-group ids are inode numbers of the
/// backed-up volume, so they differ between snapshots of different volumes for the same files;
/// what counts is whether the file is hard-linked at all. (A file that stays linked but to other
/// names is not re-linked by an update; its bytes are right.)
fn same_node(a: &Node, b: &Node) -> bool {
    match (a, b) {
        (
            Node::File {
                size,
                extents,
                link_group,
            },
            Node::File {
                size: s2,
                extents: e2,
                link_group: g2,
            },
        ) => size == s2 && extents == e2 && link_group.is_some() == g2.is_some(),
        _ => a == b,
    }
}
