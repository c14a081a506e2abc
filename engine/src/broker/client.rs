//! The pod's side: fetch credentials from the broker, and keep them fresh for the S3 client.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::provider::{self, ProvideCredentials};
use aws_credential_types::Credentials;
use base64::Engine as _;
use zeroize::Zeroizing;

use super::server::REFRESH_BEFORE;
use super::Issued;
use crate::keys::KeySource;
use crate::store::StoreOptions;
use crate::{Error, Result};

/// The broker's URL (`https://…`); when set, a pod's store credentials, repository and key come
/// from the broker.
pub const BROKER_URL_ENV: &str = "CAIRN_BROKER_URL";
/// The projected service-account token the broker checks (audience `cairn-broker`).
pub const BROKER_TOKEN_ENV: &str = "CAIRN_BROKER_TOKEN_FILE";
/// The CA certificate (PEM) the broker's TLS certificate must chain to.
pub const BROKER_CA_ENV: &str = "CAIRN_BROKER_CA";
/// Where the token is mounted unless `CAIRN_BROKER_TOKEN_FILE` says otherwise.
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/cairn/broker-token";

/// A client of the credential broker.
#[derive(Debug)]
pub struct BrokerClient {
    url: String,
    token_file: PathBuf,
    http: reqwest::Client,
}

impl BrokerClient {
    /// A client of the broker at `url` (`https://` only: credentials and keys travel over it, on
    /// a network the agent shares), sending the token in `token_file`, trusting only `ca` if
    /// given (else the system's roots).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a plain-HTTP URL or an unreadable CA file.
    pub fn new(url: &str, token_file: &Path, ca: Option<&Path>) -> Result<Self> {
        let base = url.trim_end_matches('/');
        if !base.starts_with("https://") {
            return Err(Error::Invalid(format!(
                "{BROKER_URL_ENV}={url:?}: the broker must be reached over https:// (credentials and the tenant's \
                 key travel over it, and the agent shares this pod's network)"
            )));
        }
        let mut b = reqwest::Client::builder()
            .https_only(true)
            // The bearer token goes to the broker only, never to where a redirect points.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30));
        if let Some(ca) = ca {
            let pem = std::fs::read(ca)
                .map_err(|e| Error::Invalid(format!("{BROKER_CA_ENV}={}: {e}", ca.display())))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                Error::Invalid(format!(
                    "{BROKER_CA_ENV}={}: not a PEM certificate: {e}",
                    ca.display()
                ))
            })?;
            b = b.tls_certs_only([cert]);
        }
        let http = b
            .build()
            .map_err(|e| Error::Invalid(format!("broker client: {e}")))?;
        Ok(BrokerClient {
            url: format!("{base}/v1/credentials"),
            token_file: token_file.to_path_buf(),
            http,
        })
    }

    /// From `CAIRN_BROKER_URL`, `CAIRN_BROKER_TOKEN_FILE` and `CAIRN_BROKER_CA`; `None` without a
    /// URL.
    ///
    /// # Errors
    /// As [`BrokerClient::new`].
    pub fn from_env() -> Result<Option<Self>> {
        let var = |n: &str| std::env::var_os(n).filter(|v| !v.is_empty()).map(PathBuf::from);
        let Some(url) = std::env::var(BROKER_URL_ENV)
            .ok()
            .filter(|u| !u.trim().is_empty())
        else {
            return Ok(None);
        };
        let token = var(BROKER_TOKEN_ENV).unwrap_or_else(|| PathBuf::from(DEFAULT_TOKEN_FILE));
        Ok(Some(BrokerClient::new(
            url.trim(),
            &token,
            var(BROKER_CA_ENV).as_deref(),
        )?))
    }

    /// Asks the broker for credentials, with the token as it is now (the kubelet rotates it).
    ///
    /// # Errors
    /// [`Error::Invalid`] when the broker refuses this pod (the message says why); a retryable
    /// [`Error::Store`] when it cannot be reached or fails.
    pub async fn fetch(&self) -> Result<Issued> {
        self.fetch_with(true).await
    }

    /// Fresh credentials only, without the tenant's key (a refresh: the key never changes).
    ///
    /// # Errors
    /// As [`BrokerClient::fetch`].
    pub async fn refresh(&self) -> Result<Issued> {
        self.fetch_with(false).await
    }

    async fn fetch_with(&self, with_key: bool) -> Result<Issued> {
        let token = Zeroizing::new(
            std::fs::read_to_string(&self.token_file).map_err(|e| Error::Store {
                key: self.url.clone(),
                detail: format!(
                    "the broker token {}: {e} (a projected service-account token with audience cairn-broker)",
                    self.token_file.display()
                ),
                retryable: true,
            })?,
        );
        let unreachable = |e: reqwest::Error| Error::Store {
            key: self.url.clone(),
            detail: format!("credential broker: {e}"),
            retryable: true,
        };
        let url = if with_key {
            self.url.clone()
        } else {
            format!("{}?key=false", self.url)
        };
        let resp = self
            .http
            .post(&url)
            .bearer_auth(token.trim())
            .send()
            .await
            .map_err(unreachable)?;
        let status = resp.status();
        if status.is_success() {
            return resp.json::<Issued>().await.map_err(unreachable);
        }
        let message = resp
            .json::<serde_json::Value>()
            .await
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_default();
        let detail = format!(
            "the credential broker refused this pod (HTTP {}): {message}",
            status.as_u16()
        );
        if status.is_server_error() {
            Err(Error::Store {
                key: self.url.clone(),
                detail,
                retryable: true,
            })
        } else {
            Err(Error::Invalid(format!("{}: {detail}", self.url)))
        }
    }

    /// What a pod opens its repository with: the issued repository URL (which `store` must
    /// match when given), the tenant's key (else `keys`), and store options whose S3 credentials
    /// come from the broker, refreshed before they expire, held to the issued grant.
    ///
    /// # Errors
    /// As [`BrokerClient::fetch`]; [`Error::Invalid`] when `store` or `CAIRN_WORKSPACE` name
    /// another repository or workspace than the broker scopes this pod to.
    pub async fn session(
        self: &Arc<Self>,
        store: &str,
        keys: &KeySource,
    ) -> Result<(String, KeySource, StoreOptions)> {
        let issued = self.fetch().await?;
        let store_given = store.trim_end_matches('/');
        if !store_given.is_empty() && store_given != issued.store {
            return Err(Error::Invalid(format!(
                "the credential broker scopes this pod to {}, but the store given is {store_given}; unset \
                 CAIRN_STORE or make them agree",
                issued.store
            )));
        }
        if let Ok(ws) = std::env::var("CAIRN_WORKSPACE") {
            if !ws.is_empty() && ws != issued.workspace {
                return Err(Error::Invalid(format!(
                    "the credential broker scopes this pod to workspace {:?}, but CAIRN_WORKSPACE is {ws:?}",
                    issued.workspace
                )));
            }
        }
        let mut opts = StoreOptions::from_env()?;
        opts.grant = Some(issued.grant.parse()?);
        let mut issued = issued;
        // The key goes into the key source and nowhere else: not into the cached credentials.
        let keys = match issued.key.take().map(Zeroizing::new) {
            Some(b64) => {
                let bytes = Zeroizing::new(
                    base64::engine::general_purpose::STANDARD
                        .decode(b64.as_bytes())
                        .map_err(|e| Error::Invalid(format!("the broker's key is not base64: {e}")))?,
                );
                KeySource::issued(bytes)
            }
            None => keys.clone(),
        };
        let url = issued.store.clone();
        opts.s3.credentials = Some(aws_credential_types::provider::SharedCredentialsProvider::new(
            BrokerCredentials::new(self.clone(), issued),
        ));
        Ok((url, keys, opts))
    }
}

