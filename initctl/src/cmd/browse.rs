//! `initctl ls`, `find`, `diff` and `dump`: a snapshot's content without restoring it.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;

use anyhow::{Context, Result};
use cairn_engine::formats::{Entry, Node};
use cairn_engine::{diff, entry_size, Change, SnapshotView};
use clap::Args;

use crate::{exit, output, Global};

/// `WS[@SNAPSHOT]`, or `@SNAPSHOT` for the workspace of `--workspace`.
#[derive(Clone, Debug)]
pub struct SnapshotRef {
    workspace: Option<String>,
    snapshot: Option<String>,
}

impl std::str::FromStr for SnapshotRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (w, snap) = match s.split_once('@') {
            Some((w, snap)) => (w, Some(snap)),
            None => (s, None),
        };
        if snap == Some("") {
            return Err(format!(
                "{s:?}: give WORKSPACE@SNAPSHOT (an id prefix or latest), or WORKSPACE"
            ));
        }
        Ok(SnapshotRef {
            workspace: (!w.is_empty()).then(|| w.to_string()),
            snapshot: snap.map(str::to_string),
        })
    }
}

impl SnapshotRef {
    async fn open<'r>(
        &self,
        repo: &'r cairn_engine::Repo,
        default: &Option<String>,
    ) -> Result<SnapshotView<'r>> {
        let w = self
            .workspace
            .as_ref()
            .or(default.as_ref())
            .context("name the workspace: WORKSPACE[@SNAPSHOT], or --workspace / CAIRN_WORKSPACE")?;
        Ok(SnapshotView::open(repo, w, self.snapshot.as_deref()).await?)
    }
}

/// List the entries of a snapshot's directory, like `ls -l`.
#[derive(Args, Debug)]
pub struct LsArgs {
    /// The snapshot: WORKSPACE[@SNAPSHOT] (default: the workspace's latest).
    snapshot: SnapshotRef,
    /// A path inside the snapshot (default: its root).
    #[arg(default_value = "")]
    path: std::ffi::OsString,
    /// List everything below the path.
    #[arg(long, short = 'R')]
    recursive: bool,
    /// The workspace when SNAPSHOT is given as @SNAPSHOT.
    #[arg(long, short, env = "CAIRN_WORKSPACE")]
    workspace: Option<String>,
}

/// Find entries whose name (or, for a pattern with a `/`, whose path) matches a glob.
#[derive(Args, Debug)]
pub struct FindArgs {
    /// The snapshot: WORKSPACE[@SNAPSHOT].
    snapshot: SnapshotRef,
    /// A glob: `*.log`, `src/**/*.rs`, `{a,b}`; `*` does not cross `/`, `**` does.
    pattern: String,
    /// The workspace when SNAPSHOT is given as @SNAPSHOT.
    #[arg(long, short, env = "CAIRN_WORKSPACE")]
    workspace: Option<String>,
}

/// Show what changed between two snapshots.
#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The earlier snapshot: WORKSPACE@SNAPSHOT.
    from: SnapshotRef,
    /// The later one (default: the workspace's latest).
    to: Option<SnapshotRef>,
    /// Only below this path.
    #[arg(long, default_value = "")]
    path: std::ffi::OsString,
    /// The workspace when a snapshot is given as @SNAPSHOT.
    #[arg(long, short, env = "CAIRN_WORKSPACE")]
    workspace: Option<String>,
}

/// Write a file's bytes to stdout, or a directory as a tar stream.
#[derive(Args, Debug)]
pub struct DumpArgs {
    /// The snapshot: WORKSPACE[@SNAPSHOT].
    snapshot: SnapshotRef,
    /// The file or directory inside the snapshot.
    path: std::ffi::OsString,
    /// Write a tar stream even for a single file.
    #[arg(long)]
    tar: bool,
    /// The workspace when SNAPSHOT is given as @SNAPSHOT.
    #[arg(long, short, env = "CAIRN_WORKSPACE")]
    workspace: Option<String>,
}

fn kind(e: &Entry) -> (&'static str, char) {
    match &e.node {
        Node::File { .. } => ("file", '-'),
        Node::Dir { .. } => ("dir", 'd'),
        Node::Symlink { .. } => ("symlink", 'l'),
        Node::Fifo => ("fifo", 'p'),
        Node::CharDevice { .. } => ("char", 'c'),
        Node::BlockDevice { .. } => ("block", 'b'),
    }
}

