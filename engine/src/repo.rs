//! A repository: one store plus its config, and the reads every operation shares.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use cairn_formats::{
    head_key, index_key, snapshot_key, snapshot_prefix, validate_workspace, BlobId, ChunkerParams,
    Compression, Encryption, Head, IndexId, IndexRecord, Manifest, PackKind, PackTargets, RepoConfig, RepoId,
    SnapshotId, Timestamp, CONFIG_KEY, INDEX_PREFIX,
};
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::index::{BlobLocation, LocalIndex};
use crate::keys::{Crypt, KeyInfo, KeySource, NewKey};
use crate::store::{PutMode, Store, StoreExt, Version};
use crate::{Error, Result};

/// How many small-object GETs a repository read keeps in flight.
pub(crate) const READ_CONCURRENCY: usize = 16;

/// Settings for a new repository.
#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    /// Chunk-size limits (default 256 KiB / 1 MiB / 4 MiB).
    pub chunker: Option<ChunkerParams>,
    /// zstd level (default 3).
    pub zstd_level: Option<i32>,
    /// Pack targets (default 8 MiB data, 4 MiB meta).
    pub packs: Option<PackTargets>,
    /// The first wrapping of a new random root key: an encrypted (version 2) repository. `None`
    /// makes a plaintext (version 1) one, readable by anyone who can read the store.
    pub key: Option<NewKey>,
}

/// A snapshot as listed.
#[derive(Clone, Debug)]
pub struct SnapshotInfo {
    /// Its id.
    pub id: SnapshotId,
    /// Its manifest.
    pub manifest: Manifest,
    /// Whether it is its workspace's head.
    pub is_head: bool,
}

/// What a repository at `url` is opened with: the broker's session (its repository, key and
/// refreshing credentials) when there is a broker, else `url`, `keys` and the environment's
/// store options.
async fn session(
    broker: Option<&Arc<crate::broker::BrokerClient>>,
    url: &str,
    keys: &KeySource,
) -> Result<(String, KeySource, crate::store::StoreOptions)> {
    match broker {
        Some(b) => b.session(url, keys).await,
        None => Ok((
            url.to_string(),
            keys.clone(),
            crate::store::StoreOptions::from_env()?,
        )),
    }
}

/// An open repository.
#[derive(Debug, Clone)]
pub struct Repo {
    store: Arc<dyn Store>,
    config: RepoConfig,
    /// The config's stored bytes (key objects are bound to their hash).
    config_bytes: Bytes,
    /// How objects are sealed.
    crypt: Crypt,
    /// The key object that opened it (encrypted repositories).
    key_id: Option<[u8; 16]>,
    /// Pack moves read so far (see `repack.rs`).
    moves: Arc<std::sync::Mutex<HashMap<cairn_formats::PackId, cairn_formats::PackMove>>>,
}

impl Repo {
    /// Creates a repository in an empty store.
    ///
    /// # Errors
    /// [`Error::Invalid`] if the store already holds a repository or the options are invalid;
    /// store errors.
    pub async fn init(store: Arc<dyn Store>, opts: InitOptions) -> Result<Repo> {
        let config = RepoConfig {
            id: RepoId(rand::random()),
            created: Timestamp::now(),
            chunker: opts.chunker.unwrap_or_default(),
            compression: Compression {
                zstd_level: opts.zstd_level.unwrap_or(Compression::default().zstd_level),
            },
            packs: opts.packs.unwrap_or_default(),
            encryption: if opts.key.is_some() {
                Encryption::Aes256Gcm
            } else {
                Encryption::None
            },
        };
        config
            .chunker
            .validate()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        // Round-trip through the decoder so init can never write a config that open refuses.
        let bytes = Bytes::from(config.encode());
        RepoConfig::decode(&bytes).map_err(|e| Error::Invalid(e.to_string()))?;
        crate::store::check_conditional_writes(store.as_ref()).await?;
        if store.get_opt(CONFIG_KEY).await?.is_some() {
            return Err(Error::Invalid(format!(
                "{}: a repository already exists here; nothing was changed",
                store.location()
            )));
        }
        // The key object first: a config is only ever visible with a key that opens it.
        let (crypt, key_id) = match &opts.key {
            None => (Crypt::plain(), None),
            Some(new) => {
                let root = cairn_formats::RootKey::generate();
                let k = crate::keys::create_key_object(store.as_ref(), config.id, &bytes, &root, new).await?;
                (
                    Crypt::sealed(cairn_formats::RepoKeys::derive(&root, config.id)),
                    Some(k.id),
                )
            }
        };
        match store.put(CONFIG_KEY, bytes.clone(), PutMode::Create).await {
            Ok(_) => Ok(Repo::with(store, config, bytes, crypt, key_id)),
            Err(e) => {
                if let Some(id) = key_id {
                    // Bound to a config that was never written: useless, but remove it.
                    let _ = store.delete(&cairn_formats::key_object_key(&id)).await;
                }
                match e {
                    Error::AlreadyExists { .. } => Err(Error::Invalid(format!(
                        "{}: a repository already exists here; nothing was changed",
                        store.location()
                    ))),
                    e => Err(e),
                }
            }
        }
    }

