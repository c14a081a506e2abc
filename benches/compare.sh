#!/usr/bin/env bash
# End-to-end comparison of Cairn and restic on the same agent workspace, in the same run:
#   full backup, no-change backup, backup after an agent session, full restore (latest),
# each with wall time, CPU time (user+sys), peak RSS, and repository size after the operation.
# Both restores are checked against the workspace with `diff -r` (not timed).
#
#   benches/compare.sh [--write]     --write appends the table to benches/RESULTS.md
#
# Needs restic (Debian package) and the corpus workspace (built and cached on first use in
# ~/.cache/cairn-corpus, like the test suite). Page cache is warm for both tools alike.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
write=${1:-}

# shellcheck source=benches/common.sh
source benches/common.sh

work=$(mktemp -d "${TMPDIR:-/tmp}/cairn-compare.XXXXXX")
[ -n "${KEEP:-}" ] || trap 'rm -rf "$work"' EXIT
cp -a "$corpus" "$work/ws"
ws=$work/ws
export CAIRN_STORE=$work/cairn-repo CAIRN_CACHE_DIR=$work/cairn-cache CAIRN_WORKSPACE=bench CAIRN_QUIET=1
export RESTIC_REPOSITORY=$work/restic-repo RESTIC_PASSWORD=bench RESTIC_CACHE_DIR=$work/restic-cache
"$cairn" init >/dev/null
restic init -q --repository-version 2

rows=()
# measure TOOL OP REPO -- command...: runs once under /usr/bin/time, records a table row.
measure() {
  local tool=$1 op=$2 repo=$3; shift 4
  local t=$work/time.txt
  /usr/bin/time -f '%e %U %S %M' -o "$t" "$@" >/dev/null
  read -r wall user sys rss <"$t"
  local cpu size
  cpu=$(python3 -c "print(f'{$user + $sys:.2f}')")
  size=$(du -sb "$repo" | cut -f1)
  rows+=("| $op | $tool | $wall | $cpu | $((rss / 1024)) | $((size / 1048576)) |")
  printf '%-22s %-7s wall %6ss cpu %6ss rss %5s MiB repo %5s MiB\n' "$op" "$tool" "$wall" "$cpu" $((rss / 1024)) $((size / 1048576)) >&2
}

both() { # both OP: runs the Cairn and restic versions of OP
  case $1 in
    backup)
      measure cairn "$2" "$CAIRN_STORE" -- "$cairn" backup "$ws"
      measure restic "$2" "$RESTIC_REPOSITORY" -- restic backup -q "$ws"
      ;;
    restore)
      measure cairn "$2" "$CAIRN_STORE" -- "$cairn" restore "$work/r-cairn"
      measure restic "$2" "$RESTIC_REPOSITORY" -- restic restore -q latest --target "$work/r-restic"
      ;;
  esac
}

both backup "full backup"
both backup "no-change backup"
SEED=1 bash ../shared/corpus/make-workspace.sh --session "$ws" >/dev/null 2>&1
both backup "backup after session"
both restore "full restore"

diff -r --no-dereference -x .cairn-snapshot "$ws" "$work/r-cairn" >&2 || { echo "cairn restore differs from the workspace" >&2; exit 1; }
diff -r --no-dereference "$ws" "$work/r-restic${ws}" >&2 || echo "note: restic restore differs from the workspace" >&2

files=$(find "$ws" | wc -l)
bytes=$(du -sb "$ws" | cut -f1)
table=$(
  echo "| operation | tool | wall s | cpu s | peak RSS MiB | repo MiB |"
  echo "|---|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
)
echo "$table"
if [ "$write" = "--write" ]; then
  {
    echo
    echo "## $(date -u +%Y-%m-%d) compare.sh ($(git -C "$root" rev-parse --short HEAD))"
    echo
    echo "Command: \`benches/compare.sh --write\`. Machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB,"
    echo "$(restic version | cut -d' ' -f1-2), Cairn release build. Workspace: corpus SEED=1,"
    echo "$files entries, $((bytes / 1048576)) MiB; one agent session between the 2nd and 3rd backup."
    echo "Warm page cache for both tools. Both restores compared with \`diff -r\`."
    echo
    echo "$table"
  } >>benches/RESULTS.md
fi