/// S3 credentials from the broker: handed to the SDK as expiring [`REFRESH_BEFORE`] early, so it
/// asks again while they are still valid; a failed refresh keeps the current ones a minute more.
#[derive(Debug)]
pub struct BrokerCredentials {
    client: Arc<BrokerClient>,
    current: Mutex<Option<Issued>>,
}

fn to_sdk(issued: &Issued, report_until: SystemTime) -> provider::Result {
    let aws = issued.aws.as_ref().ok_or_else(|| {
        provider::error::CredentialsError::not_loaded("the broker issued no AWS credentials")
    })?;
    Ok(Credentials::new(
        aws.access_key_id.clone(),
        aws.secret_access_key.clone(),
        Some(aws.session_token.clone()),
        Some(report_until),
        "cairn-broker",
    ))
}

impl BrokerCredentials {
    /// Credentials from `client`, starting with `current` (what the session opened with).
    pub fn new(client: Arc<BrokerClient>, mut current: Issued) -> Self {
        drop(current.key.take().map(Zeroizing::new));
        BrokerCredentials {
            client,
            current: Mutex::new(Some(current)),
        }
    }

    async fn load(&self) -> provider::Result {
        let now = SystemTime::now();
        let expires = |i: &Issued| UNIX_EPOCH + Duration::from_secs(i.expiration);
        let cached = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(c) = &cached {
            if expires(c) > now + REFRESH_BEFORE + Duration::from_secs(5) {
                return to_sdk(c, expires(c) - REFRESH_BEFORE);
            }
        }
        match self.client.refresh().await {
            Ok(mut fresh) => {
                // Only credentials are kept; the key was taken once, when the session opened.
                drop(fresh.key.take().map(Zeroizing::new));
                let r = to_sdk(&fresh, expires(&fresh).checked_sub(REFRESH_BEFORE).unwrap_or(now));
                *self
                    .current
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(fresh);
                r
            }
            Err(e) => match cached.filter(|c| expires(c) > now + Duration::from_secs(60)) {
                Some(c) => {
                    tracing::warn!(error = %e, "could not refresh credentials from the broker; the current ones stay in use");
                    to_sdk(&c, now + Duration::from_secs(60))
                }
                None => Err(provider::error::CredentialsError::provider_error(e.to_string())),
            },
        }
    }
}

impl ProvideCredentials for BrokerCredentials {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(self.load())
    }
}
