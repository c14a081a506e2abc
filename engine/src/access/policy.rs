//! A grant's rules in the cloud's own policy language, ready to apply.
//!
//! - AWS: the identity policy of a role (`aws iam put-role-policy --policy-document file://…`)
//!   and the bucket policy every principal is held to (create-only immutable keys, deletes only by
//!   the GC principals).
//! - GCS: the credential access boundary that downscopes a token to a grant (what a credential
//!   broker hands a pod), or bucket IAM bindings with conditions for a member that holds the role
//!   outright.
//!
//! Each is generated from [`Grant::rules`], the rules [`super::GrantStore`] enforces.

use serde_json::{json, Value};

use super::{Access, Grant, Keys, IMMUTABLE, MUTABLE};
use crate::{Error, Result};

/// Where a repository lives: a bucket and its key prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    bucket: String,
    /// Empty, or ending in `/`.
    prefix: String,
}

impl Target {
    /// `bucket` and the repository's `prefix` (as in `s3://bucket/prefix`).
    ///
    /// # Errors
    /// [`Error::Invalid`] for an empty bucket, or a prefix with empty, `.` or `..` components or
    /// a character policies treat as a pattern (`*`, `?`, `$`, `"`).
    pub fn new(bucket: &str, prefix: &str) -> Result<Self> {
        let bad_bucket = bucket.is_empty()
            || !bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_'));
        if bad_bucket {
            return Err(Error::Invalid(format!(
                "bucket {bucket:?}: expected a bucket name (lower-case letters, digits, '-', '.', '_')"
            )));
        }
        let p = prefix.trim_matches('/');
        let bad = p.split('/').any(|c| c.is_empty() || c == "." || c == "..")
            || p.contains(['*', '?', '$', '"', '\\'])
            || p.chars().any(char::is_control);
        if !p.is_empty() && bad {
            return Err(Error::Invalid(format!(
                "prefix {prefix:?}: expected the repository's key prefix, e.g. t/tenant-a (no empty, . or .. \
                 components, no * ? $ \" or \\: one repository per policy)"
            )));
        }
        Ok(Target {
            bucket: bucket.to_string(),
            prefix: if p.is_empty() {
                String::new()
            } else {
                format!("{p}/")
            },
        })
    }

    fn object(&self, k: &Keys) -> String {
        match k {
            Keys::Exact(k) => format!("{}{k}", self.prefix),
            Keys::Prefix(p) => format!("{}{p}", self.prefix),
        }
    }
}

fn s3_arn(t: &Target, k: &Keys) -> String {
    match k {
        Keys::Exact(_) => format!("arn:aws:s3:::{}/{}", t.bucket, t.object(k)),
        Keys::Prefix(_) => format!("arn:aws:s3:::{}/{}*", t.bucket, t.object(k)),
    }
}

/// The keys a grant allows `access` to.
fn keys_for(grant: &Grant, access: Access, replace: Option<bool>) -> Vec<Keys> {
    let mut out = Vec::new();
    for r in grant.rules() {
        let with_replace = r.access.contains(&Access::Replace);
        if r.access.contains(&access) && replace.is_none_or(|want| want == with_replace) {
            out.extend(r.keys.iter().cloned());
        }
    }
    out
}

