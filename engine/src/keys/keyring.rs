//! Key objects: creating, finding and unwrapping the wrappings of a repository's root key.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use cairn_formats::{key_object_key, FileKek, KeyObject, KeyWrap, RepoId, RootKey, Timestamp, KEYS_PREFIX};
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::store::{PutMode, Store};
use crate::{Error, Result};

/// The environment variable naming the key file (a mounted Kubernetes Secret, say).
pub const KEY_FILE_ENV: &str = "CAIRN_KEY_FILE";

/// Where the key that opens an encrypted repository comes from.
#[derive(Clone, Default)]
pub struct KeySource {
    /// A key file: at least 32 random bytes.
    pub file: Option<PathBuf>,
    /// Key file bytes handed over in memory (by the credential broker); never written to disk.
    issued: Option<std::sync::Arc<Zeroizing<Vec<u8>>>>,
}

// Never print the key.
impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySource")
            .field("file", &self.file)
            .field("issued", &self.issued.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl KeySource {
    /// `CAIRN_KEY_FILE`, if set and not empty. The variable holds a path, never a key.
    pub fn from_env() -> KeySource {
        KeySource::from_path(std::env::var_os(KEY_FILE_ENV).map(PathBuf::from))
    }

    /// A key file given as a flag or variable (`--key-file`, `CAIRN_KEY_FILE`); an empty one is
    /// none, as a pod spec that sets the variable to "" means.
    pub fn from_path(path: Option<PathBuf>) -> KeySource {
        KeySource {
            file: path.filter(|p| !p.as_os_str().is_empty()),
            issued: None,
        }
    }

    /// A key file.
    pub fn file(path: impl Into<PathBuf>) -> KeySource {
        KeySource {
            file: Some(path.into()),
            issued: None,
        }
    }

    /// Key file bytes held in memory (what the credential broker hands a pod).
    pub fn issued(bytes: Zeroizing<Vec<u8>>) -> KeySource {
        KeySource {
            file: None,
            issued: Some(std::sync::Arc::new(bytes)),
        }
    }

    /// Whether no key is given at all.
    pub fn is_empty(&self) -> bool {
        self.file.is_none() && self.issued.is_none()
    }

    /// The key-encrypting key and how to name it in messages, if a key is given.
    fn kek(&self) -> Result<Option<(FileKek, String)>> {
        if let Some(bytes) = &self.issued {
            let kek = FileKek::from_file_bytes(bytes)
                .map_err(|e| Error::Invalid(format!("the key from the credential broker: {e}")))?;
            return Ok(Some((kek, "from the credential broker".into())));
        }
        match &self.file {
            Some(path) => Ok(Some((read_kek(path)?, format!("file {}", path.display())))),
            None => Ok(None),
        }
    }
}

/// A new wrapping of the root key, for `init` and `key add`.
#[derive(Clone, Debug)]
pub enum NewKey {
    /// A key file: at least 32 random bytes.
    File(PathBuf),
    /// An AWS KMS key (id, ARN or alias): the root key is wrapped by `kms:Encrypt`.
    AwsKms(String),
}

/// A key object, as listed (never the key itself).
#[derive(Clone, Debug, Serialize)]
pub struct KeyInfo {
    /// The key object's id, 32 hex digits.
    pub id: String,
    /// How it wraps the root key: `file`, or `aws-kms:<key>`.
    pub wrap: String,
    /// When it was added, Unix seconds (the adder's clock).
    pub created: i64,
    /// The host that added it.
    pub host: String,
    /// Whether it is the one this process opened the repository with.
    pub current: bool,
}

impl KeyInfo {
    fn of(k: &KeyObject, current: Option<&[u8; 16]>) -> KeyInfo {
        KeyInfo {
            id: hex::encode(k.id),
            wrap: match &k.wrap {
                KeyWrap::File => "file".to_string(),
                KeyWrap::AwsKms { key } => format!("aws-kms:{key}"),
            },
            created: k.created.secs,
            host: k.host.clone(),
            current: current == Some(&k.id),
        }
    }
}

fn read_kek(path: &Path) -> Result<FileKek> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let unreadable = |e: std::io::Error| {
        Error::Invalid(format!(
            "key file {}: {e}; {KEY_FILE_ENV} (or --key-file) must name a readable file of at least 32 random bytes",
            path.display()
        ))
    };
    // One open: the mode checked is that of the file read.
    let mut f = std::fs::File::open(path).map_err(unreadable)?;
    let md = f.metadata().map_err(unreadable)?;
    if md.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", md.permissions().mode() & 0o777),
            "the key file is readable by others (hooks run as nobody could read it): make it 0400 \
             (`chmod 0400`, or `defaultMode: 0400` on a Kubernetes Secret volume)"
        );
    }
    // Sized up front, so no reallocation leaves a copy of the key behind unzeroed.
    let mut bytes = Zeroizing::new(Vec::with_capacity(md.len() as usize + 1));
    f.read_to_end(&mut bytes).map_err(unreadable)?;
    FileKek::from_file_bytes(&bytes).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
}

