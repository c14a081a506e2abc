#!/usr/bin/env bash
# Installs the protocol servers the test suite starts (pinned, from PyPI) into a virtualenv:
#   moto[server]          an S3 server with conditional writes (If-None-Match / If-Match)
#   gcp-storage-emulator  a GCS JSON API emulator
# The venv lives in ${CAIRN_PY_VENV:-~/.cache/cairn-py}; a marker file names the pinned set, so a
# changed pin reinstalls. Safe to run concurrently (flock) and repeatedly (no-op when current).
set -euo pipefail
venv="${CAIRN_PY_VENV:-$HOME/.cache/cairn-py}"
req="$(cd "$(dirname "$0")/.." && pwd)/tests/servers/requirements.txt"
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if [ -f "$venv/.installed" ] && cmp -s "$req" "$venv/.installed"; then
  exit 0
fi
echo "test-servers: installing $(tr '\n' ' ' < "$req")into $venv" >&2
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
cp "$req" "$venv/.installed"