/// `rwxr-xr-x` with setuid, setgid and sticky, as `ls -l` shows them.
fn mode_string(mode: u32) -> String {
    let mut s = String::with_capacity(9);
    for (i, shift) in [6u32, 3, 0].iter().enumerate() {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let special = match i {
            0 => mode & 0o4000 != 0,
            1 => mode & 0o2000 != 0,
            _ => mode & 0o1000 != 0,
        };
        let x = bits & 1 != 0;
        s.push(match (special, x, i) {
            (true, true, 2) => 't',
            (true, false, 2) => 'T',
            (true, true, _) => 's',
            (true, false, _) => 'S',
            (false, true, _) => 'x',
            (false, false, _) => '-',
        });
    }
    s
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A name for a terminal: control characters (C0, DEL, C1) as `\xNN`, like `ls -b`, so a name
/// the agent chose cannot forge lines or drive the terminal.
fn shown(b: &[u8]) -> String {
    let mut out = String::new();
    for c in String::from_utf8_lossy(b).chars() {
        if c.is_control() || c == '\\' {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

fn entry_json(path: &[u8], e: &Entry) -> serde_json::Value {
    let mut v = serde_json::json!({
        "path": lossy(path), "type": kind(e).0, "mode": format!("{:04o}", e.meta.mode),
        "uid": e.meta.uid, "gid": e.meta.gid, "size": entry_size(e), "mtime": e.meta.mtime.to_rfc3339(),
    });
    if std::str::from_utf8(path).is_err() {
        v["path_bytes"] = serde_json::json!(path);
    }
    if let Node::Symlink { target } = &e.node {
        v["target"] = serde_json::json!(lossy(target));
    }
    v
}

fn entry_line(path: &[u8], e: &Entry) -> String {
    let target = match &e.node {
        Node::Symlink { target } => format!(" -> {}", shown(target)),
        _ => String::new(),
    };
    format!(
        "{}{} {:>5} {:>5} {:>12} {} {}{target}",
        kind(e).1,
        mode_string(e.meta.mode),
        e.meta.uid,
        e.meta.gid,
        entry_size(e),
        e.meta.mtime.to_rfc3339(),
        if path.is_empty() { ".".into() } else { shown(path) }
    )
}

fn requests() -> serde_json::Value {
    serde_json::to_value(cairn_engine::request_counts()).unwrap_or_default()
}

/// Entries as one JSON document (with the requests made) or `ls -l` lines.
fn print_entries(g: &Global, view: &SnapshotView<'_>, entries: &[(Vec<u8>, Entry)]) -> Result<()> {
    if g.json {
        output::json(&serde_json::json!({
            "workspace": view.workspace, "snapshot": view.id.to_hex(),
            "entries": entries.iter().map(|(p, e)| entry_json(p, e)).collect::<Vec<_>>(),
            "requests": requests(),
        }));
    } else {
        let mut out = std::io::stdout().lock();
        for (p, e) in entries {
            writeln!(out, "{}", entry_line(p, e))?;
        }
    }
    Ok(())
}

pub async fn ls(g: &Global, a: LsArgs) -> Result<u8> {
    let repo = super::open(g).await?;
    let mut view = a.snapshot.open(&repo, &a.workspace).await?;
    let path = cairn_engine::normalize_path(a.path.as_bytes())?;
    if a.recursive {
        view.load_all_trees().await?;
    }
    let entry = view.entry(&path).await?;
    let mut listed: Vec<(Vec<u8>, Entry)> = Vec::new();
    if a.recursive {
        view.walk(&path, &entry, &mut |p, e| {
            listed.push((p.to_vec(), e.clone()));
            Ok(())
        })
        .await?;
    } else if let Node::Dir { tree } = &entry.node {
        let tree = view.tree(tree).await?;
        listed.extend(
            tree.entries
                .iter()
                .map(|e| (cairn_engine::join_path(&path, &e.name), e.clone())),
        );
    } else {
        listed.push((path.clone(), entry));
    }
    print_entries(g, &view, &listed)?;
    Ok(exit::OK)
}

pub async fn find(g: &Global, a: FindArgs) -> Result<u8> {
    let glob = globset::GlobBuilder::new(&a.pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .with_context(|| format!("pattern {:?}", a.pattern))?
        .compile_matcher();
    let whole_path = a.pattern.contains('/');
    let repo = super::open(g).await?;
    let mut view = a.snapshot.open(&repo, &a.workspace).await?;
    view.load_all_trees().await?;
    let root = view.root();
    let mut found: Vec<(Vec<u8>, Entry)> = Vec::new();
    view.walk(b"", &root, &mut |p, e| {
        let subject: &[u8] = if whole_path { p } else { &e.name };
        if !p.is_empty() && glob.is_match(std::path::Path::new(std::ffi::OsStr::from_bytes(subject))) {
            found.push((p.to_vec(), e.clone()));
        }
        Ok(())
    })
    .await?;
    print_entries(g, &view, &found)?;
    Ok(if found.is_empty() { exit::FAILED } else { exit::OK })
}

pub async fn diff_cmd(g: &Global, a: DiffArgs) -> Result<u8> {
    let repo = super::open(g).await?;
    let mut from = a.from.open(&repo, &a.workspace).await?;
    let to_ref = match &a.to {
        Some(t) => t.clone(),
        None => SnapshotRef {
            workspace: Some(from.workspace.clone()),
            snapshot: None,
        },
    };
    let mut to = to_ref.open(&repo, &a.workspace).await?;
    from.load_all_trees().await?;
    to.load_trees_sharing(&from).await?;
    let path = cairn_engine::normalize_path(a.path.as_bytes())?;
    let (ea, eb) = (from.lookup(&path).await?, to.lookup(&path).await?);
    if ea.is_none() && eb.is_none() {
        // Named in neither: say so (from the first).
        from.entry(&path).await?;
    }
    let changes = diff(&from, &to, &path, ea.as_ref(), eb.as_ref()).await?;
    let (mut added, mut removed, mut modified, mut metadata) = (0u64, 0u64, 0u64, 0u64);
    let (mut bytes_added, mut bytes_removed) = (0u64, 0u64);
    for d in &changes {
        let (before, after) = (
            d.before.as_ref().map_or(0, entry_size),
            d.after.as_ref().map_or(0, entry_size),
        );
        match d.change {
            Change::Added => added += 1,
            Change::Removed => removed += 1,
            Change::Modified => modified += 1,
            Change::Metadata => metadata += 1,
        }
        bytes_added += after.saturating_sub(before);
        bytes_removed += before.saturating_sub(after);
    }
    if g.json {
        let list: Vec<_> = changes
            .iter()
            .map(|d| {
                serde_json::json!({
                    "path": lossy(&d.path), "change": d.change,
                    "type_before": d.before.as_ref().map(|e| kind(e).0),
                    "type_after": d.after.as_ref().map(|e| kind(e).0),
                    "size_before": d.before.as_ref().map(entry_size),
                    "size_after": d.after.as_ref().map(entry_size),
                })
            })
            .collect();
        output::json(&serde_json::json!({
            "from": from.id.to_hex(), "to": to.id.to_hex(), "changes": list,
            "added": added, "removed": removed, "modified": modified, "metadata": metadata,
            "bytes_added": bytes_added, "bytes_removed": bytes_removed, "requests": requests(),
        }));
    } else {
        let mut out = std::io::stdout().lock();
        for d in &changes {
            let type_changed = matches!((&d.before, &d.after), (Some(x), Some(y)) if kind(x).0 != kind(y).0);
            let mark = match d.change {
                Change::Added => "+",
                Change::Removed => "-",
                Change::Modified if type_changed => "T",
                Change::Modified => "M",
                Change::Metadata => "U",
            };
            let dir = d
                .after
                .as_ref()
                .or(d.before.as_ref())
                .is_some_and(|e| matches!(e.node, Node::Dir { .. }));
            writeln!(out, "{mark}    {}{}", shown(&d.path), if dir { "/" } else { "" })?;
        }
        if !g.quiet {
            eprintln!(
                "{} to {}: {added} added, {removed} removed, {modified} modified, {metadata} metadata only; +{} -{}",
                from.id.short(),
                to.id.short(),
                output::bytes(bytes_added),
                output::bytes(bytes_removed)
            );
        }
    }
    Ok(exit::OK)
}

pub async fn dump(g: &Global, a: DumpArgs) -> Result<u8> {
    let repo = super::open(g).await?;
    let mut view = a.snapshot.open(&repo, &a.workspace).await?;
    let path = cairn_engine::normalize_path(a.path.as_bytes())?;
    let mut entry = view.entry(&path).await?;
    if matches!(entry.node, Node::Dir { .. }) {
        // A directory's walk reads its trees: a few whole metadata packs, not one per directory.
        view.load_all_trees().await?;
        entry = view.entry(&path).await?;
    }
    let stdout = std::io::stdout();
    let written = if matches!(entry.node, Node::File { .. }) && !a.tar {
        let mut n = 0u64;
        view.read_file(&entry, |piece| {
            n += piece.len() as u64;
            let r = stdout.lock().write_all(&piece);
            async move { r }
        })
        .await?;
        stdout.lock().flush()?;
        n
    } else {
        let counter = Counting {
            inner: std::io::BufWriter::with_capacity(1 << 20, stdout),
            n: 0,
        };
        let mut w = view.dump_tar(&path, &entry, counter).await?;
        w.flush()?;
        w.n
    };
    // stdout holds the bytes: the summary goes to stderr.
    if g.json {
        eprintln!(
            "{}",
            serde_json::json!({ "path": a.path.to_string_lossy(), "bytes": written, "requests": requests() })
        );
    }
    Ok(exit::OK)
}

/// Counts what passes through to stdout.
struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
