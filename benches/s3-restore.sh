#!/usr/bin/env bash
# Restore from object storage with latency, in one run on the same corpus workspace:
#   Cairn from the local store;
#   Cairn from a local S3 server (moto) with 20 ms added to every request;
#   restic from the same S3 server with the same 20 ms;
#   Cairn from the S3 server directly, and with the 20 ms injected in-process (CAIRN_FAULTS), which
#   shows the latency cost without the proxy's CPU (restic has no such knob).
# The latency comes from benches/latency-proxy (Rust, one thread), which delays every request on its way to the
# server, so both tools see the same network. Each restore starts with an empty local cache, as a
# new pod does, and is checked with `diff -r` (not timed). Targets are on tmpfs (/dev/shm), so the
# numbers measure fetching and verifying, not this machine's ext4 inode allocation (which made
# disk-target restores vary 2.6-12 s between runs, see RESULTS.md).
#
#   benches/s3-restore.sh [--write]     --write appends the table to benches/RESULTS.md
set -euo pipefail
cd "$(dirname "$0")/.."
write=${1:-}
delay_ms=${DELAY_MS:-20}
rounds=${ROUNDS:-2}

# shellcheck source=benches/common.sh
source benches/common.sh
bench_dirs s3bench
start_moto cairn-bench restic-bench
proxy_port=$(free_port)
cargo build --release -q -p latency-proxy
"$target_dir/release/latency-proxy" "$proxy_port" "$s3_port" "$delay_ms" >"$work/proxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$proxy_port/" && break; sleep 0.1; done

export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
export CAIRN_WORKSPACE=bench CAIRN_QUIET=1 RESTIC_PASSWORD=bench
direct=http://127.0.0.1:$s3_port
slow=http://127.0.0.1:$proxy_port
ws=$corpus

# Repositories: written directly (no latency), not timed.
CAIRN_STORE=$work/local CAIRN_CACHE_DIR=$work/c0 "$cairn" init >/dev/null
CAIRN_STORE=$work/local CAIRN_CACHE_DIR=$work/c0 "$cairn" backup "$ws" >/dev/null
AWS_ENDPOINT_URL=$direct CAIRN_STORE=s3://cairn-bench/repo CAIRN_CACHE_DIR=$work/c1 "$cairn" init >/dev/null
AWS_ENDPOINT_URL=$direct CAIRN_STORE=s3://cairn-bench/repo CAIRN_CACHE_DIR=$work/c1 "$cairn" backup "$ws" >/dev/null
restic -q -r "s3:$direct/restic-bench" init --repository-version 2 >/dev/null
restic -q -r "s3:$direct/restic-bench" --cache-dir "$work/rc0" backup "$ws" >/dev/null

rows=()
n=0
# measure NAME -- command... (the restore target is the last argument)
measure() {
  local name=$1; shift 2
  local t=$work/time.txt target=${*: -1}
  /usr/bin/time -f '%e %U %S %M' -o "$t" "$@" >/dev/null
  read -r wall user sys rss <"$t"
  local cpu
  cpu=$(python3 -c "print(f'{$user + $sys:.2f}')")
  local got=$target
  [ -d "$target$ws" ] && got=$target$ws  # restic restores the absolute path under the target
  diff -r --no-dereference -x .cairn-snapshot "$ws" "$got" >/dev/null || { echo "MISMATCH: $name restored something else" >&2; exit 1; }
  rows+=("| $name | $wall | $cpu | $((rss / 1024)) |")
  printf '%-36s wall %6ss cpu %6ss rss %5s MiB\n' "$name" "$wall" "$cpu" $((rss / 1024)) >&2
  rm -rf "$target"
}

for round in $(seq "$rounds"); do
  n=$((n + 1))
  measure "cairn, local store" -- env CAIRN_STORE="$work/local" CAIRN_CACHE_DIR="$work/cache-$n-a" \
    "$cairn" restore "$shm/a"
  measure "cairn, S3 + ${delay_ms} ms/request" -- env AWS_ENDPOINT_URL="$slow" CAIRN_STORE=s3://cairn-bench/repo \
    CAIRN_CACHE_DIR="$work/cache-$n-b" "$cairn" restore "$shm/b"
  measure "restic, S3 + ${delay_ms} ms/request" -- restic -q -r "s3:$slow/restic-bench" --cache-dir "$work/rcache-$n" \
    restore latest --target "$shm/c"
  measure "cairn, S3 direct (no added latency)" -- env AWS_ENDPOINT_URL="$direct" CAIRN_STORE=s3://cairn-bench/repo \
    CAIRN_CACHE_DIR="$work/cache-$n-d" "$cairn" restore "$shm/d"
  measure "cairn, S3 + ${delay_ms} ms/request in-process" -- env AWS_ENDPOINT_URL="$direct" CAIRN_STORE=s3://cairn-bench/repo \
    CAIRN_FAULTS="latency=${delay_ms}ms" CAIRN_CACHE_DIR="$work/cache-$n-e" "$cairn" restore "$shm/e"
done

if [ "$write" = "--write" ]; then
  {
    echo
    echo "## Restore from S3 with ${delay_ms} ms per request ($(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD))"
    echo
    echo "\`benches/s3-restore.sh --write\`: corpus workspace ($(du -sh "$ws" | cut -f1), $(find "$ws" | wc -l) entries),"
    echo "moto $("$py" -c 'import moto; print(moto.__version__)') on loopback behind benches/latency-proxy, restic $(restic version | cut -d' ' -f2),"
    echo "targets on tmpfs, empty local caches, $rounds rounds in order."
    echo
    echo "| restore | wall s | cpu s | peak RSS MiB |"
    echo "|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
  } >>benches/RESULTS.md
fi
