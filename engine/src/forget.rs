//! Retention: which snapshots of a workspace to keep, and forgetting the rest.
//!
//! The rules are restic's: `--keep-last N` keeps the N newest; `--keep-within D` keeps every
//! snapshot taken within D of the newest one; `--keep-hourly/daily/weekly/monthly N` keep the newest
//! snapshot in each of the N most recent hours (days, ISO weeks, calendar months, UTC) that have
//! one; `--keep-tag a,b` keeps every snapshot holding all of those tags. A snapshot kept by any
//! rule is kept. The head is always kept, whatever the rules say. A [`SnapshotFilter`] (`--host`,
//! `--tag`) narrows which snapshots the rules apply to; the others are left alone.
//! Forgetting deletes manifests only; the packs and index records they alone used become garbage
//! for `gc` to collect after its protection window.

use std::collections::HashSet;
use std::time::Duration;

use cairn_formats::{head_key, snapshot_key, validate_workspace, SnapshotId, Timestamp};
use futures::stream::{self, StreamExt, TryStreamExt};
use serde::Serialize;

use crate::repo::{Repo, SnapshotInfo, READ_CONCURRENCY};
use crate::{Error, Result};

/// Which snapshots to keep.
#[derive(Clone, Debug, Default)]
pub struct KeepPolicy {
    /// The newest N.
    pub last: Option<usize>,
    /// All within this long of the newest snapshot.
    pub within: Option<Duration>,
    /// The newest in each of the last N hours with snapshots.
    pub hourly: Option<usize>,
    /// ... days.
    pub daily: Option<usize>,
    /// ... ISO weeks.
    pub weekly: Option<usize>,
    /// ... calendar months.
    pub monthly: Option<usize>,
    /// Every snapshot holding all the tags of one of these sets.
    pub tags: Vec<Vec<String>>,
    /// Only these snapshots are considered; the others are neither kept nor forgotten.
    pub only: SnapshotFilter,
}

/// Which snapshots a listing or `forget` considers, as restic's `--host`, `--tag` and `--latest`.
#[derive(Clone, Debug, Default)]
pub struct SnapshotFilter {
    /// Any of these hosts (none given: any host).
    pub hosts: Vec<String>,
    /// Any of these tag sets; a set matches a snapshot holding all of its tags (none: any).
    pub tags: Vec<Vec<String>>,
    /// Only the newest N of each workspace that pass the other filters.
    pub latest: Option<usize>,
}

impl SnapshotFilter {
    /// Tag sets as given on the command line: each value is one set, `a,b` meaning both.
    pub fn tag_sets(values: &[String]) -> Vec<Vec<String>> {
        values
            .iter()
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .filter(|set| !set.is_empty())
            .collect()
    }

    /// Whether nothing is filtered.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.tags.is_empty() && self.latest.is_none()
    }

    /// Whether `m` passes the host and tag filters.
    pub fn matches(&self, m: &cairn_formats::Manifest) -> bool {
        (self.hosts.is_empty() || self.hosts.contains(&m.host))
            && (self.tags.is_empty() || has_tags(m, &self.tags))
    }

    /// The snapshots of `list` (oldest first, as [`Repo::snapshots`] gives them) that pass,
    /// in the same order.
    pub fn apply(&self, list: Vec<SnapshotInfo>) -> Vec<SnapshotInfo> {
        let mut kept: Vec<SnapshotInfo> = list.into_iter().filter(|s| self.matches(&s.manifest)).collect();
        if let Some(n) = self.latest {
            let mut per_ws: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
            let mut keep = vec![false; kept.len()];
            for (i, s) in kept.iter().enumerate().rev() {
                let seen = per_ws.entry(s.manifest.workspace.clone()).or_insert(0);
                if *seen < n {
                    *seen += 1;
                    keep[i] = true;
                }
            }
            let mut flags = keep.into_iter();
            kept.retain(|_| flags.next().unwrap_or(false));
        }
        kept
    }
}

