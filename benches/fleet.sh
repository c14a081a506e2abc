#!/usr/bin/env bash
# Fleet: N workspaces (default 200) forked from one corpus workspace on the local store, each as a
# pod would live it: fork, restore into an empty volume (seeding the stat cache), one synthetic
# agent session (benches/fleet_session.py: ~3 MiB of edits, a new dependency, a random blob,
# deletions), an incremental backup. Reports stored bytes against the base plus the sessions'
# deltas, objects and requests per backup and per restore, backup RSS as the repository grows,
# GC with the repack of small packs, cross-workspace dedup through the compacted index (pods that
# back up the corpus as unrelated workspaces), and GC time after half the workspaces are deleted.
#
#   benches/fleet.sh [--write]        N=200 by default; --write appends to benches/RESULTS.md
set -euo pipefail
cd "$(dirname "$0")/.."
write=${1:-}
n=${N:-200}

# shellcheck source=benches/common.sh
source benches/common.sh

bench_dirs fleet
vol=$shm/vol
export CAIRN_STORE=$work/store CAIRN_QUIET=1
"$cairn" init >/dev/null
CAIRN_CACHE_DIR=$work/cache-base "$cairn" backup --workspace base "$corpus" >/dev/null
stored() { "$cairn" stats --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["stored_bytes"])'; }
objects() { "$cairn" stats --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["objects"])'; }
base_stored=$(stored)
base_objects=$(objects)
# A first GC builds the compacted index, so the fleet's backups run with one (as in production).
"$cairn" gc --protect 6h >/dev/null

