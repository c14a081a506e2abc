//! The broker's side: verify a pod's token, map it to a tenant and workspace, mint credentials.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{AwsCredentials, Issued};
use crate::access::policy::{aws_identity_policy, Target};
use crate::access::{Grant, Role};
use crate::{Error, Result};

/// How a pod's workspace is named by its identity.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum WorkspaceFrom {
    /// The service account's name (one service account per workspace).
    ServiceAccount,
    /// The pod's name (pods named after their workspace, e.g. one StatefulSet each).
    PodName,
}

/// One namespace's tenant.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRule {
    /// The tenant (its repository is `<store>/<tenant>`).
    pub tenant: String,
    /// Service accounts of the namespace that may ask (empty: any).
    #[serde(default)]
    pub service_accounts: Vec<String>,
    /// Where the workspace name comes from.
    pub workspace_from: WorkspaceFrom,
}

/// The broker's configuration (a JSON file, e.g. from a ConfigMap).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// The tokens' issuer (`iss`): the cluster's service-account issuer URL.
    pub issuer: String,
    /// The audience the pods' projected tokens are minted for (`cairn-broker`).
    pub audience: String,
    /// The issuer's public keys, a JWK set (`kubectl get --raw /openid/v1/jwks`); re-read when a
    /// token names a key it does not hold.
    pub jwks_file: PathBuf,
    /// Where tenants' repositories live: `s3://BUCKET[/PREFIX]`; tenant `t` is `<store>/t`.
    pub store: String,
    /// The role assumed for each pod; the session policy narrows it to the pod's workspace.
    pub role_arn: String,
    /// Lifetime of issued credentials, 900 to 43200 seconds (default 3600); never longer than
    /// the token's own remaining life (but at least STS's minimum, 900 s).
    #[serde(default = "default_session_seconds")]
    pub session_seconds: u64,
    /// The longest token lifetime (`exp - iat`) accepted, in seconds (default 7200): a token
    /// stolen from a pod stays usable no longer than this, as the broker checks tokens offline.
    #[serde(default = "default_max_token_seconds")]
    pub max_token_seconds: u64,
    /// The tenants' key files, one named by each tenant (a Secret mounted as a directory).
    #[serde(default)]
    pub key_dir: Option<PathBuf>,
    /// Namespace → tenant.
    pub namespaces: BTreeMap<String, TenantRule>,
}

fn default_session_seconds() -> u64 {
    3600
}

fn default_max_token_seconds() -> u64 {
    7200
}

/// Audiences a broker must never accept: tokens minted for them reach other services too (the
/// API server's default audience, AWS STS for IRSA, EKS Pod Identity).
const FOREIGN_AUDIENCES: &[&str] = &["sts.amazonaws.com", "pods.eks.amazonaws.com"];

/// STS refuses a session policy longer than this (packed, as sent).
const MAX_SESSION_POLICY: usize = 2048;

/// Why a request was refused, and the HTTP status that says so.
#[derive(Debug)]
pub struct Refusal {
    /// 401: the token is not acceptable; 403: no tenant or workspace for it; 500: the broker
    /// lacks the tenant's key; 502: STS failed.
    pub status: u16,
    /// What was wrong, for the caller and the log (never a secret).
    pub message: String,
}

impl Refusal {
    fn unauthenticated(message: impl Into<String>) -> Self {
        Refusal {
            status: 401,
            message: message.into(),
        }
    }

    fn forbidden(message: impl Into<String>) -> Self {
        Refusal {
            status: 403,
            message: message.into(),
        }
    }
}

/// The claims of a Kubernetes projected service-account token that the broker reads.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    iat: Option<u64>,
    exp: u64,
    #[serde(rename = "kubernetes.io")]
    kubernetes: KubeClaims,
}

#[derive(Debug, Deserialize)]
struct KubeClaims {
    namespace: String,
    serviceaccount: Named,
    pod: Option<Named>,
}

#[derive(Debug, Deserialize)]
struct Named {
    name: String,
}

struct Jwks {
    set: JwkSet,
    modified: Option<SystemTime>,
}