/// Whether `m` holds every tag of at least one of `sets`.
fn has_tags(m: &cairn_formats::Manifest, sets: &[Vec<String>]) -> bool {
    sets.iter().any(|set| set.iter().all(|t| m.tags.contains(t)))
}

impl KeepPolicy {
    /// Whether no rule is set (forgetting with no rule is refused: it would keep only the head).
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
            && self.last.is_none()
            && self.within.is_none()
            && self.hourly.is_none()
            && self.daily.is_none()
            && self.weekly.is_none()
            && self.monthly.is_none()
    }
}

/// One snapshot's fate.
#[derive(Clone, Debug, Serialize)]
pub struct Decision {
    /// The snapshot.
    pub id: SnapshotId,
    /// Its time.
    pub time: String,
    /// Why it is kept (empty: forgotten).
    pub reasons: Vec<String>,
}

/// What `forget` decided and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ForgetReport {
    /// Kept snapshots, newest first, with the rules that keep them.
    pub keep: Vec<Decision>,
    /// Forgotten snapshots (deleted unless this was a dry run), newest first.
    pub remove: Vec<Decision>,
    /// Whether the workspace's head was deleted too (whole-workspace deletion).
    pub head_deleted: bool,
}

/// Applies `policy` to `workspace`'s snapshots; deletes the forgotten ones unless `dry_run`.
///
/// # Errors
/// [`Error::Invalid`] for an empty policy or a bad name; store errors.
pub async fn forget(
    repo: &Repo,
    workspace: &str,
    policy: &KeepPolicy,
    dry_run: bool,
) -> Result<ForgetReport> {
    validate_workspace(workspace).map_err(|e| Error::Invalid(e.to_string()))?;
    if policy.is_empty() {
        return Err(Error::Invalid(
            "no keep rule given (--keep-last, --keep-within, --keep-hourly/daily/weekly/monthly, --keep-tag); \
             to delete a whole workspace use --all"
                .into(),
        ));
    }
    let mut list = policy.only.apply(repo.snapshots(Some(workspace)).await?);
    list.reverse(); // newest first
    let report = decide(&list, policy);
    if !dry_run {
        delete(repo, workspace, report.remove.iter().map(|d| d.id)).await?;
    }
    Ok(report)
}

/// Deletes every snapshot of `workspace` and then its head.
///
/// # Errors
/// Store errors (what was deleted before one stays deleted; run it again).
pub async fn forget_workspace(repo: &Repo, workspace: &str, dry_run: bool) -> Result<ForgetReport> {
    validate_workspace(workspace).map_err(|e| Error::Invalid(e.to_string()))?;
    let mut list = repo.snapshots(Some(workspace)).await?;
    list.reverse();
    let head = repo.head(workspace).await?;
    let report = ForgetReport {
        keep: Vec::new(),
        remove: list.iter().map(|s| decision(s, Vec::new())).collect(),
        head_deleted: head.is_some(),
    };
    if !dry_run {
        // The head first: the workspace stops existing before its snapshots go, so a restore in
        // between finds nothing rather than a head naming a deleted manifest.
        if head.is_some() {
            repo.store().delete(&head_key(workspace)).await?;
        }
        delete(repo, workspace, report.remove.iter().map(|d| d.id)).await?;
    }
    Ok(report)
}

