//! Google Cloud Storage, through the `gcloud-storage` client (the JSON API over HTTP).
//!
//! - Credentials: application default credentials (`GOOGLE_APPLICATION_CREDENTIALS`, the gcloud
//!   user credentials file, or the metadata server, which is how GKE Workload Identity provides
//!   them). `STORAGE_EMULATOR_HOST` (as every Google client library reads it) points the client at
//!   an emulator, without credentials.
//! - Create-only writes send `ifGenerationMatch=0`; compare-and-swap sends the generation read.
//!   Objects at or over the resumable threshold go up as a resumable upload in 8 MiB chunks; the
//!   precondition is part of the session, so it holds when the upload completes.
//! - A versioned whole-object read asks for the metadata first and then downloads that exact
//!   generation, so the bytes and the version returned always belong together.
//!
//! The official `google-cloud-storage` crate lists and deletes objects over gRPC only, which no
//! emulator on the package registries serves; `gcloud-storage` speaks the JSON API throughout.

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use gcloud_storage::client::{Client, ClientConfig};
use gcloud_storage::http::objects::delete::DeleteObjectRequest;
use gcloud_storage::http::objects::download::Range as GcsRange;
use gcloud_storage::http::objects::get::GetObjectRequest;
use gcloud_storage::http::objects::list::ListObjectsRequest;
use gcloud_storage::http::objects::upload::{Media, UploadObjectRequest, UploadType};
use gcloud_storage::http::resumable_upload_client::{ChunkSize, UploadStatus};
use gcloud_storage::http::Error as GcsError;

use super::{body_error, check_range_len, BucketPath, GetResult, ObjectMeta, PutMode, Store, Version};
use crate::{Error, Result};

/// Tuning for a [`GcsStore`].
#[derive(Clone, Debug)]
pub struct GcsOptions {
    /// An emulator's address (`host:port` or a URL), used without credentials; `None` talks to
    /// Google with application default credentials.
    pub endpoint: Option<String>,
    /// Objects at least this large go up as resumable uploads.
    pub resumable_threshold: usize,
    /// Chunk size of a resumable upload (a multiple of 256 KiB).
    pub chunk_size: usize,
    /// Objects per list request (GCS's maximum is 1000).
    pub list_page_size: i32,
}

impl Default for GcsOptions {
    fn default() -> Self {
        GcsOptions {
            endpoint: None,
            resumable_threshold: 32 << 20,
            chunk_size: 8 << 20,
            list_page_size: 1000,
        }
    }
}

/// A store in a GCS bucket under a key prefix.
#[derive(Clone)]
pub struct GcsStore {
    client: Client,
    at: BucketPath,
    endpoint: Option<String>,
    opts: GcsOptions,
}

