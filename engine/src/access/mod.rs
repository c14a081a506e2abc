//! Who may do what to a repository's keys: the roles of a least-privilege deployment, as data.
//!
//! One table of rules per role is the single source of truth: [`GrantStore`] enforces it in
//! process (tests, and `CAIRN_GRANT` as a self-check in a pod), and [`policy`] renders it as the
//! cloud's own policy language (AWS IAM and bucket policies, GCS IAM conditions and credential
//! access boundaries), so what the store enforces and what the tests prove are the same rules.
//!
//! - **writer** (a pod's init container and sidecar): reads and lists the whole repository (a
//!   restore reads packs any workspace of the tenant wrote: dedup spans the repository); creates
//!   packs, index records and its own workspace's manifests; creates and compare-and-swaps only its
//!   own workspace's head and heartbeats; never deletes and never replaces an immutable object.
//! - **reader** (drills, audits, `check`): reads and lists only.
//! - **gc** (the GC CronJob and the operator: `init`, `key`, `forget`, `gc`): everything, and the
//!   only role that deletes.

mod guard;
pub mod policy;

use std::fmt;
use std::str::FromStr;

use cairn_formats::validate_workspace;

pub use guard::GrantStore;

use crate::{Error, Result};

/// What a request does to one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    /// `get`, `get_range`, `head`.
    Read,
    /// `list` of a prefix.
    List,
    /// A create-only `put` (`If-None-Match: *`, `ifGenerationMatch=0`).
    Create,
    /// A compare-and-swap `put` over an existing object.
    Replace,
    /// `delete`.
    Delete,
}

impl Access {
    /// The verb, for messages.
    pub fn verb(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::List => "list",
            Access::Create => "create",
            Access::Replace => "replace",
            Access::Delete => "delete",
        }
    }
}

/// Keys a rule covers, relative to the repository's prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Keys {
    /// Exactly this key.
    Exact(String),
    /// Every key that starts with this (`""`: the whole repository).
    Prefix(String),
}

impl Keys {
    fn covers(&self, key: &str) -> bool {
        match self {
            Keys::Exact(k) => k == key,
            Keys::Prefix(p) => key.starts_with(p.as_str()),
        }
    }
}

/// A class of keys of the repository layout (`formats/FORMAT.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Exactly this key.
    Key(&'static str),
    /// Every key under this prefix.
    Under(&'static str),
}

impl Layout {
    /// As [`Keys`].
    pub fn keys(self) -> Keys {
        match self {
            Layout::Key(k) => Keys::Exact(k.into()),
            Layout::Under(p) => Keys::Prefix(p.into()),
        }
    }
}

/// Keys nobody ever replaces: written create-only, deleted only by GC and the operator.
pub const IMMUTABLE: &[Layout] = &[
    Layout::Key("config"),
    Layout::Under("keys/"),
    Layout::Under("packs/"),
    Layout::Under("index/"),
    Layout::Under("snapshots/"),
];

/// Keys replaced by compare-and-swap: heads, heartbeats, GC state and lease, `init`'s probe.
pub const MUTABLE: &[Layout] = &[
    Layout::Under("heads/"),
    Layout::Under("heartbeats/"),
    Layout::Under("gc/"),
    Layout::Under("probe/"),
];

/// One rule: these accesses to these keys are allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// What is allowed.
    pub access: Vec<Access>,
    /// On which keys.
    pub keys: Vec<Keys>,
}

/// A role of the least-privilege layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A pod's init container and sidecar.
    Writer,
    /// Drills and audits.
    Reader,
    /// Garbage collection and the operator.
    Gc,
}

impl Role {
    /// The role's name, as `--role` and `CAIRN_GRANT` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Writer => "writer",
            Role::Reader => "reader",
            Role::Gc => "gc",
        }
    }
}

impl FromStr for Role {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "writer" => Ok(Role::Writer),
            "reader" => Ok(Role::Reader),
            "gc" => Ok(Role::Gc),
            _ => Err(Error::Invalid(format!(
                "role {s:?}: expected writer, reader or gc"
            ))),
        }
    }
}

/// A role, narrowed to one workspace for a writer: the rights one credential carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    role: Role,
    workspace: Option<String>,
}

impl Grant {
    /// A grant of `role`; `workspace` narrows a writer to that workspace's manifests, head and
    /// heartbeats (without it, a writer may write every workspace's).
    ///
    /// # Errors
    /// [`Error::Invalid`] for a bad workspace name, or a workspace given to a role other than
    /// writer.
    pub fn new(role: Role, workspace: Option<&str>) -> Result<Self> {
        if let Some(w) = workspace {
            if role != Role::Writer {
                return Err(Error::Invalid(format!(
                    "a workspace narrows only the writer role, not {}",
                    role.name()
                )));
            }
            validate_workspace(w).map_err(|e| Error::Invalid(e.to_string()))?;
        }
        Ok(Grant {
            role,
            workspace: workspace.map(str::to_string),
        })
    }

    /// The role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The writer's workspace, if narrowed to one.
    pub fn workspace(&self) -> Option<&str> {
        self.workspace.as_deref()
    }