    /// Opens the repository in `store`, with the key `CAIRN_KEY_FILE` names if it is encrypted.
    ///
    /// # Errors
    /// As [`Repo::open_with`].
    pub async fn open(store: Arc<dyn Store>) -> Result<Repo> {
        Repo::open_with(store, &KeySource::from_env()).await
    }

    /// Opens the repository in `store` with the key from `keys` (an encrypted repository needs
    /// one; a plaintext one refuses one, so that a key given for an encrypted repository never
    /// writes plaintext into another).
    ///
    /// # Errors
    /// [`Error::NoRepository`] if there is no config; [`Error::Corrupt`] if it does not decode;
    /// [`Error::Invalid`] for a missing, wrong or unexpected key.
    pub async fn open_with(store: Arc<dyn Store>, keys: &KeySource) -> Result<Repo> {
        let got = match store.get(CONFIG_KEY).await {
            Ok(g) => g,
            Err(Error::NotFound { .. }) => {
                return Err(Error::NoRepository {
                    store: store.location(),
                })
            }
            Err(e) => return Err(e),
        };
        let config = RepoConfig::decode(&got.data).map_err(|e| Error::format(CONFIG_KEY, e))?;
        match config.encryption {
            Encryption::None => {
                if let Some(f) = &keys.file {
                    return Err(Error::Invalid(format!(
                        "{}: this repository is not encrypted (format version 1), but a key was given ({}={}); \
                         refusing to use it, so that nothing meant to be encrypted is stored in the clear. \
                         Unset {} to use this plaintext repository",
                        store.location(),
                        crate::keys::KEY_FILE_ENV,
                        f.display(),
                        crate::keys::KEY_FILE_ENV
                    )));
                }
                if !keys.is_empty() {
                    return Err(Error::Invalid(format!(
                        "{}: this repository is not encrypted (format version 1), but the credential broker \
                         issued a key for it; refusing to store anything meant to be encrypted in the clear",
                        store.location()
                    )));
                }
                Ok(Repo::with(store, config, got.data, Crypt::plain(), None))
            }
            Encryption::Aes256Gcm => {
                let (root, id) = crate::keys::unlock(store.as_ref(), config.id, &got.data, keys).await?;
                let crypt = Crypt::sealed(cairn_formats::RepoKeys::derive(&root, config.id));
                Ok(Repo::with(store, config, got.data, crypt, Some(id)))
            }
        }
    }

    /// How this repository's objects are sealed.
    pub fn crypt(&self) -> &Crypt {
        &self.crypt
    }

    /// Whether the repository is encrypted (format version 2).
    pub fn is_encrypted(&self) -> bool {
        self.crypt.is_encrypted()
    }

    /// The repository's key objects (never the keys).
    ///
    /// # Errors
    /// Store errors; a key object that does not decode.
    pub async fn key_list(&self) -> Result<Vec<KeyInfo>> {
        crate::keys::keyring_list(self.store.as_ref(), self.key_id.as_ref()).await
    }

    /// Adds a wrapping of the root key; `current` must open the repository (it gives the root
    /// key to wrap).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a plaintext repository or an unusable key; store errors.
    pub async fn key_add(&self, current: &KeySource, new: &NewKey) -> Result<KeyInfo> {
        if !self.is_encrypted() {
            return Err(Error::Invalid(format!(
                "{}: the repository is not encrypted; it has no keys to add to",
                self.store.location()
            )));
        }
        let (root, _) =
            crate::keys::unlock(self.store.as_ref(), self.config.id, &self.config_bytes, current).await?;
        let k = crate::keys::create_key_object(
            self.store.as_ref(),
            self.config.id,
            &self.config_bytes,
            &root,
            new,
        )
        .await?;
        Ok(crate::keys::keyring_info(&k, self.key_id.as_ref()))
    }

