#!/usr/bin/env bash
# Keeps the build cache from filling the disk: every debug link of a test or binary is ~0.9 GB
# with debuginfo, and cargo never removes the ones an older source made. Deletes linked
# executables in the target's deps/ (never libraries: those are what makes a warm build fast) that
# are older than a day; cargo links them again if they are still wanted. Safe to run repeatedly.
set -euo pipefail
target="${CARGO_TARGET_DIR:-target}"
for deps in "$target"/debug/deps "$target"/release/deps; do
  [ -d "$deps" ] || continue
  find "$deps" -maxdepth 1 -type f -perm -u+x ! -name '*.so' ! -name '*.rlib' ! -name '*.rmeta' \
    ! -name '*.d' -mtime +0 -delete
done
