#!/usr/bin/env bash
# Creates (or reuses) the worker's Python venv at $1 from the pinned requirements $2.
set -euo pipefail
venv="$1"; req="$2"
ready() { [ -f "$venv/.ready" ] && "$venv/bin/python" -c 'import torch, diffusers' 2>/dev/null; }
ready && { touch "$venv/.ready"; exit 0; }
mkdir -p "$(dirname "$venv")"
# Two builds at once (two clones, a test and `make run`) would remove each other's
# half-made venv; the second waits for the first and then reuses its result.
exec 9>"$venv.lock"
if ! flock -n 9; then
  echo "atelier: another build of $venv is running; waiting for it"
  flock 9
fi
ready && { touch "$venv/.ready"; exit 0; }
py="${ATELIER_BASE_PYTHON:-python3}"
"$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' || {
  echo "atelier: the worker needs Python 3.10 or newer; set ATELIER_BASE_PYTHON to one" >&2; exit 1; }
echo "atelier: creating the Python venv at $venv (torch is large: the first time takes a few minutes)"
rm -rf "$venv.tmp"
"$py" -m venv "$venv.tmp"
"$venv.tmp/bin/python" -m pip install -q --upgrade pip
"$venv.tmp/bin/python" -m pip install -q -r "$req"
# Move into place only when complete, so an interrupted install is never mistaken for a ready one.
rm -rf "$venv"
mv "$venv.tmp" "$venv"
touch "$venv/.ready"
echo "atelier: venv ready"
