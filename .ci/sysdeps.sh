#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages the build and the tests need, only when missing.
set -euo pipefail
pkgs=(clang pkg-config libgl1-mesa-dev libx11-dev libxext-dev libxcursor-dev libxrandr-dev
  libxinerama-dev libxi-dev libxxf86vm-dev libwayland-dev libxkbcommon-dev libgtk-3-dev
  xvfb xauth x11-utils xdotool imagemagick libgl1-mesa-dri python3-venv xz-utils)
command -v go >/dev/null 2>&1 || pkgs+=(golang-go)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# python3-venv is only needed where python3 lacks a working venv module.
if [ "${#missing[@]}" -gt 0 ] && python3 -c 'import venv, ensurepip' 2>/dev/null; then
  missing=("${missing[@]/python3-venv/}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
[ "${#missing[@]}" -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "atelier: missing system packages: ${missing[*]} (no apt-get here: install them with your package manager)" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "atelier: installing system packages: ${missing[*]}"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