/// The AWS IAM identity policy of `grant` on `target`.
pub fn aws_identity_policy(grant: &Grant, target: &Target) -> Value {
    let arns = |keys: Vec<Keys>| keys.iter().map(|k| s3_arn(target, k)).collect::<Vec<_>>();
    let mut statements = Vec::new();
    let list = keys_for(grant, Access::List, None);
    if !list.is_empty() {
        let mut s = json!({
            "Sid": "CairnList",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": format!("arn:aws:s3:::{}", target.bucket),
        });
        if !target.prefix.is_empty() {
            let prefixes: Vec<String> = list.iter().map(|k| format!("{}*", target.object(k))).collect();
            s["Condition"] = json!({ "StringLike": { "s3:prefix": prefixes } });
        }
        statements.push(s);
    }
    let read = keys_for(grant, Access::Read, None);
    if !read.is_empty() {
        statements.push(json!({
            "Sid": "CairnRead",
            "Effect": "Allow",
            "Action": "s3:GetObject",
            "Resource": arns(read),
        }));
    }
    // Create-only keys: PutObject and CompleteMultipartUpload only with If-None-Match; the
    // requests of a multipart upload that carry no condition header (CreateMultipartUpload,
    // UploadPart) are told apart by s3:ObjectCreationOperation.
    let create_only = keys_for(grant, Access::Create, Some(false));
    if !create_only.is_empty() {
        statements.push(json!({
            "Sid": "CairnCreateOnly",
            "Effect": "Allow",
            "Action": "s3:PutObject",
            "Resource": arns(create_only.clone()),
            "Condition": { "Null": { "s3:if-none-match": "false" } },
        }));
        statements.push(json!({
            "Sid": "CairnCreateOnlyUploadParts",
            "Effect": "Allow",
            "Action": "s3:PutObject",
            "Resource": arns(create_only),
            "Condition": { "Bool": { "s3:ObjectCreationOperation": "false" } },
        }));
    }
    let swap = keys_for(grant, Access::Replace, None);
    if !swap.is_empty() {
        statements.push(json!({
            "Sid": "CairnCompareAndSwap",
            "Effect": "Allow",
            "Action": "s3:PutObject",
            "Resource": arns(swap),
        }));
    }
    // Abandoned multipart uploads (a failed large pack) are cleaned up by the writer itself; an
    // abort removes uploaded parts, never an object.
    let uploads = keys_for(grant, Access::Create, None);
    if !uploads.is_empty() {
        statements.push(json!({
            "Sid": "CairnAbortUploads",
            "Effect": "Allow",
            "Action": "s3:AbortMultipartUpload",
            "Resource": arns(uploads),
        }));
    }
    let delete = keys_for(grant, Access::Delete, None);
    if !delete.is_empty() {
        statements.push(json!({
            "Sid": "CairnDelete",
            "Effect": "Allow",
            "Action": "s3:DeleteObject",
            "Resource": arns(delete),
        }));
    }
    json!({ "Version": "2012-10-17", "Statement": statements })
}

/// The S3 bucket policy for the repositories at `targets` (one bucket): every principal writes
/// the immutable keys create-only and the mutable ones only by a conditional write (create-only
/// or compare-and-swap), and only `gc_principals` (IAM role or user ARNs) may delete.
///
/// # Errors
/// [`Error::Invalid`] if the targets are in different buckets, or no GC principal is named or
/// one is not an IAM ARN.
pub fn aws_bucket_policy(targets: &[Target], gc_principals: &[String]) -> Result<Value> {
    let Some(first) = targets.first() else {
        return Err(Error::Invalid(
            "a bucket policy needs at least one --prefix".into(),
        ));
    };
    if let Some(t) = targets.iter().find(|t| t.bucket != first.bucket) {
        return Err(Error::Invalid(format!(
            "a bucket policy covers one bucket; {:?} and {:?} differ",
            first.bucket, t.bucket
        )));
    }
    if gc_principals.is_empty() {
        return Err(Error::Invalid(
            "name the GC role with --gc-principal ARN: it is the only principal the bucket policy lets delete"
                .into(),
        ));
    }
    if let Some(p) = gc_principals
        .iter()
        .find(|p| !p.starts_with("arn:aws:iam::") || p.contains(['*', '?']))
    {
        return Err(Error::Invalid(format!(
            "--gc-principal {p:?}: expected one IAM role or user ARN (arn:aws:iam::ACCOUNT:role/NAME), no wildcards"
        )));
    }
    let mut immutable = Vec::new();
    let mut mutable = Vec::new();
    let mut everything = Vec::new();
    for t in targets {
        immutable.extend(IMMUTABLE.iter().map(|l| s3_arn(t, &l.keys())));
        mutable.extend(MUTABLE.iter().map(|l| s3_arn(t, &l.keys())));
        everything.push(s3_arn(t, &Keys::Prefix(String::new())));
    }
    Ok(json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "CairnImmutableKeysCreateOnly",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:PutObject",
                "Resource": immutable,
                "Condition": {
                    "Null": { "s3:if-none-match": "true" },
                    "Bool": { "s3:ObjectCreationOperation": "true" },
                },
            },
            {
                "Sid": "CairnMutableKeysConditional",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:PutObject",
                "Resource": mutable,
                "Condition": {
                    "Null": { "s3:if-none-match": "true", "s3:if-match": "true" },
                    "Bool": { "s3:ObjectCreationOperation": "true" },
                },
            },
            {
                "Sid": "CairnDeleteOnlyByGc",
                "Effect": "Deny",
                "Principal": "*",
                "Action": ["s3:DeleteObject", "s3:DeleteObjectVersion"],
                "Resource": everything,
                "Condition": { "ArnNotLike": { "aws:PrincipalArn": gc_principals } },
            },
        ],
    }))
}

