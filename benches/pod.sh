#!/usr/bin/env bash
# Pod start and pod stop against a local S3 server (moto), on the corpus workspace:
#   start, empty volume:        initctl restore of the latest snapshot (a new pod);
#   stop, after one session:    SIGTERM to a running sidecar after one agent session of edits
#                               (make-workspace.sh --session), until it exits with the final
#                               snapshot sealed (the pod's grace period);
#   start, one session behind:  initctl restore onto a surviving volume that holds the snapshot
#                               before the session (fetches only what differs);
#   start, at the latest:       the init step re-run on a volume already up to date.
# Volumes on tmpfs (/dev/shm) as in s3-restore.sh; every restored volume is compared with the
# sidecar's volume by `diff -r` (not timed). In-process latency (CAIRN_FAULTS) is off unless
# DELAY_MS is set.
#
#   benches/pod.sh [--write]     --write appends the table to benches/RESULTS.md
set -euo pipefail
cd "$(dirname "$0")/.."
write=${1:-}
delay_ms=${DELAY_MS:-0}
rounds=${ROUNDS:-2}

# shellcheck source=benches/common.sh
source benches/common.sh
bench_dirs podbench
start_moto cairn-bench

export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
export AWS_ENDPOINT_URL=http://127.0.0.1:$s3_port CAIRN_STORE=s3://cairn-bench/pods CAIRN_QUIET=1
[ "$delay_ms" = 0 ] || export CAIRN_FAULTS="latency=${delay_ms}ms"
"$cairn" init >/dev/null

rows=()
row() { # row NAME WALL RSS_KIB DETAIL
  rows+=("| $1 | $2 | $(($3 / 1024)) | $4 |")
  printf '%-34s wall %6ss rss %5s MiB  %s\n' "$1" "$2" $(($3 / 1024)) "$4" >&2
}
# start NAME WS VOLUME: the init container, timed; prints its JSON action
start() {
  local t=$work/time.txt
  /usr/bin/time -f '%e %M' -o "$t" env CAIRN_WORKSPACE="$2" CAIRN_CACHE_DIR="$work/cache-$RANDOM$RANDOM" \
    "$cairn" restore --json "$3" >"$work/out.json"
  read -r wall rss <"$t"
  local detail
  detail=$(python3 -c 'import json,sys; v=json.load(open(sys.argv[1])); print("%s: fetched %.1f MiB, reused %.1f MiB" % (v["action"], v.get("fetched",0)/2**20, v.get("reused",0)/2**20))' "$work/out.json")
  row "$1" "$wall" "$rss" "$detail"
}
same() { diff -r --no-dereference -x .cairn-snapshot "$1" "$2" >/dev/null || { echo "MISMATCH: $1 vs $2" >&2; exit 1; }; }

for round in $(seq "$rounds"); do
  ws=ws-$round
  # The workspace's first pod: its volume is seeded from the corpus and backed up (not timed).
  live=$shm/live-$round
  cp -a "$corpus" "$live"
  CAIRN_WORKSPACE=$ws "$cairn" backup "$live" >/dev/null
  start "start, empty volume" "$ws" "$shm/behind-$round"
  same "$live" "$shm/behind-$round"
  # The pod that works: restored, its sidecar running, one agent session.
  rm -rf "$live"
  CAIRN_WORKSPACE=$ws CAIRN_CACHE_DIR=$work/sidecar-cache-$round "$cairn" restore "$live" >/dev/null
  # Under GNU time, for the sidecar's peak RSS over its life: idle, then the final checkpoint.
  CAIRN_WORKSPACE=$ws CAIRN_CACHE_DIR=$work/sidecar-cache-$round /usr/bin/time -f '%M' -o "$work/sc-rss" \
    "$sidecar" run --source "$live" --interval 0 \
    --listen 127.0.0.1:0 --control-socket "$work/sc-$round.sock" --log-format text --host pod-$round \
    >"$work/sidecar-$round.out" 2>"$work/sidecar-$round.err" &
  timer=$!
  for _ in $(seq 200); do grep -q "ready" "$work/sidecar-$round.err" && break; sleep 0.05; done
  sc=$(pgrep -P "$timer")
  SEED=$((round + 1)) bash ../shared/corpus/make-workspace.sh --session "$live" >/dev/null 2>&1
  t0=$(date +%s.%N)
  kill -TERM "$sc"
  wait "$timer"
  t1=$(date +%s.%N)
  rss=$(tail -1 "$work/sc-rss")
  detail=$(tail -1 "$work/sidecar-$round.out" | python3 -c 'import json,sys; v=json.loads(sys.stdin.read()); print("sealed=%s: read %d files, uploaded %.1f MiB" % (v["ok"], v["files_read"], v["uploaded_bytes"]/2**20))')
  row "stop, after one session (SIGTERM)" "$(python3 -c "print(f'{$t1 - $t0:.2f}')")" "$rss" "$detail"
  start "start, one session behind" "$ws" "$shm/behind-$round"
  same "$live" "$shm/behind-$round"
  start "start, at the latest (re-run)" "$ws" "$shm/behind-$round"
  rm -rf "$live" "$shm/behind-$round"
done

if [ "$write" = "--write" ]; then
  {
    echo
    echo "## Pod start and stop from S3 ($(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD))"
    echo
    echo "\`benches/pod.sh --write\`$([ "$delay_ms" = 0 ] || echo " with DELAY_MS=$delay_ms"): corpus workspace ($(du -sh "$corpus" | cut -f1), $(find "$corpus" | wc -l) entries),"
    echo "moto $("$py" -c 'import moto; print(moto.__version__)') on loopback, volumes on tmpfs, a fresh local cache for every"
    echo "init step (as a new pod has), one make-workspace.sh session per round; $rounds rounds in order. The stop's RSS is"
    echo "the sidecar's peak over its life (idle, then the final checkpoint); its wall time runs from SIGTERM to exit."
    echo
    echo "| step | wall s | peak RSS MiB | what it did |"
    echo "|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
  } >>benches/RESULTS.md
fi