async fn delete(repo: &Repo, workspace: &str, ids: impl Iterator<Item = SnapshotId>) -> Result<()> {
    let ids: Vec<SnapshotId> = ids.collect();
    stream::iter(ids)
        .map(|id| async move { repo.store().delete(&snapshot_key(workspace, &id)).await })
        .buffer_unordered(READ_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

fn decision(s: &SnapshotInfo, reasons: Vec<String>) -> Decision {
    Decision {
        id: s.id,
        time: s.manifest.time.to_rfc3339(),
        reasons,
    }
}

/// The policy applied to `list` (newest first).
fn decide(list: &[SnapshotInfo], policy: &KeepPolicy) -> ForgetReport {
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); list.len()];
    for (i, s) in list.iter().enumerate() {
        if s.is_head {
            reasons[i].push("head".into());
        }
    }
    if let Some(n) = policy.last {
        for r in reasons.iter_mut().take(n) {
            r.push("last".into());
        }
    }
    if !policy.tags.is_empty() {
        for (i, s) in list.iter().enumerate() {
            if has_tags(&s.manifest, &policy.tags) {
                reasons[i].push("tag".into());
            }
        }
    }
    if let (Some(d), Some(newest)) = (policy.within, list.first()) {
        let limit = secs(newest.manifest.time) - i128::from(d.as_secs());
        for (i, s) in list.iter().enumerate() {
            if secs(s.manifest.time) >= limit {
                reasons[i].push("within".into());
            }
        }
    }
    let buckets: [(Option<usize>, &str, Bucket); 4] = [
        (policy.hourly, "hourly", |t| t.secs.div_euclid(3600)),
        (policy.daily, "daily", |t| t.secs.div_euclid(86_400)),
        // 1970-01-01 was a Thursday; shifting by 3 days starts weeks on Monday (ISO).
        (policy.weekly, "weekly", |t| {
            (t.secs.div_euclid(86_400) + 3).div_euclid(7)
        }),
        (policy.monthly, "monthly", |t| {
            let s = t.to_rfc3339();
            let y: i64 = s[..4].parse().unwrap_or(0);
            let m: i64 = s[5..7].parse().unwrap_or(0);
            y * 12 + m
        }),
    ];
    for (n, name, bucket) in buckets {
        let Some(n) = n else { continue };
        let mut seen = HashSet::new();
        for (i, s) in list.iter().enumerate() {
            if seen.len() >= n {
                break;
            }
            // Newest first: the first snapshot met in a bucket is that bucket's newest.
            if seen.insert(bucket(s.manifest.time)) {
                reasons[i].push(name.into());
            }
        }
    }
    let mut report = ForgetReport::default();
    for (s, r) in list.iter().zip(reasons) {
        if r.is_empty() {
            report.remove.push(decision(s, r));
        } else {
            report.keep.push(decision(s, r));
        }
    }
    report
}

/// Which hour, day, week or month a time falls in.
type Bucket = fn(Timestamp) -> i64;

