#!/usr/bin/env bash
# The whole test suite: installs missing system packages and the test servers, builds every test
# of every crate, then runs them; prints how long each phase took. The corpus tests build their
# workspace once per machine (npm and pip, a few minutes) and cache it in ~/.cache/cairn-corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/phases.sh
phase setup bash scripts/setup.sh
phase build cargo test --workspace --no-run "$@"
phase tests cargo test --workspace "$@"