j() { python3 -c 'import json,sys; v=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$@"; }
log=$work/fleet.tsv
echo -e "i\tfork_s\trestore_s\trestore_req\tbackup_s\tbackup_rss_kib\tbackup_req\tbackup_put\tuploaded\tdelta\tsegments" >"$log"
delta_sum=0
started=$(date +%s.%N)
for i in $(seq "$n"); do
  ws=ws-$i
  cache=$work/cache-$i
  t0=$(date +%s.%N)
  "$cairn" fork --from base --to "$ws" >/dev/null
  t1=$(date +%s.%N)
  CAIRN_CACHE_DIR=$cache "$cairn" restore --json --workspace "$ws" "$vol" >"$work/restore.json"
  delta=$(python3 benches/fleet_session.py "$vol" "$i")
  CAIRN_CACHE_DIR=$cache /usr/bin/time -f '%M' -o "$work/rss" "$cairn" backup --json --workspace "$ws" "$vol" >"$work/backup.json"
  printf '%s\t%.3f\t%.3f\t%s\t%.3f\t%s\t%s\t%s\t%s\t%s\t%s\n' "$i" "$(python3 -c "print($t1 - $t0)")" \
    "$(j "$work/restore.json" 'v["seconds"]')" "$(j "$work/restore.json" 'sum(x for k,x in v["requests"].items() if not k.startswith("bytes"))')" \
    "$(j "$work/backup.json" 'v["seconds"]')" "$(tail -1 "$work/rss")" \
    "$(j "$work/backup.json" 'sum(x for k,x in v["requests"].items() if not k.startswith("bytes"))')" \
    "$(j "$work/backup.json" 'v["requests"]["put"]')" "$(j "$work/backup.json" 'v["uploaded_bytes"]')" "$delta" "$(j "$work/backup.json" 'v["segments_fetched"]')" >>"$log"
  delta_sum=$((delta_sum + delta))
  rm -rf "$vol" "$cache"
  [ $((i % 20)) -eq 0 ] && echo "fleet: $i/$n workspaces ($(python3 -c "print(round($(date +%s.%N) - $started))") s)" >&2
done
total_stored=$(stored)
total_objects=$(objects)

# GC with nothing to condemn: repacks the sessions' small packs and rebuilds the compacted index.
/usr/bin/time -f '%e %M' -o "$work/gc.time" "$cairn" gc --json --protect 6h >"$work/gc.json"
read -r gc0_s gc0_rss <"$work/gc.time"
gc0=$(j "$work/gc.json" '"repacked %d packs (%.1f MiB) into %d; index %d blobs, %d segments" % (v["repacked_packs"], v["repacked_bytes"]/2**20, v["repack_written"], v["compact_blobs"], v["compact_segments"])')
repacked_objects=$(objects)
CAIRN_CACHE_DIR=$work/cache-r "$cairn" restore --json --workspace ws-2 "$vol" >"$work/restore.json"
after_repack_req=$(j "$work/restore.json" 'sum(x for k,x in v["requests"].items() if not k.startswith("bytes"))')
after_repack_s=$(j "$work/restore.json" 'v["seconds"]')
rm -rf "$vol" "$work/cache-r"

# Unrelated pods that install the same things: the corpus backed up as new workspaces (no fork,
# no base, empty caches), with the compacted index and without.
indep() {
  CAIRN_CACHE_DIR=$work/cache-i CAIRN_DEDUP_FETCHES=$2 "$cairn" backup --json --workspace "$1" "$corpus" >"$work/indep.json"
  rm -rf "$work/cache-i"
  j "$work/indep.json" '"%.1f MiB uploaded, %d segments fetched (%d useful), %.2f s" % (v["uploaded_bytes"]/2**20, v["segments_fetched"], v["useful_fetches"], v["seconds"])'
}
indep_with=$(indep indep-1 64)
indep_without=$(indep indep-2 0)

# Delete half the workspaces, then GC twice (condemn, then sweep after the window).
for i in $(seq 1 2 "$n"); do "$cairn" forget --workspace "ws-$i" --all >/dev/null; done
gc_time() { /usr/bin/time -f '%e %M' -o "$work/gc.time" "$cairn" gc --json --protect 1s >"$work/gc.json"; cat "$work/gc.time"; }
sleep 2.1
read -r gc1_s gc1_rss < <(gc_time)
gc1=$(j "$work/gc.json" '"condemned %d objects (%.1f MiB)" % (v["condemned"], v["condemned_bytes"]/2**20)')
sleep 2.1
read -r gc2_s gc2_rss < <(gc_time)
gc2=$(j "$work/gc.json" '"deleted %d packs, %d records (%.1f MiB)" % (v["deleted_packs"], v["deleted_records"], v["deleted_bytes"]/2**20)')
after_gc=$(stored)

summary=$(python3 - "$log" "$base_stored" "$total_stored" "$delta_sum" "$base_objects" "$total_objects" "$n" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
base, total, delta, bobj, tobj, n = (int(x) for x in sys.argv[2:8])
col = lambda k: [float(r[k]) for r in rows]
mib = lambda b: b / 2**20
first, last = rows[: max(1, n // 10)], rows[-max(1, n // 10):]
rss = lambda rs: statistics.median(float(r["backup_rss_kib"]) for r in rs) / 1024
print(f"| stored: base | {mib(base):.1f} MiB |")
print(f"| stored: after {n} forked workspaces with one session each | {mib(total):.1f} MiB |")
print(f"| sessions' logical delta (sum) | {mib(delta):.1f} MiB |")
print(f"| stored / (base + deltas) | {total / (base + delta):.3f} |")
print(f"| objects: base, after | {bobj}, {tobj} ({(tobj - bobj) / n:.1f} per workspace) |")
print(f"| fork: median wall | {statistics.median(col('fork_s')) * 1000:.0f} ms |")
print(f"| restore (empty volume, seeds the cache): median wall, requests | {statistics.median(col('restore_s')):.2f} s, {statistics.median(col('restore_req')):.0f} |")
print(f"| backup after the session: median wall, requests, puts, index segments fetched | {statistics.median(col('backup_s')):.2f} s, {statistics.median(col('backup_req')):.0f}, {statistics.median(col('backup_put')):.0f}, {statistics.median(col('segments')):.0f} |")
print(f"| backup peak RSS, median of the first and last {len(first)} | {rss(first):.0f} MiB, {rss(last):.0f} MiB |")
PY
)
summary+=$'\n'"| gc 0, nothing to condemn (repack + compacted index) | ${gc0_s} s, $((gc0_rss / 1024)) MiB: $gc0; objects $total_objects -> $repacked_objects |"
summary+=$'\n'"| restore of ws-2 after the repack: wall, requests | ${after_repack_s} s, $after_repack_req |"
summary+=$'\n'"| unrelated pod backs up the corpus, compacted index on (64 fetches) | $indep_with |"
summary+=$'\n'"| the same with CAIRN_DEDUP_FETCHES=0 | $indep_without |"
summary+=$'\n'"| gc 1 after deleting $((n / 2 + n % 2)) workspaces (condemn) | ${gc1_s} s, $((gc1_rss / 1024)) MiB: $gc1 |"
summary+=$'\n'"| gc 2 (sweep) | ${gc2_s} s, $((gc2_rss / 1024)) MiB: $gc2; stored now $(python3 -c "print(round($after_gc / 2**20, 1))") MiB |"
echo "$summary"
if [ "$write" = "--write" ]; then
  {
    echo
    echo "## Fleet: $n workspaces forked from one ($(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD))"
    echo
    echo "\`benches/fleet.sh --write\` (N=$n): corpus workspace as the base on the local store (disk), each workspace"
    echo "forked, restored into an empty tmpfs volume, given one benches/fleet_session.py session, backed up; per-workspace"
    echo "numbers in the order run. Requests are what initctl asked of the store (one per call)."
    echo
    echo "| measure | value |"
    echo "|---|---|"
    echo "$summary"
  } >>benches/RESULTS.md
fi
