//! Amazon S3 and S3-compatible stores, through `aws-sdk-s3`.
//!
//! - Credentials come from the SDK's standard chain (environment, shared config and credentials
//!   files, web identity tokens as used by IRSA, EKS Pod Identity and ECS container credentials,
//!   EC2 instance metadata). They are never logged: errors carry the S3 error code and message only.
//! - `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` point the client at an S3-compatible server; path-
//!   style addressing is then the default (`CAIRN_S3_PATH_STYLE=false` turns it off), as MinIO,
//!   Ceph and emulators expect.
//! - Create-only writes send `If-None-Match: *`; compare-and-swap sends `If-Match: <ETag>`. Objects
//!   created at or above the multipart threshold are uploaded in parts, and the completing request
//!   carries `If-None-Match: *`, so a large create is as atomic as a small one.
//! - The SDK's own retries are off: [`super::RetryStore`] retries every request with one policy,
//!   and a put whose first attempt may have landed is resolved there.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::Region;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::Bytes;
use futures::stream::{StreamExt, TryStreamExt};

use super::buffers::BufferPool;
use super::{body_error, check_range_len, BucketPath, GetResult, ObjectMeta, PutMode, Store, Version};
use crate::{Error, Result};

/// Tuning for an [`S3Store`].
#[derive(Clone, Debug)]
pub struct S3Options {
    /// Endpoint of an S3-compatible server; `None` uses the SDK's chain (`AWS_ENDPOINT_URL_S3`,
    /// `AWS_ENDPOINT_URL`, the shared config file, then AWS itself).
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`); `None` means on exactly when an endpoint is
    /// configured.
    pub path_style: Option<bool>,
    /// Fixed access key id and secret instead of the SDK's credentials chain (tests, embedding).
    pub static_credentials: Option<(String, String)>,
    /// A credentials provider instead of the SDK's chain (the credential broker's).
    pub credentials: Option<aws_credential_types::provider::SharedCredentialsProvider>,
    /// Objects at least this large are uploaded in parts.
    pub multipart_threshold: usize,
    /// Size of each part (S3's minimum is 5 MiB except for the last).
    pub part_size: usize,
    /// Parts of one object uploaded at once.
    pub part_concurrency: usize,
    /// Keys per list request (S3's maximum is 1000).
    pub list_page_size: i32,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            endpoint: None,
            path_style: None,
            static_credentials: None,
            credentials: None,
            multipart_threshold: 32 << 20,
            part_size: 8 << 20,
            part_concurrency: 4,
            list_page_size: 1000,
        }
    }
}

/// A store in an S3 bucket under a key prefix.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    at: BucketPath,
    endpoint: Option<String>,
    opts: S3Options,
    buffers: Arc<BufferPool>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("at", &self.at)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// Connects to `bucket` with the SDK's standard configuration chain; keys live under `prefix`
    /// (a trailing `/` is implied).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a malformed bucket name.
    pub async fn connect(bucket: &str, prefix: &str, opts: S3Options) -> Result<S3Store> {
        validate_bucket(bucket)?;
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .build(),
            );
        if let Some(ep) = &opts.endpoint {
            loader = loader.endpoint_url(ep);
        }
        if let Some(p) = &opts.credentials {
            loader = loader.credentials_provider(p.clone());
        }
        if let Some((id, secret)) = &opts.static_credentials {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                id,
                secret,
                None,
                None,
                "cairn-static",
            ));
        }
        let sdk = loader.load().await;
        let endpoint = sdk.endpoint_url().map(str::to_string);
        let path_style = opts.path_style.unwrap_or(endpoint.is_some());
        // Every blob is verified against its BLAKE3 id after download, so a CRC of each response
        // adds nothing but work (and asks the server to compute one): validate only when an
        // operation requires it. Uploads keep the SDK's default checksum.
        let mut conf = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(path_style)
            .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired);
        if sdk.region().is_none() {
            // S3-compatible servers rarely care; AWS itself redirects a wrong region clearly.
            conf = conf.region(Region::new("us-east-1"));
        }
        Ok(S3Store {
            client: Client::from_conf(conf.build()),
            at: BucketPath {
                bucket: bucket.to_string(),
                prefix: super::dir_prefix(prefix),
            },
            endpoint,
            opts,
            buffers: Arc::default(),
        })
    }

    /// A create-only upload in parts; `If-None-Match: *` on the completing request makes it atomic.
    async fn create_multipart(&self, key: &str, full: &str, data: Bytes) -> Result<Version> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.at.bucket)
            .key(full)
            .send()
            .await
            .map_err(|e| self.map_err(key, "create multipart upload", e, None))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        let result = async {
            let part_size = self.opts.part_size.max(5 << 20);
            let count = data.len().div_ceil(part_size);
            let parts: Vec<CompletedPart> = futures::stream::iter(0..count)
                .map(|i| {
                    let body = data.slice(i * part_size..((i + 1) * part_size).min(data.len()));
                    let upload_id = upload_id.clone();
                    async move {
                        let number = i32::try_from(i + 1).unwrap_or(i32::MAX);
                        let out = self
                            .client
                            .upload_part()
                            .bucket(&self.at.bucket)
                            .key(full)
                            .upload_id(upload_id)
                            .part_number(number)
                            .body(ByteStream::from(body))
                            .send()
                            .await
                            .map_err(|e| self.map_err(key, "upload part", e, None))?;
                        Ok::<_, Error>(
                            CompletedPart::builder()
                                .set_e_tag(out.e_tag().map(str::to_string))
                                .part_number(number)
                                .build(),
                        )
                    }
                })
                .buffered(self.opts.part_concurrency.max(1))
                .try_collect()
                .await?;
            let out = self
                .client
                .complete_multipart_upload()
                .bucket(&self.at.bucket)
                .key(full)
                .upload_id(&upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .if_none_match("*")
                .send()
                .await
                .map_err(|e| self.map_err(key, "complete multipart upload", e, Some(&PutMode::Create)))?;
            Ok(Version(out.e_tag().unwrap_or_default().to_string()))
        }
        .await;
        if result.is_err() {
            // Parts of an abandoned upload cost storage until aborted (or a lifecycle rule runs).
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.at.bucket)
                .key(full)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    /// Maps an SDK error to the store contract. `put` says which condition a 412 answers.
    fn map_err<E>(
        &self,
        key: &str,
        op: &str,
        e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
        put: Option<&PutMode>,
    ) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let key_s = key.to_string();
        let store_err = |detail: String, retryable: bool| Error::Store {
            key: key_s.clone(),
            detail: format!("S3 {op} on {}: {detail}", self.at.object_url("s3", key)),
            retryable,
        };
        match &e {
            SdkError::ServiceError(se) => {
                let status = se.raw().status().as_u16();
                let code = se.err().code().unwrap_or("");
                let message = se.err().message().unwrap_or("");
                let what = if code.is_empty() {
                    format!("HTTP {status}")
                } else {
                    format!("HTTP {status} {code}: {message}")
                };
                match (status, code) {
                    (_, "NoSuchBucket") => {
                        store_err(format!("{what}; create the bucket or fix the store URL"), false)
                    }
                    (412, _) => match put {
                        Some(PutMode::Create) => Error::AlreadyExists { key: key_s },
                        _ => Error::Conflict { key: key_s },
                    },
                    // If-Match on an object that is gone.
                    (404, _) if matches!(put, Some(PutMode::Update(_))) => Error::Conflict { key: key_s },
                    (404, _) => Error::NotFound { key: key_s },
                    (416, _) => Error::Corrupt {
                        object: key_s,
                        detail: "object is shorter than the requested range".into(),
                    },
                    (401 | 403, _) => store_err(
                        format!(
                            "{what}; check the credentials (AWS_ACCESS_KEY_ID/AWS_PROFILE, the IRSA or \
                             Pod Identity role) and the bucket policy"
                        ),
                        false,
                    ),
                    (501, _) if put.is_some() => store_err(
                        format!("{what}; this server does not support conditional writes"),
                        false,
                    ),
                    // 409 ConditionalRequestConflict: a concurrent conditional write; try again.
                    (408 | 409 | 429 | 500..=599, _) => store_err(what, true),
                    _ => store_err(what, false),
                }
            }
            SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
                store_err(DisplayErrorContext(&e).to_string(), true)
            }
            SdkError::DispatchFailure(d) => store_err(DisplayErrorContext(&e).to_string(), !d.is_user()),
            _ => store_err(DisplayErrorContext(&e).to_string(), false),
        }
    }
}

fn validate_bucket(bucket: &str) -> Result<()> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{bucket:?} is not a valid bucket name (3-63 lowercase letters, digits, '-' or '.')"
        )))
    }
}

#[async_trait]
impl Store for S3Store {
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<Version> {
        let full = self.at.object(key);
        // Only content-addressed objects are large; compare-and-swap objects (heads) are small and
        // always go up in one request (S3 takes up to 5 GiB), where every S3-compatible server
        // honours If-Match (moto, for one, ignores it on CompleteMultipartUpload).
        if data.len() >= self.opts.multipart_threshold && mode == PutMode::Create {
            return self.create_multipart(key, &full, data).await;
        }
        let mut req = self
            .client
            .put_object()
            .bucket(&self.at.bucket)
            .key(&full)
            .body(ByteStream::from(data));
        req = match &mode {
            PutMode::Create => req.if_none_match("*"),
            PutMode::Update(v) => req.if_match(&v.0),
        };
        let out = req
            .send()
            .await
            .map_err(|e| self.map_err(key, "put", e, Some(&mode)))?;
        Ok(Version(out.e_tag().unwrap_or_default().to_string()))
    }

    async fn get(&self, key: &str) -> Result<GetResult> {
        let out = self
            .client
            .get_object()
            .bucket(&self.at.bucket)
            .key(self.at.object(key))
            .send()
            .await
            .map_err(|e| self.map_err(key, "get", e, None))?;
        let expected = out.content_length();
        let version = Version(out.e_tag().unwrap_or_default().to_string());
        let data = out
            .body
            .collect()
            .await
            .map_err(|e| body_error(key, format!("reading the body: {e}")))?
            .into_bytes();
        if let Some(n) = expected {
            if u64::try_from(n).ok() != Some(data.len() as u64) {
                return Err(body_error(
                    key,
                    format!("short body: {} of {n} bytes", data.len()),
                ));
            }
        }
        Ok(GetResult { data, version })
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        if range.is_empty() {
            self.head(key).await?;
            return Ok(Bytes::new());
        }
        let out = self
            .client
            .get_object()
            .bucket(&self.at.bucket)
            .key(self.at.object(key))
            .range(format!("bytes={}-{}", range.start, range.end - 1))
            .send()
            .await
            .map_err(|e| self.map_err(key, "get range", e, None))?;
        // Into a reused buffer of the range's size, chunk by chunk as the body arrives.
        let want = usize::try_from(range.end - range.start).unwrap_or(usize::MAX);
        let mut body = out.body;
        let mut buf = self.buffers.take(want);
        let mut got = 0;
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| body_error(key, format!("reading the body: {e}")))?
        {
            got += chunk.len();
            if got <= want {
                buf.extend_from_slice(&chunk);
            }
        }
        check_range_len(key, &range, got)?;
        Ok(self.buffers.bytes(buf))
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let out = self
            .client
            .head_object()
            .bucket(&self.at.bucket)
            .key(self.at.object(key))
            .send()
            .await
            .map_err(|e| self.map_err(key, "head", e, None))?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: u64::try_from(out.content_length().unwrap_or(0)).unwrap_or(0),
            modified: out
                .last_modified()
                .and_then(|t| super::timestamp(t.secs(), t.subsec_nanos())),
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let full_prefix = self.at.object(prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.at.bucket)
                .prefix(&full_prefix)
                .max_keys(self.opts.list_page_size)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.map_err(prefix, "list", e, None))?;
            for o in page.contents() {
                let Some(k) = o.key().and_then(|k| self.at.relative(k)) else {
                    continue;
                };
                out.push(ObjectMeta {
                    key: k.to_string(),
                    size: u64::try_from(o.size().unwrap_or(0)).unwrap_or(0),
                    modified: o
                        .last_modified()
                        .and_then(|t| super::timestamp(t.secs(), t.subsec_nanos())),
                });
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match self
            .client
            .delete_object()
            .bucket(&self.at.bucket)
            .key(self.at.object(key))
            .send()
            .await
        {
            Ok(_) => Ok(()),
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
        self.at.url("s3")
    }
}
