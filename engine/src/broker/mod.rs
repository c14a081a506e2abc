//! The credential broker: short-lived, prefix-scoped store credentials (and the tenant's key) for
//! the Cairn containers of a pod, in exchange for a projected service-account token that only
//! those containers mount.
//!
//! The pod's own identity holds no bucket right at all (on GKE the metadata server would serve it
//! to the agent's container too). The broker, a small Deployment with the only broad identity,
//! checks the token's signature against the cluster issuer's keys, its audience, issuer and
//! expiry, maps its namespace and service account to a tenant and workspace, and answers with
//! AWS STS `AssumeRole` credentials whose session policy is the writer grant of that workspace
//! ([`crate::access`]), the repository's URL, and the tenant's key file bytes. The pod
//! ([`BrokerClient`], `CAIRN_BROKER_URL`) fetches them over TLS when it opens the repository and
//! again before they expire; it holds itself to the same grant ([`crate::access::GrantStore`]).
//!
//! Protocol: `POST /v1/credentials[?key=false]` (a refresh asks without the key) with
//! `Authorization: Bearer <token>`; `200` with an
//! [`Issued`] JSON body, or `401` (the token is not acceptable), `403` (no tenant or workspace for
//! this identity), `500` (the broker lacks the tenant's key) or `502` (STS failed) with `{"error": "…"}`.

mod client;
mod server;

use serde::{Deserialize, Serialize};

pub use client::{BrokerClient, BrokerCredentials, BROKER_URL_ENV};
pub use server::{Broker, BrokerConfig, Refusal, TenantRule, WorkspaceFrom};

/// What the broker issues to a pod.
#[derive(Clone, Serialize, Deserialize)]
pub struct Issued {
    /// The repository: `s3://BUCKET/PREFIX/TENANT`.
    pub store: String,
    /// The tenant.
    pub tenant: String,
    /// The workspace this pod may write.
    pub workspace: String,
    /// The grant the credentials carry (`writer:WORKSPACE`).
    pub grant: String,
    /// When the credentials expire (Unix seconds).
    pub expiration: u64,
    /// AWS credentials (STS), for `s3://` repositories.
    pub aws: Option<AwsCredentials>,
    /// The tenant's key file bytes, base64 (absent: the repository is opened another way).
    pub key: Option<String>,
}

/// Temporary AWS credentials.
#[derive(Clone, Serialize, Deserialize)]
pub struct AwsCredentials {
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// The session token.
    pub session_token: String,
}

// Never print a secret: not the credentials, not the key.
impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("store", &self.store)
            .field("tenant", &self.tenant)
            .field("workspace", &self.workspace)
            .field("grant", &self.grant)
            .field("expiration", &self.expiration)
            .field("aws", &self.aws.as_ref().map(|_| "<redacted>"))
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}