/// A running broker: configuration, the issuer's keys, an STS client.
pub struct Broker {
    config: BrokerConfig,
    bucket: String,
    prefix: String,
    jwks: Mutex<Jwks>,
    sts: aws_sdk_sts::Client,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn read_jwks(path: &Path) -> Result<Jwks> {
    let bad = |e: String| Error::Invalid(format!("jwks_file {}: {e}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let set: JwkSet = serde_json::from_slice(&bytes).map_err(|e| bad(format!("not a JWK set: {e}")))?;
    if set.keys.is_empty() {
        return Err(bad("holds no keys".into()));
    }
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    Ok(Jwks { set, modified })
}

impl Broker {
    /// Reads the configuration at `path` and connects to STS with the broker's own AWS identity
    /// (the SDK's chain: IRSA, Pod Identity, `AWS_ENDPOINT_URL_STS` for other servers).
    ///
    /// # Errors
    /// [`Error::Invalid`] naming what in the configuration is wrong.
    pub async fn from_file(path: &Path) -> Result<Broker> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let config: BrokerConfig = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Invalid(format!("broker config {}: {e}", path.display())))?;
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let mut conf = aws_sdk_sts::config::Builder::from(&sdk);
        if sdk.region().is_none() {
            conf = conf.region(aws_sdk_sts::config::Region::new("us-east-1"));
        }
        Broker::new(config, aws_sdk_sts::Client::from_conf(conf.build()))
    }

    /// A broker with `config`, minting through `sts`.
    ///
    /// # Errors
    /// [`Error::Invalid`] naming what in the configuration is wrong.
    pub fn new(config: BrokerConfig, sts: aws_sdk_sts::Client) -> Result<Broker> {
        let bad = |what: String| Error::Invalid(format!("broker config: {what}"));
        let Some(rest) = config.store.strip_prefix("s3://") else {
            return Err(bad(format!(
                "store {:?}: expected s3://BUCKET[/PREFIX] (GCS downscoped tokens are not issued yet)",
                config.store
            )));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        for (ns, rule) in &config.namespaces {
            Target::new(bucket, &format!("{prefix}/{}", rule.tenant))
                .map_err(|e| bad(format!("namespace {ns}: tenant {:?}: {e}", rule.tenant)))?;
            if rule.tenant.is_empty() || rule.tenant.contains('/') {
                return Err(bad(format!(
                    "namespace {ns}: tenant {:?} must be one path component",
                    rule.tenant
                )));
            }
        }
        if !(900..=43200).contains(&config.session_seconds) {
            return Err(bad(format!(
                "session_seconds {}: STS allows 900 to 43200",
                config.session_seconds
            )));
        }
        let aud = config.audience.trim();
        if aud.is_empty()
            || FOREIGN_AUDIENCES.contains(&aud)
            || aud.starts_with("https://kubernetes.default.svc")
        {
            return Err(bad(format!(
                "audience {:?}: use an audience of the broker's own (cairn-broker); tokens minted for the API \
                 server, STS or Pod Identity reach the agent's container or other services too",
                config.audience
            )));
        }
        if config.max_token_seconds < 600 {
            return Err(bad(format!(
                "max_token_seconds {}: the kubelet mints tokens of at least 600 s",
                config.max_token_seconds
            )));
        }
        if !config.role_arn.starts_with("arn:aws:iam::") {
            return Err(bad(format!(
                "role_arn {:?}: expected arn:aws:iam::ACCOUNT:role/NAME",
                config.role_arn
            )));
        }
        for rule in config.namespaces.values() {
            let longest = "w".repeat(128);
            let t = Target::new(bucket, &format!("{prefix}/{}", rule.tenant))?;
            let len = aws_identity_policy(&Grant::new(Role::Writer, Some(&longest))?, &t)
                .to_string()
                .len();
            if len > MAX_SESSION_POLICY {
                tracing::warn!(
                    tenant = %rule.tenant,
                    "session policies for workspace names near 128 characters exceed STS's 2048 characters \
                     ({len}); such workspaces will be refused: keep workspace names short"
                );
            }
        }
        let jwks = read_jwks(&config.jwks_file)?;
        Ok(Broker {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            jwks: Mutex::new(jwks),
            sts,
            config,
        })
    }

    /// The key for `kid`; the key set is re-read whenever its file changed (the issuer added or
    /// retired keys), so a retired key stops verifying at once.
    fn decoding_key(&self, kid: Option<&str>) -> std::result::Result<DecodingKey, Refusal> {
        let mut jwks = self
            .jwks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let modified = std::fs::metadata(&self.config.jwks_file)
            .and_then(|m| m.modified())
            .ok();
        if modified != jwks.modified {
            match read_jwks(&self.config.jwks_file) {
                Ok(fresh) => *jwks = fresh,
                Err(e) => {
                    tracing::warn!(error = %e, "could not re-read the issuer's key set; keeping the last one")
                }
            }
        }
        let jwk = match kid {
            Some(k) => jwks.set.find(k).cloned(),
            None if jwks.set.keys.len() == 1 => jwks.set.keys.first().cloned(),
            None => None,
        };
        let jwk = jwk.ok_or_else(|| {
            let shown: String = kid.unwrap_or("(none)").chars().take(64).collect();
            Refusal::unauthenticated(format!(
                "the token's signing key {shown:?} is not one of the issuer's keys"
            ))
        })?;
        DecodingKey::from_jwk(&jwk)
            .map_err(|e| Refusal::unauthenticated(format!("the issuer's key is unusable: {e}")))
    }

    /// Verifies `token` and returns `(namespace, service account, pod, exp)`.
    fn verify(&self, token: &str) -> std::result::Result<(String, String, Option<String>, u64), Refusal> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| Refusal::unauthenticated(format!("not a service-account token: {e}")))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(Refusal::unauthenticated(format!(
                "token signed with {:?}; only RS256 and ES256 are accepted",
                header.alg
            )));
        }
        let key = self.decoding_key(header.kid.as_deref())?;
        let mut v = Validation::new(header.alg);
        v.set_audience(&[&self.config.audience]);
        v.set_issuer(&[&self.config.issuer]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.reject_tokens_expiring_in_less_than = 0;
        v.validate_nbf = true;
        v.leeway = 5;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            Refusal::unauthenticated(match e.kind() {
                ErrorKind::InvalidAudience => format!(
                    "the token is not for this broker (audience must be {:?}: a projected token with that audience)",
                    self.config.audience
                ),
                ErrorKind::InvalidIssuer => format!("the token is not from the issuer {:?}", self.config.issuer),
                ErrorKind::ExpiredSignature => "the token has expired".to_string(),
                ErrorKind::ImmatureSignature => "the token is not valid yet".to_string(),
                ErrorKind::InvalidSignature => "the token's signature does not verify".to_string(),
                _ => format!("the token is not acceptable: {e}"),
            })
        })?;
        let c = data.claims;
        let Some(iat) = c.iat else {
            return Err(Refusal::unauthenticated("the token has no issue time (iat)"));
        };
        if c.exp.saturating_sub(iat) > self.config.max_token_seconds {
            return Err(Refusal::unauthenticated(format!(
                "the token lives {} s, longer than the {} s this broker accepts (expirationSeconds of the \
                 projected token)",
                c.exp.saturating_sub(iat),
                self.config.max_token_seconds
            )));
        }
        let want_sub = format!(
            "system:serviceaccount:{}:{}",
            c.kubernetes.namespace, c.kubernetes.serviceaccount.name
        );
        if c.sub != want_sub {
            return Err(Refusal::unauthenticated(format!(
                "the token's subject {:?} does not match its namespace and service account",
                c.sub
            )));
        }
        Ok((
            c.kubernetes.namespace,
            c.kubernetes.serviceaccount.name,
            c.kubernetes.pod.map(|p| p.name),
            c.exp,
        ))
    }

    /// Answers one request: `token` verified, mapped, and credentials minted.
    ///
    /// # Errors
    /// A [`Refusal`] with the status to answer.
    pub async fn issue(&self, token: &str) -> std::result::Result<Issued, Refusal> {
        self.issue_with(token, true).await
    }

    /// [`Broker::issue`], with the tenant's key only when `with_key` (a refresh needs none).
    ///
    /// # Errors
    /// A [`Refusal`] with the status to answer.
    pub async fn issue_with(&self, token: &str, with_key: bool) -> std::result::Result<Issued, Refusal> {
        let (namespace, sa, pod, token_exp) = self.verify(token)?;
        let rule = self.config.namespaces.get(&namespace).ok_or_else(|| {
            Refusal::forbidden(format!("namespace {namespace:?} is not mapped to a tenant"))
        })?;
        if !rule.service_accounts.is_empty() && !rule.service_accounts.contains(&sa) {
            return Err(Refusal::forbidden(format!(
                "service account {namespace}/{sa} may not ask for credentials"
            )));
        }
        let pod = pod.ok_or_else(|| {
            Refusal::unauthenticated(
                "the token is not bound to a pod (mount a projected service-account token)",
            )
        })?;
        let workspace = match rule.workspace_from {
            WorkspaceFrom::ServiceAccount => sa.clone(),
            WorkspaceFrom::PodName => pod.clone(),
        };
        let grant = Grant::new(Role::Writer, Some(&workspace))
            .map_err(|e| Refusal::forbidden(format!("workspace {workspace:?}: {e}")))?;
        let repo_prefix = if self.prefix.is_empty() {
            rule.tenant.clone()
        } else {
            format!("{}/{}", self.prefix, rule.tenant)
        };
        let target =
            Target::new(&self.bucket, &repo_prefix).map_err(|e| Refusal::forbidden(e.to_string()))?;
        let policy = aws_identity_policy(&grant, &target).to_string();
        if policy.len() > MAX_SESSION_POLICY {
            return Err(Refusal::forbidden(format!(
                "workspace {workspace:?}: its session policy ({} characters) exceeds STS's {MAX_SESSION_POLICY}; use a \
                 shorter workspace name",
                policy.len()
            )));
        }
        // Credentials outlive neither the token nor the configured session (STS's minimum: 900 s).
        let now = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let seconds = self
            .config
            .session_seconds
            .min(token_exp.saturating_sub(now).max(900));
        let session = session_name(&namespace, &pod);
        let out = self
            .sts
            .assume_role()
            .role_arn(&self.config.role_arn)
            .role_session_name(&session)
            .policy(policy)
            .duration_seconds(i32::try_from(seconds).unwrap_or(900))
            .send()
            .await
            .map_err(|e| {
                tracing::warn!(error = %aws_sdk_sts::error::DisplayErrorContext(&e), "sts:AssumeRole failed");
                Refusal {
                    status: 502,
                    message: "the broker could not obtain credentials (sts:AssumeRole failed); try again"
                        .into(),
                }
            })?;
        let creds = out.credentials.ok_or_else(|| Refusal {
            status: 502,
            message: "sts:AssumeRole returned no credentials".into(),
        })?;
        let expiration = u64::try_from(creds.expiration.secs()).unwrap_or(0);
        let key = match &self.config.key_dir {
            Some(_) if !with_key => None,
            Some(dir) => Some(read_tenant_key(dir, &rule.tenant).map_err(|e| {
                tracing::warn!(error = %e, tenant = %rule.tenant, "tenant key unreadable");
                Refusal {
                    status: 500,
                    message: format!("the broker has no usable key for tenant {:?}", rule.tenant),
                }
            })?),
            None => None,
        };
        tracing::info!(
            namespace = %namespace,
            service_account = %sa,
            pod = %pod,
            tenant = %rule.tenant,
            workspace = %workspace,
            expiration,
            "issued writer credentials"
        );
        Ok(Issued {
            store: format!("s3://{}/{repo_prefix}", self.bucket),
            tenant: rule.tenant.clone(),
            workspace,
            grant: grant.to_string(),
            expiration,
            aws: Some(AwsCredentials {
                access_key_id: creds.access_key_id,
                secret_access_key: creds.secret_access_key,
                session_token: creds.session_token,
            }),
            key,
        })
    }
}

/// An STS session name from the pod (64 characters of `[\w+=,.@-]` at most), which CloudTrail
/// shows for every request made with the credentials.
fn session_name(namespace: &str, pod: &str) -> String {
    let raw = format!("cairn@{namespace}@{pod}");
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+=,.@-_".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect()
}

fn read_tenant_key(dir: &Path, tenant: &str) -> Result<String> {
    let path = dir.join(tenant);
    let bytes = Zeroizing::new(std::fs::read(&path).map_err(|e| Error::io(&path, e))?);
    // The same rule as a key file read by the pod: at least 32 bytes.
    cairn_formats::FileKek::from_file_bytes(&bytes)
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(&*bytes))
}

/// How long before expiry a pod fetches fresh credentials.
pub(crate) const REFRESH_BEFORE: Duration = Duration::from_secs(300);