    /// Removes the key object whose id starts with `prefix`. The key this repository was opened
    /// with cannot be removed (open it with another one), so the last key never goes.
    ///
    /// # Errors
    /// [`Error::Unknown`] for no or several matches; [`Error::Invalid`] for the current key.
    pub async fn key_remove(&self, prefix: &str) -> Result<KeyInfo> {
        let p = prefix.to_ascii_lowercase();
        let all = self.key_list().await?;
        let found: Vec<&KeyInfo> = all
            .iter()
            .filter(|k| !p.is_empty() && k.id.starts_with(&p))
            .collect();
        let k = match found.as_slice() {
            [one] => *one,
            [] => {
                return Err(Error::Unknown(format!(
                    "no key {prefix:?} in {} (see `initctl key list`)",
                    self.store.location()
                )))
            }
            _ => {
                return Err(Error::Unknown(format!(
                    "key prefix {prefix:?} matches {} keys; give more digits",
                    found.len()
                )))
            }
        };
        if k.current {
            return Err(Error::Invalid(format!(
                "key {} is the one this command opened the repository with; open it with another key to remove this one \
                 (a repository always keeps at least one key); nothing was changed",
                k.id
            )));
        }
        let mut id = [0u8; 16];
        hex::decode_to_slice(&k.id, &mut id).map_err(|e| Error::Invalid(e.to_string()))?;
        self.store.delete(&cairn_formats::key_object_key(&id)).await?;
        Ok(k.clone())
    }

    /// Opens the repository at `url` once: through the credential broker when `CAIRN_BROKER_URL`
    /// is set (its repository, key and refreshed credentials, held to its grant), else with the
    /// store options from the environment.
    ///
    /// # Errors
    /// As [`Repo::open_with`]; the broker's refusals.
    pub async fn open_url(url: &str, keys: &KeySource) -> Result<Repo> {
        let broker = crate::broker::BrokerClient::from_env()?.map(Arc::new);
        let (url, keys, opts) = session(broker.as_ref(), url, keys).await?;
        Repo::open_with(crate::store::open_store_with(&url, opts).await?, &keys).await
    }

    /// Opens the repository at `url` (through the broker, as [`Repo::open_url`]), retrying
    /// failures that can pass (a new pod's credentials
    /// and network take seconds to appear: the GKE metadata server, IRSA token files) with
    /// backoff from 200 ms to 10 s, for up to `wait` (without end if `None`). A bad URL or a
    /// store without a repository fails at once. `on_retry` hears each failure and the delay.
    ///
    /// # Errors
    /// The last failure once `wait` is spent; [`Error::Invalid`], [`Error::NoRepository`].
    pub async fn open_waiting(
        url: &str,
        keys: &KeySource,
        wait: Option<std::time::Duration>,
        on_retry: impl FnMut(&Error, std::time::Duration),
    ) -> Result<Repo> {
        let (repo, ()) = Repo::open_waiting_and(url, keys, wait, on_retry, |_| async { Ok(()) }).await?;
        Ok(repo)
    }