    /// The rules of this grant.
    pub fn rules(&self) -> Vec<Rule> {
        use Access::*;
        let all = || vec![Keys::Prefix(String::new())];
        match self.role {
            Role::Gc => vec![
                Rule {
                    access: vec![Read, List, Create, Delete],
                    keys: all(),
                },
                Rule {
                    access: vec![Replace],
                    keys: MUTABLE.iter().map(|k| k.keys()).collect(),
                },
            ],
            Role::Reader => vec![Rule {
                access: vec![Read, List],
                keys: all(),
            }],
            Role::Writer => {
                let (snapshots, head, heartbeats) = match &self.workspace {
                    Some(w) => (
                        Keys::Prefix(format!("snapshots/{w}/")),
                        Keys::Exact(format!("heads/{w}")),
                        Keys::Prefix(format!("heartbeats/{w}/")),
                    ),
                    None => (
                        Keys::Prefix("snapshots/".into()),
                        Keys::Prefix("heads/".into()),
                        Keys::Prefix("heartbeats/".into()),
                    ),
                };
                vec![
                    Rule {
                        access: vec![Read, List],
                        keys: all(),
                    },
                    Rule {
                        access: vec![Create],
                        keys: vec![
                            Keys::Prefix("packs/".into()),
                            Keys::Prefix("index/records/".into()),
                            snapshots,
                        ],
                    },
                    Rule {
                        access: vec![Create, Replace],
                        keys: vec![head, heartbeats],
                    },
                ]
            }
        }
    }

    /// Whether this grant allows `access` to `key` (for [`Access::List`], `key` is the prefix
    /// listed: allowed when a rule covers every key under it).
    pub fn allows(&self, access: Access, key: &str) -> bool {
        self.rules().iter().any(|r| {
            r.access.contains(&access)
                && r.keys.iter().any(|k| match (access, k) {
                    (Access::List, Keys::Prefix(p)) => key.starts_with(p.as_str()),
                    (Access::List, Keys::Exact(_)) => false,
                    _ => k.covers(key),
                })
        })
    }

    /// `Ok` if allowed, else [`Error::Denied`] naming the key, the access and the grant.
    ///
    /// # Errors
    /// [`Error::Denied`].
    pub fn check(&self, access: Access, key: &str) -> Result<()> {
        if self.allows(access, key) {
            return Ok(());
        }
        Err(Error::Denied {
            key: key.to_string(),
            detail: format!("the {self} grant does not allow {} here", access.verb()),
        })
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.workspace {
            Some(w) => write!(f, "{}:{w}", self.role.name()),
            None => f.write_str(self.role.name()),
        }
    }
}

impl FromStr for Grant {
    type Err = Error;

    /// `writer`, `writer:WORKSPACE`, `reader` or `gc`, as `CAIRN_GRANT` spells it.
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let (role, ws) = match s.split_once(':') {
            Some((r, w)) => (r, Some(w)),
            None => (s, None),
        };
        Grant::new(role.parse()?, ws)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workspace_writer_creates_and_swaps_only_its_own_mutable_keys() {
        let g: Grant = "writer:ws-1".parse().expect("grant");
        assert!(g.allows(Access::Read, "packs/data/ab/cd"));
        assert!(g.allows(Access::List, "snapshots/other/"));
        assert!(g.allows(Access::Create, "packs/data/ab/cd"));
        assert!(g.allows(Access::Create, "index/records/ab/cd"));
        assert!(!g.allows(Access::Create, "index/compact/x/0000"));
        assert!(g.allows(Access::Create, "snapshots/ws-1/abc"));
        assert!(!g.allows(Access::Create, "snapshots/ws-10/abc"));
        assert!(!g.allows(Access::Create, "snapshots/ws-2/abc"));
        assert!(g.allows(Access::Replace, "heads/ws-1"));
        assert!(!g.allows(Access::Replace, "heads/ws-10"));
        assert!(g.allows(Access::Replace, "heartbeats/ws-1/pod-a"));
        assert!(!g.allows(Access::Replace, "heartbeats/ws-10/pod-a"));
        assert!(!g.allows(Access::Replace, "packs/data/ab/cd"));
        assert!(!g.allows(Access::Replace, "gc/state"));
        assert!(!g.allows(Access::Create, "config"));
        assert!(!g.allows(Access::Create, "keys/00"));
        for k in [
            "heads/ws-1",
            "snapshots/ws-1/abc",
            "packs/data/ab/cd",
            "heartbeats/ws-1/pod-a",
        ] {
            assert!(!g.allows(Access::Delete, k), "{k}");
        }
    }

    #[test]
    fn every_layout_key_is_either_immutable_or_mutable() {
        let keys = [
            "config",
            "keys/0123",
            "packs/data/ab/cd",
            "packs/meta/ab/cd",
            "index/records/ab/cd",
            "index/compact/00000001-0123/0000",
            "snapshots/w/0123",
            "heads/w",
            "heartbeats/w/pod",
            "gc/state",
            "gc/lease",
            "gc/clock-0123",
            "probe/conditional-writes-0123",
        ];
        for k in keys {
            let imm = IMMUTABLE.iter().filter(|l| l.keys().covers(k)).count();
            let mutable = MUTABLE.iter().filter(|l| l.keys().covers(k)).count();
            assert_eq!(imm + mutable, 1, "{k}");
        }
    }

    #[test]
    fn readers_only_read_and_gc_does_everything() {
        let r: Grant = "reader".parse().expect("grant");
        assert!(r.allows(Access::Read, "config") && r.allows(Access::List, ""));
        assert!(!r.allows(Access::Create, "packs/data/ab/cd") && !r.allows(Access::Delete, "x"));
        let g: Grant = "gc".parse().expect("grant");
        for a in [
            Access::Read,
            Access::List,
            Access::Create,
            Access::Replace,
            Access::Delete,
        ] {
            assert!(g.allows(a, "gc/state"));
        }
        assert!(
            g.allows(Access::Delete, "packs/data/ab/cd") && !g.allows(Access::Replace, "packs/data/ab/cd")
        );
        assert!(!g.allows(Access::Replace, "config") && !g.allows(Access::Replace, "snapshots/w/x"));
        assert!("reader:w".parse::<Grant>().is_err());
        assert!("writer:../x".parse::<Grant>().is_err());
        assert!("admin".parse::<Grant>().is_err());
    }
}
