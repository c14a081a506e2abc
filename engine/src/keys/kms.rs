//! AWS KMS wrapping of a repository's root key (envelope encryption): `Encrypt` once when the key
//! object is made, `Decrypt` when a repository is opened, both with an encryption context naming
//! the repository, the key object and the config, so a key object copied elsewhere does not
//! decrypt and CloudTrail says which repository asked.
//!
//! Credentials and region come from the usual AWS chain (IRSA, Pod Identity, environment, profile);
//! `AWS_ENDPOINT_URL_KMS` or `AWS_ENDPOINT_URL` points it elsewhere (tests use moto's KMS).

use std::collections::HashMap;

use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use cairn_formats::{RepoId, RootKey};
use zeroize::Zeroizing;

use crate::{Error, Result};

/// The encryption context of a wrapping.
fn context(repo: RepoId, id: &[u8; 16], config_bytes: &[u8]) -> HashMap<String, String> {
    HashMap::from([
        ("cairn:repository".to_string(), repo.to_hex()),
        ("cairn:key".to_string(), hex::encode(id)),
        (
            "cairn:config".to_string(),
            blake3::hash(config_bytes).to_hex().to_string(),
        ),
    ])
}

async fn client() -> aws_sdk_kms::Client {
    let cfg = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    aws_sdk_kms::Client::new(&cfg)
}

/// Maps a KMS failure: refusals are permanent and say what the role needs; transport failures
/// and throttling may pass (a new pod's credentials take seconds) and are retryable.
fn kms_error<E>(
    op: &str,
    key: &str,
    repo: RepoId,
    e: SdkError<E, aws_sdk_kms::config::http::HttpResponse>,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let permanent = |detail: String| {
        Error::Invalid(format!(
            "AWS KMS {op} with key {key} for repository {repo} was refused: {detail}; the caller needs \
             kms:{op} on that key (with the encryption context cairn:repository={repo}); nothing was changed"
        ))
    };
    match &e {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or("").to_string();
            let message = se.err().message().unwrap_or("").to_string();
            match (status, code.as_str()) {
                (429 | 500..=599, _) | (_, "ThrottlingException" | "KMSInternalException") => Error::Store {
                    key: format!("kms:{key}"),
                    detail: format!("AWS KMS {op}: HTTP {status} {code}: {message}"),
                    retryable: true,
                },
                _ => permanent(format!("HTTP {status} {code}: {message}")),
            }
        }
        SdkError::DispatchFailure(d) if d.is_user() => permanent(DisplayErrorContext(&e).to_string()),
        _ => Error::Store {
            key: format!("kms:{key}"),
            detail: format!(
                "AWS KMS {op} did not answer: {}; check the network and AWS_REGION",
                DisplayErrorContext(&e)
            ),
            retryable: true,
        },
    }
}

/// Wraps `root` under KMS key `key` for key object `id`.
///
/// # Errors
/// A refused or failed `Encrypt`.
pub(crate) async fn wrap(
    key: &str,
    repo: RepoId,
    id: &[u8; 16],
    config_bytes: &[u8],
    root: &RootKey,
) -> Result<Vec<u8>> {
    let out = client()
        .await
        .encrypt()
        .key_id(key)
        .plaintext(Blob::new(root.expose().to_vec()))
        .set_encryption_context(Some(context(repo, id, config_bytes)))
        .send()
        .await
        .map_err(|e| kms_error("Encrypt", key, repo, e))?;
    out.ciphertext_blob()
        .map(|b| b.as_ref().to_vec())
        .ok_or_else(|| Error::Invalid(format!("AWS KMS Encrypt with key {key} returned no ciphertext")))
}

/// Unwraps a root key wrapped by [`wrap`].
///
/// # Errors
/// A refused or failed `Decrypt`, or a plaintext that is not a key.
pub(crate) async fn unwrap(
    key: &str,
    repo: RepoId,
    id: &[u8; 16],
    config_bytes: &[u8],
    wrapped: &[u8],
) -> Result<RootKey> {
    let mut out = client()
        .await
        .decrypt()
        .key_id(key)
        .ciphertext_blob(Blob::new(wrapped.to_vec()))
        .set_encryption_context(Some(context(repo, id, config_bytes)))
        .send()
        .await
        .map_err(|e| kms_error("Decrypt", key, repo, e))?;
    // The SDK's own buffer, taken rather than copied, so that it is zeroed when dropped.
    let plain = Zeroizing::new(out.plaintext.take().map(Blob::into_inner).unwrap_or_default());
    let bytes: [u8; 32] = plain.as_slice().try_into().map_err(|_| {
        Error::Invalid(format!(
            "AWS KMS Decrypt with key {key} did not return a 32-byte key"
        ))
    })?;
    Ok(RootKey::from_bytes(Zeroizing::new(bytes)))
}
