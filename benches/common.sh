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

corpus=${CAIRN_CORPUS_DIR:-$HOME/.cache/cairn-corpus}/ws-seed1
if [ ! -f "$corpus.complete" ]; then
  mkdir -p "$(dirname "$corpus")"
  rm -rf "$corpus.building"
  SEED=1 bash ../shared/corpus/make-workspace.sh "$corpus.building" >&2
  rm -rf "$corpus" && mv "$corpus.building" "$corpus" && touch "$corpus.complete"
fi