fn gcs_name_condition(t: &Target, keys: &[Keys]) -> String {
    let base = format!("projects/_/buckets/{}/objects/", t.bucket);
    keys.iter()
        .map(|k| match k {
            Keys::Exact(_) => format!("resource.name == \"{base}{}\"", t.object(k)),
            Keys::Prefix(_) => format!("resource.name.startsWith(\"{base}{}\")", t.object(k)),
        })
        .collect::<Vec<_>>()
        .join(" || ")
}

/// The GCS rules of `grant` on `target`: `(what, predefined role, condition)`; an empty condition
/// means the whole bucket. GCS replaces an object only with `storage.objects.create` and
/// `storage.objects.delete`, so the keys a grant swaps (a writer's head and heartbeats) carry the
/// delete right too; the keys it may only create get `storage.objects.create` alone.
fn gcs_rules(grant: &Grant, target: &Target) -> Vec<(&'static str, &'static str, String)> {
    let mut rules = Vec::new();
    let read = keys_for(grant, Access::Read, None);
    if !read.is_empty() {
        // Object reads under the prefix, and listings whose prefix lies under it.
        let cond = if target.prefix.is_empty() {
            String::new()
        } else {
            format!(
                "{} || api.getAttribute(\"storage.googleapis.com/objectListPrefix\", \"\").startsWith(\"{}\")",
                gcs_name_condition(target, &read),
                target.prefix
            )
        };
        rules.push(("read", "roles/storage.objectViewer", cond));
    }
    if !keys_for(grant, Access::Delete, None).is_empty() {
        // GC: create, replace and delete anything under the prefix.
        let cond = if target.prefix.is_empty() {
            String::new()
        } else {
            gcs_name_condition(target, &[Keys::Prefix(String::new())])
        };
        rules.push(("write", "roles/storage.objectUser", cond));
        return rules;
    }
    let create_only = keys_for(grant, Access::Create, Some(false));
    if !create_only.is_empty() {
        rules.push((
            "create",
            "roles/storage.objectCreator",
            gcs_name_condition(target, &create_only),
        ));
    }
    let swap = keys_for(grant, Access::Replace, None);
    if !swap.is_empty() {
        rules.push((
            "swap",
            "roles/storage.objectUser",
            gcs_name_condition(target, &swap),
        ));
    }
    rules
}

fn gcs_title(grant: &Grant, what: &str) -> String {
    format!("cairn-{}-{what}", grant.role().name())
}

/// The credential access boundary of `grant` on `target`: what a downscoped token (STS token
/// exchange with `options={"accessBoundary": …}`) may do.
pub fn gcp_access_boundary(grant: &Grant, target: &Target) -> Value {
    let rules: Vec<Value> = gcs_rules(grant, target)
        .into_iter()
        .map(|(what, role, cond)| {
            let mut r = json!({
                "availableResource": format!("//storage.googleapis.com/projects/_/buckets/{}", target.bucket),
                "availablePermissions": [format!("inRole:{role}")],
            });
            if !cond.is_empty() {
                r["availabilityCondition"] = json!({ "title": gcs_title(grant, what), "expression": cond });
            }
            r
        })
        .collect();
    json!({ "accessBoundary": { "accessBoundaryRules": rules } })
}

/// The bucket IAM bindings (with IAM conditions) that give `member` the rights of `grant` on
/// `target`, to merge into the bucket's policy.
pub fn gcp_bindings(grant: &Grant, target: &Target, member: &str) -> Value {
    let bindings: Vec<Value> = gcs_rules(grant, target)
        .into_iter()
        .map(|(what, role, cond)| {
            let mut b = json!({ "role": role, "members": [member] });
            if !cond.is_empty() {
                b["condition"] = json!({ "title": gcs_title(grant, what), "expression": cond });
            }
            b
        })
        .collect();
    json!({ "bindings": bindings })
}
