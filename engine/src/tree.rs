//! Reading a snapshot's trees: locate them through the snapshot's index records, fetch the
//! metadata packs that hold them, verify and decode.

use std::collections::HashMap;

use bytes::Bytes;
use cairn_formats::{pack_key, BlobId, Entry, Manifest, Node, PackId, PackKind, Tree};
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::compress::decode_blob;
use crate::repo::{Locations, Repo, READ_CONCURRENCY};
use crate::{Error, Result};

/// A snapshot's trees, ready to read without further I/O.
#[derive(Debug)]
pub struct SnapshotTrees {
    locations: Locations,
    meta_packs: HashMap<PackId, Bytes>,
    crypt: crate::keys::Crypt,
}

impl SnapshotTrees {
    /// Loads the index records and metadata packs of `manifest`.
    ///
    /// Metadata packs are fetched whole: they are small (about 4 MiB) and hold many trees each,
    /// so a few large reads replace one small read per directory.
    ///
    /// # Errors
    /// Missing or corrupt index records or packs, naming the store key.
    pub async fn load(repo: &Repo, manifest: &Manifest) -> Result<Self> {
        Self::load_with(repo, manifest, None).await
    }

    /// [`SnapshotTrees::load`] for a second snapshot, taking the metadata packs `other` already
    /// holds from memory (two snapshots of one workspace share most of them).
    ///
    /// # Errors
    /// As [`SnapshotTrees::load`].
    pub async fn load_sharing(repo: &Repo, manifest: &Manifest, other: &SnapshotTrees) -> Result<Self> {
        Self::load_with(repo, manifest, Some(other)).await
    }

    async fn load_with(repo: &Repo, manifest: &Manifest, other: Option<&SnapshotTrees>) -> Result<Self> {
        let locations = repo.locations(manifest).await?;
        let mut meta_packs = HashMap::new();
        let mut missing = Vec::new();
        for pack in locations.packs(PackKind::Meta) {
            match other.and_then(|o| o.meta_packs.get(&pack)) {
                Some(bytes) => {
                    meta_packs.insert(pack, bytes.clone());
                }
                None => missing.push(pack),
            }
        }
        let fetched: Vec<(PackId, Bytes)> = stream::iter(missing)
            .map(|pack| async move {
                let got = repo.read_pack(PackKind::Meta, &pack, None).await?;
                Ok::<_, Error>((pack, got))
            })
            .buffer_unordered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        meta_packs.extend(fetched);
        Ok(SnapshotTrees {
            locations,
            meta_packs,
            crypt: repo.crypt().clone(),
        })
    }

    /// How the repository's blobs are named and sealed.
    pub fn crypt(&self) -> &crate::keys::Crypt {
        &self.crypt
    }

    /// The blob locations of the snapshot.
    pub fn locations(&self) -> &Locations {
        &self.locations
    }

    /// Reads and verifies one tree.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if the tree is not located, fails its hash, or does not decode.
    pub fn tree(&self, id: &BlobId) -> Result<Tree> {
        let loc = self.locations.get(id)?;
        let key = pack_key(loc.kind, &loc.pack);
        let pack = self.meta_packs.get(&loc.pack).ok_or_else(|| Error::Corrupt {
            object: format!("tree {id}"),
            detail: format!("located in {key}, which is not a metadata pack of this snapshot"),
        })?;
        let r = loc.entry.range();
        let stored = pack
            .get(r.start as usize..r.end as usize)
            .ok_or_else(|| Error::Corrupt {
                object: key.clone(),
                detail: format!(
                    "pack is {} bytes, tree {} expected at {}..{}",
                    pack.len(),
                    id.short(),
                    r.start,
                    r.end
                ),
            })?;
        let raw = decode_blob(
            &self.crypt,
            || format!("tree {} in {key}", id.short()),
            id,
            stored,
            loc.entry.raw_len,
            loc.entry.codec,
        )?;
        Tree::decode(&raw).map_err(|e| Error::format(format!("tree {id} in {key}"), e))
    }

    /// Visits every entry of the snapshot depth-first, parents before children, with its path
    /// relative to the root (components joined by `/`).
    ///
    /// # Errors
    /// The first tree that fails to load, or the visitor's error.
    pub fn walk(&self, root: &BlobId, visit: &mut dyn FnMut(&[u8], &Entry) -> Result<()>) -> Result<()> {
        let mut path = Vec::new();
        self.walk_at(root, &mut path, visit)
    }

    fn walk_at(
        &self,
        id: &BlobId,
        path: &mut Vec<u8>,
        visit: &mut dyn FnMut(&[u8], &Entry) -> Result<()>,
    ) -> Result<()> {
        let tree = self.tree(id)?;
        for e in &tree.entries {
            let len = path.len();
            if len > 0 {
                path.push(b'/');
            }
            path.extend_from_slice(&e.name);
            visit(path, e)?;
            if let Node::Dir { tree } = &e.node {
                self.walk_at(tree, path, visit)?;
            }
            path.truncate(len);
        }
        Ok(())
    }
}