impl std::fmt::Debug for GcsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcsStore")
            .field("at", &self.at)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl GcsStore {
    /// Connects to `bucket`: to `opts.endpoint` without credentials if it is set (from
    /// `STORAGE_EMULATOR_HOST` through [`super::StoreOptions::from_env`]), otherwise to Google with application default credentials. Keys live under `prefix`
    /// (a trailing `/` is implied).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a malformed bucket name; [`Error::Store`] when no credentials are found.
    pub async fn connect(bucket: &str, prefix: &str, opts: GcsOptions) -> Result<GcsStore> {
        let ok = (3..=222).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            return Err(Error::Invalid(format!(
                "{bucket:?} is not a valid bucket name (lowercase letters, digits, '-', '_' or '.')"
            )));
        }
        let emulator = opts.endpoint.as_deref().filter(|h| !h.is_empty()).map(|h| {
            if h.starts_with("http://") || h.starts_with("https://") {
                h.trim_end_matches('/').to_string()
            } else {
                format!("http://{}", h.trim_end_matches('/'))
            }
        });
        let config = match &emulator {
            Some(endpoint) => ClientConfig {
                storage_endpoint: endpoint.clone(),
                ..ClientConfig::default()
            }
            .anonymous(),
            None => ClientConfig::default()
                .with_auth()
                .await
                .map_err(|e| Error::Store {
                    key: String::new(),
                    detail: format!(
                        "gs://{bucket}: no Google credentials: {e}; set GOOGLE_APPLICATION_CREDENTIALS, run \
                     `gcloud auth application-default login`, or run on GKE with Workload Identity \
                     (or set STORAGE_EMULATOR_HOST for an emulator)"
                    ),
                    retryable: false,
                })?,
        };
        Ok(GcsStore {
            client: Client::new(config),
            at: BucketPath {
                bucket: bucket.to_string(),
                prefix: super::dir_prefix(prefix),
            },
            endpoint: emulator,
            opts,
        })
    }

    /// A request naming the object of `key`.
    fn object_request(&self, key: &str) -> GetObjectRequest {
        GetObjectRequest {
            bucket: self.at.bucket.clone(),
            object: self.at.object(key),
            ..Default::default()
        }
    }

    fn map_err(&self, key: &str, op: &str, e: GcsError, put: Option<&PutMode>) -> Error {
        let key_s = key.to_string();
        let store_err = |detail: String, retryable: bool| Error::Store {
            key: key_s.clone(),
            detail: format!("GCS {op} on {}: {detail}", self.at.object_url("gs", key)),
            retryable,
        };
        let status = match &e {
            GcsError::Response(r) => Some(r.code),
            GcsError::HttpClient(r) | GcsError::RawResponse(r, _) => r.status().map(|s| s.as_u16()),
            _ => None,
        };
        match (status, &e) {
            (Some(412), _) => match put {
                Some(PutMode::Create) => Error::AlreadyExists { key: key_s },
                _ => Error::Conflict { key: key_s },
            },
            (Some(404), _) if matches!(put, Some(PutMode::Update(_))) => Error::Conflict { key: key_s },
            (Some(404), GcsError::Response(r))
                if r.message.contains("bucket") && !r.message.contains("object") =>
            {
                store_err(
                    format!("HTTP 404: {e}; create the bucket or fix the store URL"),
                    false,
                )
            }
            (Some(404), _) => Error::NotFound { key: key_s },
            (Some(416), _) => Error::Corrupt {
                object: key_s,
                detail: "object is shorter than the requested range".into(),
            },
            (Some(401 | 403), _) => store_err(
                format!(
                    "HTTP {}: {e}; check the credentials (GOOGLE_APPLICATION_CREDENTIALS or the Workload \
                     Identity service account) and its roles on the bucket",
                    status.unwrap_or_default()
                ),
                false,
            ),
            (Some(s @ (408 | 429 | 500..=599)), _) => store_err(format!("HTTP {s}: {e}"), true),
            (Some(s), _) => store_err(format!("HTTP {s}: {e}"), false),
            // No status: the connection failed, timed out or broke mid-body; or the token source
            // failed (the metadata server can take seconds to answer on a new pod).
            (None, GcsError::HttpClient(_) | GcsError::TokenSource(_)) => store_err(e.to_string(), true),
            (None, _) => store_err(e.to_string(), false),
        }
    }

    fn generation(mode: &PutMode, key: &str) -> Result<i64> {
        match mode {
            PutMode::Create => Ok(0),
            PutMode::Update(v) => v.0.parse().map_err(|_| Error::Conflict { key: key.to_string() }),
        }
    }

    async fn put_resumable(
        &self,
        key: &str,
        req: &UploadObjectRequest,
        media: Media,
        data: Bytes,
        mode: &PutMode,
    ) -> Result<Version> {
        let upload = self
            .client
            .prepare_resumable_upload(req, &UploadType::Simple(media))
            .await
            .map_err(|e| self.map_err(key, "start resumable upload", e, Some(mode)))?;
        let total = data.len() as u64;
        let chunk = (self.opts.chunk_size.max(256 << 10) / (256 << 10)) * (256 << 10);
        let mut first = 0u64;
        loop {
            let last = (first + chunk as u64).min(total) - 1;
            let body = data.slice(first as usize..=last as usize);
            let status = upload
                .upload_multiple_chunk(body, &ChunkSize::new(first, last, Some(total)))
                .await
                .map_err(|e| self.map_err(key, "resumable upload", e, Some(mode)))?;
            match status {
                UploadStatus::Ok(obj) => return Ok(Version(obj.generation.to_string())),
                UploadStatus::ResumeIncomplete(r) => first = r.last_byte + 1,
                UploadStatus::NotStarted => {}
            }
            if first >= total {
                return Err(Error::Store {
                    key: key.to_string(),
                    detail: "resumable upload: server took every byte but did not finish the object".into(),
                    retryable: true,
                });
            }
        }
    }
}

