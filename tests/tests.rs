//! Cairn's scenario suite: one test binary, one module per area.
//!
//! - `access`    least privilege: the writer, reader and GC grants under every backend, the printed
//!   cloud policies, moto's IAM holding users to them
//! - `broker`    the credential broker over TLS: scoped credentials for valid tokens, clear refusals,
//!   no secret in its logs, a pod with only a token backing up and restoring
//! - `guard`     `cairn-guard`: the agent starts only on a whole workspace; signals, status, timeout
//! - `support`   temp repositories, tree builders, an independent tree comparer, the CLI runner
//! - `roundtrip` backup then restore over generated trees covering every metadata case
//! - `incremental` stat cache, subtree reuse, changed files, files torn while read
//! - `bad_input` corrupt, missing and truncated objects; unknown names; unreadable sources; full disk
//! - `hostile`   an agent swapping in symlinks, FIFOs, devices and mounts while backups and restores run
//! - `restore_safety` crafted snapshots and planted links never write outside the target
//! - `store`     the store contract (conformance suite) and URL parsing
//! - `cloud`     S3 and GCS against servers the suite starts; retries; injected faults; outages
//! - `cli`       the `initctl` binary: commands, env vars, JSON, exit codes
//! - `browse`    `ls`, `find`, `diff` and `dump` against the tree on disk, and what each reads
//! - `gc`        garbage collection: condemn, wait, sweep, resurrection; writers, forks, restores and GC at once
//! - `live`      live databases (PostgreSQL, SQLite) checkpointed on frozen XFS and ext4 images
//! - `lifecycle` the `sidecar` daemon and killed backups, with real processes and signals
//! - `prepare`   items prepared once per machine (corpus, images): one build for many askers
//! - `corpus`    the realistic agent workspace from `shared/corpus/make-workspace.sh`, end to end

mod support;

mod access;
mod bad_input;
mod broker;
mod browse;
mod cli;
mod cloud;
mod corpus;
mod encryption;
mod gc;
mod guard;
mod hostile;
mod incremental;
mod lifecycle;
mod live;
mod prepare;
mod restore_safety;
mod roundtrip;
mod store;
