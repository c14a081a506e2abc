# Sourced by the end-to-end benches (compare.sh, s3-restore.sh) from the repository root: installs
# restic and GNU time if missing, builds the release initctl, and makes sure the corpus workspace
# exists. Sets `cairn` (the initctl binary), `sidecar` and `corpus` (the pristine workspace, cached in
# ~/.cache/cairn-corpus like the test suite's).
command -v restic >/dev/null || { apt-get update -qq && apt-get install -y -qq restic >/dev/null; }
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
bash scripts/setup.sh
cargo build --release -q -p initctl -p sidecar
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
cairn=$target_dir/release/initctl
sidecar=$target_dir/release/sidecar

# Built once per machine by the suite's own preparation (tests/prepared.rs), locked against
# concurrent builds and never used half-built.
cargo build --release -q -p cairn-tests --bin cairn-test-helper
corpus=$("$target_dir/release/cairn-test-helper" corpus)

py=${CAIRN_PY_VENV:-$HOME/.cache/cairn-py}/bin/python

# Repositories are encrypted (the default): one key file for every bench repository. A binary from
# before encryption (an A/B baseline) ignores the variable and makes a plaintext one.
export CAIRN_KEY_FILE=${CAIRN_KEY_FILE:-$(mktemp "${TMPDIR:-/tmp}/cairn-bench-key.XXXXXX")}
[ -s "$CAIRN_KEY_FILE" ] || head -c 32 /dev/urandom >"$CAIRN_KEY_FILE"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# bench_dirs NAME: sets `work` (a temp dir) and `shm` (one on tmpfs), and on exit kills the
# processes in `pids` and removes both (unless KEEP is set).
bench_dirs() {
  work=$(mktemp -d "${TMPDIR:-/tmp}/cairn-$1.XXXXXX")
  shm=$(mktemp -d "/dev/shm/cairn-$1.XXXXXX")
  pids=()
  trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; [ -n "${KEEP:-}" ] || rm -rf "$work" "$shm"' EXIT
}

# start_moto BUCKET...: starts the suite's S3 server (moto) on a free port, sets `s3_port`, waits
# until it answers and creates the buckets. It lives while this script holds fd 8 (launch.py exits
# at EOF on stdin).
start_moto() {
  s3_port=$(free_port)
  mkfifo "$work/hold"
  "$py" tests/servers/launch.py s3 "$s3_port" <"$work/hold" >"$work/s3.log" 2>&1 &
  pids+=($!)
  exec 8>"$work/hold"
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$s3_port/" && break; sleep 0.1; done
  for b in "$@"; do curl -sf -X PUT "http://127.0.0.1:$s3_port/$b" >/dev/null; done
}