/// Wraps `root` as a new key object of repository `repo` (config stored as `config_bytes`) and
/// writes it, create-only.
pub(crate) async fn create_key_object(
    store: &dyn Store,
    repo: RepoId,
    config_bytes: &[u8],
    root: &RootKey,
    new: &NewKey,
) -> Result<KeyObject> {
    let id: [u8; 16] = rand::random();
    let binding = KeyObject::binding(repo, &id, config_bytes);
    let (wrap, wrapped) = match new {
        NewKey::File(path) => (KeyWrap::File, read_kek(path)?.wrap(root, &binding)),
        NewKey::AwsKms(key) => (
            KeyWrap::AwsKms { key: key.clone() },
            super::kms::wrap(key, repo, &id, config_bytes, root).await?,
        ),
    };
    let obj = KeyObject {
        id,
        created: Timestamp::now(),
        host: crate::hostname(),
        wrap,
        wrapped,
    };
    store
        .put(&key_object_key(&id), Bytes::from(obj.encode()), PutMode::Create)
        .await?;
    Ok(obj)
}

/// Every key object of the repository, decoded. One that does not decode, or whose id is not its
/// name, is skipped with a warning naming it: whoever may create objects could plant one, and it
/// must not lock everyone out.
pub(crate) async fn key_objects(store: &dyn Store) -> Result<Vec<KeyObject>> {
    let listed = store.list(KEYS_PREFIX).await?;
    let got: Vec<Option<KeyObject>> = stream::iter(listed)
        .map(|o| async move {
            let got = match store.get(&o.key).await {
                Ok(g) => g,
                Err(Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(e),
            };
            match KeyObject::decode(&got.data) {
                Ok(k) if key_object_key(&k.id) == o.key => Ok(Some(k)),
                Ok(_) => {
                    tracing::warn!(object = %o.key, "key object skipped: its id does not match its name");
                    Ok(None)
                }
                Err(e) => {
                    tracing::warn!(object = %o.key, error = %e, "key object skipped: it does not decode");
                    Ok(None)
                }
            }
        })
        .buffer_unordered(crate::repo::READ_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(got.into_iter().flatten().collect())
}

/// Finds a key object `src` opens and unwraps the root key with it.
///
/// # Errors
/// [`Error::Invalid`] naming the repository and what to give when no key is given, the key file is
/// unusable, or it opens none of the key objects.
pub(crate) async fn unlock(
    store: &dyn Store,
    repo: RepoId,
    config_bytes: &[u8],
    src: &KeySource,
) -> Result<(RootKey, [u8; 16])> {
    let objects = key_objects(store).await?;
    if let Some((kek, what)) = src.kek()? {
        for k in &objects {
            if k.wrap == KeyWrap::File {
                if let Some(root) = kek.unwrap(&KeyObject::binding(repo, &k.id, config_bytes), &k.wrapped) {
                    return Ok((root, k.id));
                }
            }
        }
        return Err(Error::Invalid(format!(
            "{}: the key {} opens none of the repository's {} key(s) (`initctl key list` shows them); \
             it is the wrong key, or the repository config was replaced; nothing was changed",
            store.location(),
            what,
            objects.len()
        )));
    }
    // No key file: the KMS wrappings, through the process's AWS credentials (IRSA, Pod Identity).
    let mut refused = None;
    for k in &objects {
        if let KeyWrap::AwsKms { key } = &k.wrap {
            match super::kms::unwrap(key, repo, &k.id, config_bytes, &k.wrapped).await {
                Ok(root) => return Ok((root, k.id)),
                // Another KMS wrapping may be one this identity may use.
                Err(e) => refused = Some(e),
            }
        }
    }
    Err(refused.unwrap_or_else(|| {
        Error::Invalid(format!(
            "{}: the repository is encrypted; give its key with {KEY_FILE_ENV}=<key file> (or --key-file), \
             or add an AWS KMS wrapping (`initctl key add --kms-key`) for this identity",
            store.location()
        ))
    }))
}

/// Lists the key objects; `current` marks the one in use.
pub(crate) async fn list(store: &dyn Store, current: Option<&[u8; 16]>) -> Result<Vec<KeyInfo>> {
    let mut v: Vec<KeyInfo> = key_objects(store)
        .await?
        .iter()
        .map(|k| KeyInfo::of(k, current))
        .collect();
    v.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    Ok(v)
}

/// Describes a key object for `key add`'s answer.
pub(crate) fn info(k: &KeyObject, current: Option<&[u8; 16]>) -> KeyInfo {
    KeyInfo::of(k, current)
}
