#!/usr/bin/env bash
# A/B of two initctl builds on the corpus workspace, the same data and machine in one run, rounds
# alternating A and B so drift hits both alike:
#   full backup (fresh repository and cache), no-change backup (stat cache warm), full restore into
#   an empty directory on tmpfs, and the init container's "nothing to do" restore (the ctime walk).
# Prints the median wall and CPU seconds of each; with --write appends the table to RESULTS.md.
#
#   benches/ab.sh A_INITCTL B_INITCTL [ROUNDS] [--write]
#
# Build A from another commit with `git worktree add` and `cargo build --release -p initctl`, and
# copy the binary aside before building B.
set -euo pipefail
cd "$(dirname "$0")/.."
a=$(realpath "$1") b=$(realpath "$2") rounds=${3:-3} write=${4:-}
[ "$rounds" = --write ] && { rounds=3; write=--write; }

# shellcheck source=benches/common.sh
source benches/common.sh
bench_dirs ab
cp -a "$corpus" "$work/ws"
export CAIRN_QUIET=1 CAIRN_WORKSPACE=bench

declare -A wall cpu
# run KEY -- command...: records wall and CPU seconds of one run under KEY.
run() {
  local key=$1
  shift 2
  /usr/bin/time -f '%e %U %S' -o "$work/t" "$@" >/dev/null
  read -r w u s <"$work/t"
  wall[$key]+="$w "
  cpu[$key]+="$(python3 -c "print(f'{$u + $s:.2f}')") "
}

for round in $(seq "$rounds"); do
  for side in A B; do
    bin=$a
    [ $side = B ] && bin=$b
    d=$work/$side-$round
    mkdir -p "$d"
    export CAIRN_STORE=$d/store CAIRN_CACHE_DIR=$d/cache
    "$bin" init >/dev/null
    run "full backup|$side" -- "$bin" backup "$work/ws"
    run "no-change backup|$side" -- "$bin" backup "$work/ws"
    rm -rf "$CAIRN_CACHE_DIR"
    # Restores into tmpfs, where they are CPU-bound (a disk adds its own noise).
    run "full restore|$side" -- "$bin" restore --snapshot latest "$shm/r"
    rm -rf "$shm/r"
    # The init container on a volume that holds the head, unchanged: the ctime walk alone.
    CAIRN_CACHE_DIR=$d/cache2 "$bin" restore "$shm/v" >/dev/null
    run "restore, nothing to do|$side" -- env CAIRN_CACHE_DIR="$d/cache2" "$bin" restore "$shm/v"
    rm -rf "$d" "$shm/v"
  done
  echo "round $round done" >&2
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
table="| operation | A wall s | B wall s | A CPU s | B CPU s |"$'\n'"|---|---|---|---|---|"
for op in "full backup" "no-change backup" "full restore" "restore, nothing to do"; do
  row="| $op | $(median <<<"${wall[$op|A]}") | $(median <<<"${wall[$op|B]}") | $(median <<<"${cpu[$op|A]}") | $(median <<<"${cpu[$op|B]}") |"
  table+=$'\n'"$row"
done
echo "$table"
if [ "$write" = --write ]; then
  {
    echo
    echo "### A/B $(date -u +%Y-%m-%d): \`benches/ab.sh A B $rounds\`"
    echo
    echo "A = $a, B = $b; corpus workspace SEED=1, medians of $rounds alternating rounds; store on disk, restores into tmpfs."
    echo
    echo "$table"
  } >>benches/RESULTS.md
fi
