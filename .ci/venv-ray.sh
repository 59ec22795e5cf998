#!/usr/bin/env bash
# Installs the optional Ray requirements $2 into the worker's venv $1, with the main
# requirements $3 as constraints, and records it in a stamp keyed by $2's hash, so a changed
# pin installs again and an unchanged one does nothing.
set -euo pipefail
venv="$1"; req="$2"; main_req="$3"
stamp="$venv/.ray-$(sha256sum "$req" | cut -c1-12)"
[ -f "$stamp" ] && exit 0
# The venv's own lock: a build of the venv or another Ray install waits for this one.
exec 9>"$venv.lock"
if ! flock -n 9; then
  echo "atelier: another build of $venv is running; waiting for it"
  flock 9
fi
[ -f "$stamp" ] && exit 0
echo "atelier: installing Ray into $venv (python/requirements-ray.txt)"
"$venv/bin/python" -m pip install -q -r "$req" -c "$main_req"
rm -f "$venv"/.ray-*
touch "$stamp"
echo "atelier: Ray ready"