#[async_trait]
impl Store for GcsStore {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<Version> {
        let full = self.at.object(key);
        let req = UploadObjectRequest {
            bucket: self.at.bucket.clone(),
            if_generation_match: Some(Self::generation(&mode, key)?),
            ..Default::default()
        };
        let mut media = Media::new(full);
        media.content_type = "application/octet-stream".into();
        media.content_length = Some(data.len() as u64);
        if data.len() >= self.opts.resumable_threshold && !data.is_empty() {
            return self.put_resumable(key, &req, media, data, &mode).await;
        }
        let obj = self
            .client
            .upload_object(&req, data, &UploadType::Simple(media))
            .await
            .map_err(|e| self.map_err(key, "put", e, Some(&mode)))?;
        Ok(Version(obj.generation.to_string()))
    }

    async fn get(&self, key: &str) -> Result<GetResult> {
        let mut req = self.object_request(key);
        let meta = self
            .client
            .get_object(&req)
            .await
            .map_err(|e| self.map_err(key, "get metadata", e, None))?;
        req.generation = Some(meta.generation);
        let data = self
            .client
            .download_object(&req, &GcsRange::default())
            .await
            .map_err(|e| self.map_err(key, "get", e, None))?;
        if u64::try_from(meta.size).ok() != Some(data.len() as u64) {
            return Err(body_error(
                key,
                format!("short body: {} of {} bytes", data.len(), meta.size),
            ));
        }
        Ok(GetResult {
            data: Bytes::from(data),
            version: Version(meta.generation.to_string()),
        })
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        if range.is_empty() {
            self.head(key).await?;
            return Ok(Bytes::new());
        }
        let req = self.object_request(key);
        let data = self
            .client
            .download_object(&req, &GcsRange(Some(range.start), Some(range.end - 1)))
            .await
            .map_err(|e| self.map_err(key, "get range", e, None))?;
        check_range_len(key, &range, data.len())?;
        Ok(Bytes::from(data))
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let req = self.object_request(key);
        let meta = self
            .client
            .get_object(&req)
            .await
            .map_err(|e| self.map_err(key, "head", e, None))?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: u64::try_from(meta.size).unwrap_or(0),
            modified: gcs_time(meta.updated.or(meta.time_created)),
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        let mut req = ListObjectsRequest {
            bucket: self.at.bucket.clone(),
            prefix: Some(self.at.object(prefix)),
            max_results: Some(self.opts.list_page_size),
            ..Default::default()
        };
        loop {
            let page = self
                .client
                .list_objects(&req)
                .await
                .map_err(|e| self.map_err(prefix, "list", e, None))?;
            for o in page.items.unwrap_or_default() {
                if let Some(k) = self.at.relative(&o.name) {
                    out.push(ObjectMeta {
                        key: k.to_string(),
                        size: u64::try_from(o.size).unwrap_or(0),
                        modified: gcs_time(o.updated.or(o.time_created)),
                    });
                }
            }
            match page.next_page_token {
                Some(t) if !t.is_empty() => req.page_token = Some(t),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let req = DeleteObjectRequest {
            bucket: self.at.bucket.clone(),
            object: self.at.object(key),
            ..Default::default()
        };
        match self.client.delete_object(&req).await {
            Ok(()) => Ok(()),
            Err(e) => match self.map_err(key, "delete", e, None) {
                Error::NotFound { .. } => Ok(()),
                e => Err(e),
            },
        }
    }

    fn read_size(&self) -> u64 {
        8 << 20
    }

    fn location(&self) -> String {
        self.at.url("gs")
    }
}

fn gcs_time(t: Option<time::OffsetDateTime>) -> Option<cairn_formats::Timestamp> {
    let t = t?;
    super::timestamp(t.unix_timestamp(), t.nanosecond())
}