fn secs(t: Timestamp) -> i128 {
    i128::from(t.secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_formats::{Manifest, Meta, SnapshotStats};

    fn snap(n: u8, secs: i64, head: bool) -> SnapshotInfo {
        SnapshotInfo {
            id: SnapshotId([n; 32]),
            manifest: Manifest {
                workspace: "w".into(),
                time: Timestamp { secs, nanos: 0 },
                host: "h".into(),
                source: vec![],
                root: cairn_formats::BlobId([0; 32]),
                root_meta: Meta::default(),
                parent: None,
                base: None,
                index: vec![],
                stats: SnapshotStats::default(),
                tags: vec![],
            },
            is_head: head,
        }
    }

    fn tagged(n: u8, secs: i64, host: &str, ws: &str, tags: &[&str]) -> SnapshotInfo {
        let mut s = snap(n, secs, false);
        s.manifest.host = host.into();
        s.manifest.workspace = ws.into();
        s.manifest.tags = tags.iter().map(|t| t.to_string()).collect();
        s
    }

    #[test]
    fn filters_select_by_host_tag_sets_and_the_latest_per_workspace() {
        // Oldest first, as listings come.
        let list = vec![
            tagged(1, 10, "pod-a", "w1", &["nightly"]),
            tagged(2, 20, "pod-b", "w1", &["nightly", "release"]),
            tagged(3, 30, "pod-a", "w2", &["release"]),
            tagged(4, 40, "pod-a", "w1", &[]),
            tagged(5, 50, "pod-b", "w2", &["nightly"]),
        ];
        let ids = |f: SnapshotFilter| {
            f.apply(list.clone())
                .iter()
                .map(|s| s.id.0[0])
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(SnapshotFilter::default()), [1, 2, 3, 4, 5]);
        let hosts = |h: &[&str]| SnapshotFilter {
            hosts: h.iter().map(|s| s.to_string()).collect(),
            ..SnapshotFilter::default()
        };
        assert_eq!(ids(hosts(&["pod-b"])), [2, 5]);
        let tags = |t: &[&str]| SnapshotFilter {
            tags: SnapshotFilter::tag_sets(&t.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
            ..SnapshotFilter::default()
        };
        assert_eq!(
            ids(tags(&["nightly,release"])),
            [2],
            "a set means all of its tags"
        );
        assert_eq!(
            ids(tags(&["release", "nightly"])),
            [1, 2, 3, 5],
            "several sets mean any of them"
        );
        assert_eq!(
            ids(tags(&[" , "])),
            [1, 2, 3, 4, 5],
            "an empty set filters nothing"
        );
        let latest = SnapshotFilter {
            latest: Some(1),
            ..SnapshotFilter::default()
        };
        assert_eq!(ids(latest), [4, 5], "the newest of each workspace");
        let both = SnapshotFilter {
            hosts: vec!["pod-a".into()],
            latest: Some(1),
            ..SnapshotFilter::default()
        };
        assert_eq!(ids(both), [3, 4], "latest counts what passed the other filters");
    }

    #[test]
    fn keep_tag_keeps_every_snapshot_holding_a_tag_set() {
        let newest_first = vec![
            tagged(3, 30, "h", "w", &[]),
            tagged(2, 20, "h", "w", &["release", "v1"]),
            tagged(1, 10, "h", "w", &["release"]),
        ];
        let policy = KeepPolicy {
            tags: SnapshotFilter::tag_sets(&["release,v1".to_string()]),
            ..KeepPolicy::default()
        };
        assert!(!policy.is_empty());
        assert_eq!(kept(&decide(&newest_first, &policy)), [2]);
    }

    fn kept(r: &ForgetReport) -> Vec<u8> {
        r.keep.iter().map(|d| d.id.0[0]).collect()
    }

    #[test]
    fn rules_keep_what_restic_keeps_and_the_head_always() {
        const H: i64 = 3600;
        const D: i64 = 86_400;
        let t0 = 1_700_000_000 - 1_700_000_000 % D; // a midnight
                                                    // Newest first: two in the newest hour, one an hour before, one a day before, one a month before.
        let list = vec![
            snap(1, t0 + 10 * H + 50, false),
            snap(2, t0 + 10 * H + 10, false),
            snap(3, t0 + 9 * H, false),
            snap(4, t0 - D + H, false),
            snap(5, t0 - 40 * D, true),
        ];
        let p = |f: fn(&mut KeepPolicy)| {
            let mut k = KeepPolicy::default();
            f(&mut k);
            kept(&decide(&list, &k))
        };
        assert_eq!(
            p(|k| k.last = Some(2)),
            [1, 2, 5],
            "the head is kept whatever the rules"
        );
        assert_eq!(p(|k| k.hourly = Some(2)), [1, 3, 5]);
        assert_eq!(p(|k| k.daily = Some(2)), [1, 4, 5]);
        assert_eq!(p(|k| k.monthly = Some(5)), [1, 5]);
        assert_eq!(
            p(|k| k.within = Some(Duration::from_secs(2 * 3600))),
            [1, 2, 3, 5]
        );
        assert_eq!(p(|k| k.weekly = Some(1)), [1, 5]);
        let r = decide(
            &list,
            &KeepPolicy {
                last: Some(1),
                daily: Some(3),
                ..KeepPolicy::default()
            },
        );
        assert_eq!(kept(&r), [1, 4, 5]);
        assert_eq!(r.keep[0].reasons, ["last", "daily"]);
    }
}
