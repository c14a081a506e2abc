//! `initctl policy`

use anyhow::{bail, Result};
use cairn_engine::access::policy::{self, Target};
use cairn_engine::access::{Grant, Role};
use clap::{Args, ValueEnum};

use crate::{exit, Global};

/// Which cloud's policy language.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Cloud {
    /// AWS IAM identity policy, or with --bucket-policy the S3 bucket policy.
    Aws,
    /// GCS credential access boundary, or with --member bucket IAM bindings with conditions.
    Gcp,
}

/// Print the policy that grants one role its rights on a repository, as ready-to-apply JSON.
#[derive(Args, Debug)]
pub struct PolicyArgs {
    /// The cloud (default: from --store's scheme, s3:// or gs://).
    #[arg(long, value_enum)]
    cloud: Option<Cloud>,
    /// The bucket (default: from --store).
    #[arg(long)]
    bucket: Option<String>,
    /// The repository's key prefix, e.g. t/tenant-a (default: from --store). Repeat it with
    /// --bucket-policy to cover several repositories of one bucket.
    #[arg(long)]
    prefix: Vec<String>,
    /// writer (a pod's init container and sidecar), reader (drills, audits) or gc (GC and the
    /// operator: the only role that deletes).
    #[arg(long, value_parser = ["writer", "reader", "gc"])]
    role: Option<String>,
    /// Narrow a writer to one workspace: it may write only that workspace's snapshots, head and
    /// heartbeats.
    #[arg(long)]
    workspace: Option<String>,
    /// AWS: print the bucket policy instead (immutable keys create-only for everyone, deletes
    /// only by --gc-principal).
    #[arg(long, conflicts_with_all = ["role", "workspace"])]
    bucket_policy: bool,
    /// AWS, with --bucket-policy: the IAM role (or user) ARN of GC; repeat for several.
    #[arg(long)]
    gc_principal: Vec<String>,
    /// GCP: print bucket IAM bindings for this member (e.g. serviceAccount:gc@P.iam.gserviceaccount.com)
    /// instead of the credential access boundary.
    #[arg(long)]
    member: Option<String>,
}

pub async fn run(g: &Global, a: PolicyArgs) -> Result<u8> {
    let (scheme, bucket, prefix) = match g.store.split_once("://") {
        Some((s, rest)) if s == "s3" || s == "gs" => {
            let (b, p) = rest.split_once('/').unwrap_or((rest, ""));
            (Some(s), Some(b.to_string()), Some(p.to_string()))
        }
        _ => (None, None, None),
    };
    let cloud = match (a.cloud, scheme) {
        (Some(c), _) => c,
        (None, Some("s3")) => Cloud::Aws,
        (None, Some(_)) => Cloud::Gcp,
        (None, None) => {
            bail!("name the cloud: --cloud aws or --cloud gcp (or give --store s3://… or gs://…)")
        }
    };
    let Some(bucket) = a.bucket.or(bucket) else {
        bail!("name the bucket: --bucket B (or give --store s3://B/PREFIX)");
    };
    let prefixes = if a.prefix.is_empty() {
        vec![prefix.unwrap_or_default()]
    } else {
        a.prefix
    };
    let targets = prefixes
        .iter()
        .map(|p| Target::new(&bucket, p))
        .collect::<cairn_engine::Result<Vec<_>>>()?;
    let doc = if a.bucket_policy {
        if !matches!(cloud, Cloud::Aws) {
            bail!(
                "--bucket-policy is for AWS; on GCS a writer's create-only rights come from its role \
                 (storage.objects.create without delete), see --cloud gcp"
            );
        }
        policy::aws_bucket_policy(&targets, &a.gc_principal)?
    } else {
        let Some(role) = a.role else {
            bail!("name the role: --role writer, reader or gc (or --bucket-policy for AWS)");
        };
        if targets.len() > 1 {
            bail!("one --prefix per role policy: a credential serves one repository");
        }
        let grant = Grant::new(role.parse::<Role>()?, a.workspace.as_deref())?;
        match (cloud, &a.member) {
            (Cloud::Aws, None) => policy::aws_identity_policy(&grant, &targets[0]),
            (Cloud::Aws, Some(_)) => bail!("--member is for GCP bindings; AWS policies attach to a role"),
            (Cloud::Gcp, None) => policy::gcp_access_boundary(&grant, &targets[0]),
            (Cloud::Gcp, Some(m)) => policy::gcp_bindings(&grant, &targets[0], m),
        }
    };
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(exit::OK)
}
