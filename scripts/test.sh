#!/usr/bin/env bash
# The whole test suite: installs missing system packages, then runs every test of every crate.
# The corpus end-to-end test builds its workspace once (npm and pip, a few minutes) and caches it
# in ~/.cache/cairn-corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec cargo test --workspace "$@"
