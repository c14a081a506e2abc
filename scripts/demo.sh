#!/usr/bin/env bash
# Builds Cairn and runs its main job on the embedded local store: init a repository, back up a
# directory (default: a copy of this repository's committed sources), back it up again
# (incremental), list snapshots, run a restore drill that verifies every byte, and check every
# pack. Everything lives in a temp dir that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -q -p initctl
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin=$target_dir/release/initctl
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ $# -gt 0 ]; then
  src=$(realpath "$1")
else
  src=$work/sources
  mkdir -p "$src" && git archive HEAD | tar -x -C "$src"
fi
export CAIRN_STORE=$work/store CAIRN_CACHE_DIR=$work/cache CAIRN_WORKSPACE=demo
# The repository is encrypted; its key file is 32 random bytes (in a pod: a mounted Secret).
(umask 077 && head -c 32 /dev/urandom >"$work/cairn.key")
export CAIRN_KEY_FILE=$work/cairn.key
set -x
"$bin" init
"$bin" key list
"$bin" backup "$src"
"$bin" backup "$src"
"$bin" snapshots
"$bin" drill --scratch "$work"
"$bin" check --read-data
