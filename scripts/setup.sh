#!/usr/bin/env bash
# Installs what building and testing Cairn needs beyond the Rust toolchain, if it is missing:
# libclang (RocksDB's bindings are generated at build time), and the tools the test suite drives
# (npm and python3 build the corpus workspace; setpriv and unshare run the unprivileged-user and
# full-disk tests; xfsprogs, e2fsprogs, util-linux's fsfreeze and postgresql the live-workspace
# tests; python3 -m venv holds the S3 and GCS servers of scripts/test-servers.sh). Safe to run
# repeatedly; does nothing when everything is present.
set -euo pipefail

need=()
ldconfig -p 2>/dev/null | grep -q 'libclang[-.0-9]*\.so' || need+=(libclang-dev)
command -v npm >/dev/null || need+=(npm)
command -v python3 >/dev/null || need+=(python3 python3-venv)
command -v python3 >/dev/null && ! python3 -c 'import venv, ensurepip' 2>/dev/null && need+=(python3-venv)
command -v flock >/dev/null || need+=(util-linux)
command -v setpriv >/dev/null || need+=(util-linux)
command -v unshare >/dev/null || need+=(util-linux)
command -v fsfreeze >/dev/null || need+=(util-linux)
# The live-workspace tests: loop-mounted XFS and ext4 images, a real PostgreSQL, SQLite (Python's).
command -v mkfs.xfs >/dev/null || need+=(xfsprogs)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
ls /usr/lib/postgresql/*/bin/pg_amcheck >/dev/null 2>&1 || need+=(postgresql-contrib)

if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

bash "$(dirname "$0")/test-servers.sh"