    /// [`Repo::open_waiting`], running `first` on the store while the config is read, so a
    /// command's first read costs no round trip of its own (a restore lists heartbeats so).
    ///
    /// # Errors
    /// As [`Repo::open_waiting`]; `first`'s errors are retried like the config read's.
    pub async fn open_waiting_and<T, F, Fut>(
        url: &str,
        keys: &KeySource,
        wait: Option<std::time::Duration>,
        mut on_retry: impl FnMut(&Error, std::time::Duration),
        first: F,
    ) -> Result<(Repo, T)>
    where
        F: Fn(Arc<dyn Store>) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let deadline = wait.map(|w| std::time::Instant::now() + w);
        let mut delay = std::time::Duration::from_millis(200);
        let broker = crate::broker::BrokerClient::from_env()?.map(Arc::new);
        loop {
            let opened = async {
                let (url, keys, opts) = session(broker.as_ref(), url, keys).await?;
                let store = crate::store::open_store_with(&url, opts).await?;
                tokio::try_join!(Repo::open_with(store.clone(), &keys), first(store))
            }
            .await;
            match opened {
                Ok(got) => return Ok(got),
                Err(e @ (Error::Invalid(_) | Error::NoRepository { .. })) => return Err(e),
                Err(e) => {
                    if deadline.is_some_and(|d| std::time::Instant::now() + delay > d) {
                        return Err(e);
                    }
                    on_retry(&e, delay);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(10));
                }
            }
        }
    }

    fn with(
        store: Arc<dyn Store>,
        config: RepoConfig,
        config_bytes: Bytes,
        crypt: Crypt,
        key_id: Option<[u8; 16]>,
    ) -> Repo {
        Repo {
            store,
            config,
            config_bytes,
            crypt,
            key_id,
            moves: Arc::default(),
        }
    }

    pub(crate) fn moves(&self) -> &std::sync::Mutex<HashMap<cairn_formats::PackId, cairn_formats::PackMove>> {
        &self.moves
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The config.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// Opens the local index for this repository under `cache_dir` (see [`default_cache_dir`]).
    /// If another process holds it, a private temporary index is used instead: slower (nothing
    /// cached), never wrong.
    ///
    /// # Errors
    /// [`Error::Io`] if no directory can be created.
    pub fn open_index(&self, cache_dir: &Path) -> Result<IndexHandle> {
        let path = cache_dir.join(self.config.id.to_hex()).join("index");
        match LocalIndex::open(&path) {
            Ok(index) => Ok(IndexHandle { index, _tmp: None }),
            Err(Error::Index { detail, .. }) if detail.contains("lock") => {
                tracing::warn!(path = %path.display(), "local index is in use by another process; using a temporary one");
                let tmp = tempfile::Builder::new()
                    .prefix("cairn-index-")
                    .tempdir()
                    .map_err(|e| Error::io(std::env::temp_dir(), e))?;
                let index = LocalIndex::open(tmp.path())?;
                Ok(IndexHandle {
                    index,
                    _tmp: Some(tmp),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// The head of `workspace` and its version, if it has one.
    ///
    /// # Errors
    /// Store errors; [`Error::Corrupt`] if the head does not decode.
    pub async fn head(&self, workspace: &str) -> Result<Option<(Head, Version)>> {
        validate_workspace(workspace).map_err(|e| Error::Invalid(e.to_string()))?;
        let key = head_key(workspace);
        match self.store.get_opt(&key).await? {
            Some(g) => {
                let plain = self.crypt.open(&key, "workspace head", &key, &g.data)?;
                Ok(Some((
                    Head::decode(&plain).map_err(|e| Error::format(key, e))?,
                    g.version,
                )))
            }
            None => Ok(None),
        }
    }

    /// Reads and verifies a manifest.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Corrupt`] if the bytes do not hash to `id` or do not decode.
    pub async fn manifest(&self, workspace: &str, id: &SnapshotId) -> Result<Manifest> {
        let key = snapshot_key(workspace, id);
        let got = self.store.get(&key).await?;
        if SnapshotId::of(&got.data) != *id {
            return Err(Error::Corrupt {
                object: key,
                detail: "content does not hash to the snapshot id".into(),
            });
        }
        let plain = self.crypt.open(
            &key,
            "snapshot manifest",
            &snapshot_prefix(Some(workspace)),
            &got.data,
        )?;
        let m = Manifest::decode(&plain).map_err(|e| Error::format(&key, e))?;
        if m.workspace != workspace {
            return Err(Error::Corrupt {
                object: key,
                detail: format!("the manifest is of workspace {:?}", m.workspace),
            });
        }
        Ok(m)
    }

    /// Finds a snapshot of `workspace`: the head when `snapshot` is `None` or `"latest"`, else the
    /// snapshot whose id starts with the given hex prefix.
    ///
    /// # Errors
    /// [`Error::Unknown`] for an unknown workspace, no match or an ambiguous prefix.
    pub async fn resolve(&self, workspace: &str, snapshot: Option<&str>) -> Result<(SnapshotId, Manifest)> {
        validate_workspace(workspace).map_err(|e| Error::Invalid(e.to_string()))?;
        let id = match snapshot {
            None | Some("latest") => match self.head(workspace).await? {
                Some((h, _)) => h.snapshot,
                None => {
                    return Err(Error::Unknown(format!(
                        "workspace {workspace:?} has no snapshots in {} (see `initctl snapshots`)",
                        self.store.location()
                    )))
                }
            },
            Some(prefix) => {
                let p = prefix.to_ascii_lowercase();
                if p.len() < 4 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(Error::Invalid(format!(
                        "snapshot {prefix:?}: give at least 4 hex digits of a snapshot id, or \"latest\""
                    )));
                }
                let listed = self.store.list(&snapshot_prefix(Some(workspace))).await?;
                let matches: Vec<SnapshotId> = listed
                    .iter()
                    .filter_map(|o| o.key.rsplit('/').next())
                    .filter(|name| name.starts_with(&p))
                    .filter_map(|name| name.parse().ok())
                    .collect();
                match matches.as_slice() {
                    [one] => *one,
                    [] => {
                        return Err(Error::Unknown(format!(
                            "no snapshot {prefix:?} in workspace {workspace:?} (see `initctl snapshots --workspace {workspace}`)"
                        )))
                    }
                    _ => {
                        return Err(Error::Unknown(format!(
                            "snapshot prefix {prefix:?} matches {} snapshots; give more digits",
                            matches.len()
                        )))
                    }
                }
            }
        };
        let m = self.manifest(workspace, &id).await?;
        Ok((id, m))
    }

    /// Lists snapshots, of one workspace or all, oldest first.
    ///
    /// # Errors
    /// Store errors; a manifest that fails verification.
    pub async fn snapshots(&self, workspace: Option<&str>) -> Result<Vec<SnapshotInfo>> {
        if let Some(w) = workspace {
            validate_workspace(w).map_err(|e| Error::Invalid(e.to_string()))?;
        }
        let wanted = self.snapshot_keys(workspace).await?;
        let mut heads: HashMap<String, SnapshotId> = HashMap::new();
        let mut out: Vec<SnapshotInfo> = stream::iter(wanted)
            .map(|(ws, id)| async move { self.manifest(&ws, &id).await.map(|m| (id, m)) })
            .buffer_unordered(READ_CONCURRENCY)
            .map_ok(|(id, manifest)| SnapshotInfo {
                id,
                manifest,
                is_head: false,
            })
            .try_collect()
            .await?;
        for s in &mut out {
            if !heads.contains_key(&s.manifest.workspace) {
                if let Some((h, _)) = self.head(&s.manifest.workspace).await? {
                    heads.insert(s.manifest.workspace.clone(), h.snapshot);
                }
            }
            s.is_head = heads.get(&s.manifest.workspace) == Some(&s.id);
        }
        out.sort_by(|a, b| {
            (a.manifest.time, &a.manifest.workspace).cmp(&(b.manifest.time, &b.manifest.workspace))
        });
        Ok(out)
    }

    /// The `(workspace, id)` of every stored manifest, of one workspace or all, unread.
    ///
    /// # Errors
    /// Store errors.
    pub async fn snapshot_keys(&self, workspace: Option<&str>) -> Result<Vec<(String, SnapshotId)>> {
        let listed = self.store.list(&snapshot_prefix(workspace)).await?;
        Ok(listed
            .iter()
            .filter_map(|o| {
                let mut parts = o.key.splitn(3, '/').skip(1);
                Some((parts.next()?.to_string(), parts.next()?.parse().ok()?))
            })
            .collect())
    }

    /// Reads and verifies an index record.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Corrupt`].
    pub async fn index_record(&self, id: &IndexId) -> Result<IndexRecord> {
        let key = index_key(id);
        let got = self.store.get(&key).await?;
        if IndexId::of(&got.data) != *id {
            return Err(Error::Corrupt {
                object: key,
                detail: "content does not hash to the index record id".into(),
            });
        }
        let plain = self.crypt.open(&key, "index record", INDEX_PREFIX, &got.data)?;
        IndexRecord::decode(&plain).map_err(|e| Error::format(key, e))
    }

    /// Loads the index records a manifest names into one blob-location map.
    ///
    /// # Errors
    /// As [`Repo::index_record`].
    pub async fn locations(&self, manifest: &Manifest) -> Result<Locations> {
        let records: Vec<(IndexId, IndexRecord)> = stream::iter(manifest.index.iter())
            .map(|id| async move { self.index_record(id).await.map(|r| (*id, r)) })
            .buffer_unordered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        let mut map = HashMap::new();
        let mut pack_sizes = HashMap::new();
        let mut pack_records = HashMap::new();
        for (id, r) in records {
            for p in r.packs {
                pack_sizes.insert(p.pack, p.size);
                pack_records.insert(p.pack, id);
                for e in p.blobs {
                    map.insert(
                        e.id,
                        BlobLocation {
                            pack: p.pack,
                            kind: p.kind,
                            entry: e,
                        },
                    );
                }
            }
        }
        Ok(Locations {
            map,
            pack_sizes,
            pack_records,
            records: manifest.index.clone(),
        })
    }

    /// Makes sure the local index knows every record `manifest` names.
    ///
    /// # Errors
    /// As [`Repo::index_record`]; index failures.
    pub async fn sync_index(&self, index: &LocalIndex, manifest: &Manifest) -> Result<()> {
        let mut missing = Vec::new();
        for id in &manifest.index {
            if !index.has_record(id)? {
                missing.push(*id);
            }
        }
        let records: Vec<(IndexId, IndexRecord)> = stream::iter(missing)
            .map(|id| async move { self.index_record(&id).await.map(|r| (id, r)) })
            .buffer_unordered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        for (id, r) in records {
            index.add_record(&id, &r)?;
        }
        Ok(())
    }
}

/// A local index, possibly a private temporary one.
#[derive(Debug)]
pub struct IndexHandle {
    index: LocalIndex,
    _tmp: Option<tempfile::TempDir>,
}

impl std::ops::Deref for IndexHandle {
    type Target = LocalIndex;
    fn deref(&self) -> &LocalIndex {
        &self.index
    }
}

/// Blob locations for one snapshot.
#[derive(Debug, Default)]
pub struct Locations {
    map: HashMap<BlobId, BlobLocation>,
    pack_sizes: HashMap<cairn_formats::PackId, u64>,
    /// A record (of those loaded) listing each pack.
    pack_records: HashMap<cairn_formats::PackId, IndexId>,
    /// The records loaded.
    records: Vec<IndexId>,
}

impl Locations {
    /// Where `id` is.
    ///
    /// # Errors
    /// [`Error::Corrupt`] if the snapshot's index records do not locate it.
    pub fn get(&self, id: &BlobId) -> Result<&BlobLocation> {
        self.map.get(id).ok_or_else(|| Error::Corrupt {
            object: format!("blob {id}"),
            detail: "not listed by any index record of the snapshot".into(),
        })
    }

    /// The recorded size of a pack.
    pub fn pack_size(&self, pack: &cairn_formats::PackId) -> Option<u64> {
        self.pack_sizes.get(pack).copied()
    }

    /// A loaded record that lists `pack`.
    pub fn pack_record(&self, pack: &cairn_formats::PackId) -> Option<IndexId> {
        self.pack_records.get(pack).copied()
    }

    /// The records these locations were loaded from.
    pub fn records(&self) -> &[IndexId] {
        &self.records
    }

    /// Number of blobs located.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no blob is located.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every located blob.
    pub fn iter(&self) -> impl Iterator<Item = (&BlobId, &BlobLocation)> {
        self.map.iter()
    }

    /// The packs of one kind these locations use.
    pub fn packs(&self, kind: PackKind) -> Vec<cairn_formats::PackId> {
        let mut v: Vec<_> = self
            .map
            .values()
            .filter(|l| l.kind == kind)
            .map(|l| l.pack)
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// The tenants' repositories directly below `url` (a bucket prefix such as `s3://bucket/t`, or a
/// directory): each `<url>/<tenant>` that holds a `config`, as `(tenant, url)`, sorted by tenant.
///
/// # Errors
/// Store errors; [`Error::Invalid`] for a bad URL.
pub async fn tenant_repositories(url: &str) -> Result<Vec<(String, String)>> {
    let store = crate::store::open_store(url).await?;
    let config = format!("/{CONFIG_KEY}");
    let mut out: Vec<(String, String)> = store
        .list("")
        .await?
        .into_iter()
        .filter_map(|o| {
            let tenant = o.key.strip_suffix(&config)?;
            (!tenant.is_empty() && !tenant.contains('/')).then(|| {
                (
                    tenant.to_string(),
                    format!("{}/{tenant}", url.trim_end_matches('/')),
                )
            })
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The cache directory: `$CAIRN_CACHE_DIR`, else `$XDG_CACHE_HOME/cairn`, else `~/.cache/cairn`,
/// else a `cairn-cache` directory in the system temp dir.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CAIRN_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("cairn");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(h).join(".cache").join("cairn");
    }
    std::env::temp_dir().join("cairn-cache")
}
