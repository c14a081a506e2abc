#!/usr/bin/env bash
# Checkpoints of a live workspace (issue 13): the corpus workspace with a PostgreSQL cluster under
# pgbench load, on a loop-mounted XFS and ext4 image of its own (the workspace is the file system's
# root, as a PersistentVolume is), checkpointed with `initctl backup` (freeze auto):
#   - the still corpus (no database yet), read live (--freeze never) and frozen, with and without
#     the live pre-pass (--prepass), full and unchanged;
#   - with the database running: the first checkpoint, one after an agent session
#     (make-workspace.sh --session) ran beside the load, then CHECKPOINTS more two seconds apart.
# Prints, per checkpoint, the wall seconds, the milliseconds the file system was frozen, the files
# read and whether it was point in time; with --write appends the tables to RESULTS.md.
#
#   benches/live.sh [CHECKPOINTS] [--write]
set -euo pipefail
cd "$(dirname "$0")/.."
checkpoints=${1:-4} write=${2:-}
[ "$checkpoints" = --write ] && { checkpoints=4; write=--write; }

# shellcheck source=benches/common.sh
source benches/common.sh
bench_dirs live
# PostgreSQL runs as its own user: it must reach the images mounted below.
chmod 755 "$work"
script=$(realpath ../shared/corpus/make-workspace.sh)
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
export CAIRN_QUIET=1 CAIRN_WORKSPACE=bench
as_pg() { setpriv --reuid=postgres --regid=postgres --clear-groups "$pgbin/$1" "${@:2}"; }
mounts=()
trap 'kill "${bench:-0}" 2>/dev/null || true; [ -n "${pgdata:-}" ] && as_pg pg_ctl -D "$pgdata" -m immediate stop >/dev/null 2>&1 || true;
      for m in "${mounts[@]}"; do fsfreeze -u "$m" 2>/dev/null || true; umount "$m" 2>/dev/null || true; done;
      [ -n "${KEEP:-}" ] || rm -rf "$work" "$shm"' EXIT

# row FS WHAT JSON: one table row from `initctl backup --json`.
rows=""
row() {
  rows+=$(python3 - "$1" "$2" "$3" <<'EOF'
import json, sys
fs, what, line = sys.argv[1], sys.argv[2], sys.argv[3]
v = json.loads(line)
print(f"| {fs} | {what} | {v['seconds']:.2f} | {v['prepass_seconds']:.2f} | {v['frozen_seconds'] * 1000:.0f} | {v['files_read']} | "
      f"{v['bytes_read'] / 2**20:.0f} | {'yes' if v['point_in_time'] else 'no: ' + str(v['not_point_in_time_because'])} |")
EOF
)$'\n'
  echo "$1 $2: $3" >&2
}
backup() { "$cairn" --json backup "$@"; }

for fs in xfs ext4; do
  img=$work/$fs.img mnt=$work/$fs
  truncate -s 6G "$img"
  case $fs in
    xfs) mkfs.xfs -q "$img" ;;
    ext4) mkfs.ext4 -q -F "$img" ;;
  esac
  mkdir -p "$mnt"
  mount -o loop "$img" "$mnt"
  mounts+=("$mnt")
  cp -a "$corpus/." "$mnt/"
  sync

  # The still corpus: read live, then frozen with and without the pre-pass (separate
  # repositories, cold and then warm caches).
  for mode in never auto:true auto:false; do
    freeze=${mode%:*} prepass=${mode#*:}
    [ "$mode" = never ] && prepass=true
    export CAIRN_STORE=$work/store-$fs-$mode CAIRN_CACHE_DIR=$work/cache-$fs-$mode
    "$cairn" init >/dev/null
    what="freeze $freeze"
    [ "$freeze" = auto ] && what+=", pre-pass $prepass"
    row "$fs" "still corpus, full, $what" "$(backup --freeze "$freeze" --prepass "$prepass" "$mnt")"
    row "$fs" "still corpus, unchanged, $what" "$(backup --freeze "$freeze" --prepass "$prepass" "$mnt")"
    # The second unchanged one: the last read nothing, so an idle workspace found unchanged is
    # not frozen (with the pre-pass).
    row "$fs" "still corpus, unchanged again, $what" "$(backup --freeze "$freeze" --prepass "$prepass" "$mnt")"
  done

  # The database, under load beside the agent.
  pgdata=$mnt/pgdata sock=$work/sock-$fs
  mkdir -p "$pgdata" "$sock"
  chown postgres:postgres "$pgdata" "$sock"
  as_pg initdb --data-checksums -A trust -U postgres -D "$pgdata" >/dev/null
  port=$(free_port)
  as_pg pg_ctl -D "$pgdata" -l "$sock/log" -w -o "-p $port -k $sock -c listen_addresses=" start >/dev/null
  export PGHOST=$sock PGPORT=$port PGUSER=postgres
  as_pg pgbench -q -i -s 10 postgres >/dev/null 2>&1
  as_pg pgbench -c 2 -j 1 -R 200 -T 3600 postgres >/dev/null 2>&1 &
  bench=$!
  sleep 2
  row "$fs" "with PostgreSQL under pgbench, first" "$(backup "$mnt")"
  SEED=1 bash "$script" --session "$mnt" >"$work/session.log" 2>&1
  row "$fs" "after an agent session" "$(backup "$mnt")"
  for i in $(seq "$checkpoints"); do
    sleep 2
    row "$fs" "database only, $i" "$(backup "$mnt")"
  done
  kill "$bench"
  wait "$bench" 2>/dev/null || true
  bench=
  as_pg pg_ctl -D "$pgdata" -m fast stop >/dev/null
  pgdata=
  umount "$mnt"
done

table="| fs | checkpoint | wall s | pre-pass s | frozen ms | files read | MiB read | point in time |"$'\n'"|---|---|---|---|---|---|---|---|"$'\n'"$rows"
echo "$table"
if [ "$write" = --write ]; then
  {
    echo
    echo "## Live workspace checkpoints ($(date -u +%F), commit $(git rev-parse --short HEAD))"
    echo
    echo "\`benches/live.sh $checkpoints --write\`: corpus SEED=1 on a 6 GiB loop-mounted image, PostgreSQL"
    echo "$("$pgbin/postgres" --version | awk '{print $3}') (pgbench scale 10, 2 clients at 200 tps) in \`pgdata/\`, release initctl, local store and"
    echo "cache on the root disk."
    echo
    echo "$table"
  } >>benches/RESULTS.md
fi
