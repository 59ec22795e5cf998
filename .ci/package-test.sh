#!/usr/bin/env bash
# Package test: installs bin/package/Atelier.tar.xz (make package) into a
# temporary prefix and runs the installed binary from outside the clone, with
# no variable naming the clone's python/ folder, so it must use the worker it
# carries:
#   1. doctor unpacks that worker into the data folder and says set-up is due;
#   2. setup builds a venv from a local wheel folder (a tiny stand-in for the
#      pins: the real torch install needs network and minutes);
#   3. generate, with the dev venv's Python (it has torch), makes an image
#      with the tiny model from the carried worker code.
#
# With a .deb as the second argument, its control data and file list are checked too.
#
#   bash .ci/package-test.sh path/to/dev-venv/bin/python [path/to/atelier.deb]
set -euo pipefail
dev_python=${1:?usage: package-test.sh path/to/venv/bin/python [atelier.deb]}
deb=${2:-}
say() { echo "package-test: $*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

repo=$(pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/atelier-package-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
make -s install PREFIX="$prefix" >/dev/null
bin=$prefix/bin/atelier
[[ -x $bin ]] || fail "make install put no binary at $bin"
[[ -f $prefix/share/applications/io.atelier.studio.desktop ]] || fail "no .desktop entry installed"
[[ -f $prefix/share/icons/hicolor/256x256/apps/io.atelier.studio.png ]] || fail "no icon installed"
grep -qx "Exec=$bin" "$prefix/share/applications/io.atelier.studio.desktop" || fail "the .desktop entry does not start $bin"

passed=0
if [[ -n $deb ]]; then
	[[ -f $deb ]] || fail "no .deb at $deb (run make deb)"
	dpkg-deb --field "$deb" Package | grep -qx atelier || fail "$deb is not the atelier package"
	contents=$(dpkg-deb --contents "$deb")
	for f in ./usr/bin/atelier ./usr/share/applications/io.atelier.studio.desktop ./usr/share/icons/hicolor/256x256/apps/io.atelier.studio.png; do
		grep -qF " $f" <<<"$contents" || fail "$deb lacks $f"
	done
	dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/share/applications/io.atelier.studio.desktop | grep -qx 'Exec=/usr/bin/atelier' \
		|| fail "the .deb's .desktop entry does not start /usr/bin/atelier"
	say "deb: $deb holds the binary, the .desktop entry and the icon under /usr"
	passed=1
fi

# Outside the clone, and nothing that names it.
cd "$work"
export ATELIER_HOME=$work/home
unset ATELIER_WORKER_DIR ATELIER_PYTHON ATELIER_CACHE_DIR
grep -qF "$repo" "$bin" && fail "the installed binary names the clone's folder $repo"

code=0
"$bin" doctor >"$work/doctor.txt" 2>&1 || code=$?
[[ $code == 1 ]] || { cat "$work/doctor.txt" >&2; fail "doctor before set-up: exit $code, want 1"; }
grep -q "code:    $ATELIER_HOME/data/worker/" "$work/doctor.txt" || { cat "$work/doctor.txt" >&2; fail "doctor does not name the unpacked worker"; }
grep -q "not set up" "$work/doctor.txt" || { cat "$work/doctor.txt" >&2; fail "doctor does not say set-up is due"; }
worker=$(echo "$ATELIER_HOME"/data/worker/*/)
[[ -f $worker/atelier_worker/__main__.py && -f $worker/requirements.txt ]] || fail "no worker unpacked in $worker"
say "doctor: unpacked the worker into $worker; set-up is due"

# A wheel folder with one tiny pure-Python wheel, and pins for it.
wheels=$work/wheels
mkdir -p "$wheels"
python3 - "$wheels" <<'PY'
import base64, hashlib, sys, zipfile, pathlib
d = pathlib.Path(sys.argv[1])
info = "atelier_tiny_dep-1.0.dist-info"
files = {"atelier_tiny_dep/__init__.py": "VALUE = 42\n",
         f"{info}/METADATA": "Metadata-Version: 2.1\nName: atelier-tiny-dep\nVersion: 1.0\n",
         f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: package-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
record = "".join(f"{n},sha256={base64.urlsafe_b64encode(hashlib.sha256(c.encode()).digest()).rstrip(b'=').decode()},{len(c)}\n"
                 for n, c in files.items()) + f"{info}/RECORD,,\n"
files[f"{info}/RECORD"] = record
with zipfile.ZipFile(d / "atelier_tiny_dep-1.0-py3-none-any.whl", "w") as z:
    for n, c in files.items():
        z.writestr(n, c)
(d / "requirements.txt").write_text("atelier-tiny-dep==1.0\n")
PY
"$bin" setup --requirements "$wheels/requirements.txt" --find-links "$wheels" >"$work/setup.txt" 2>&1 \
	|| { cat "$work/setup.txt" >&2; fail "setup from the wheel folder failed"; }
venv_python=$(echo "$ATELIER_HOME"/data/venv/*/bin/python)
"$venv_python" -c 'import atelier_tiny_dep' || fail "the set-up venv lacks the wheel's package"
say "setup: built $(dirname "$(dirname "$venv_python")") from the wheel folder"

out=$(ATELIER_PYTHON=$dev_python "$bin" generate --model tiny --prompt "a lighthouse" --steps 4 \
	--width 64 --height 64 --seed 7 2>"$work/generate.txt") \
	|| { cat "$work/generate.txt" >&2; fail "generate with the carried worker failed"; }
[[ -s $out && $out == "$ATELIER_HOME"/* ]] || fail "generate printed no image in the home: $out"
say "generate: the carried worker made $out"
# The window of the installed app, with a home that has no venv: it opens on
# the set-up screen; Enter in its Python field starts the set-up, which builds
# the venv from the wheel folder, and the studio opens. The unpacked worker's
# pins are swapped for the stand-in ones, since torch cannot be installed here.
if command -v Xvfb >/dev/null && command -v xdotool >/dev/null; then
	export ATELIER_HOME=$work/home-window XDG_CONFIG_HOME=$work/config ATELIER_FIND_LINKS=$wheels
	"$bin" doctor >/dev/null 2>&1 || true # unpacks the worker
	cp "$wheels/requirements.txt" "$(echo "$ATELIER_HOME"/data/worker/*/)requirements.txt"
	: >"$work/display"
	Xvfb -displayfd 3 -screen 0 1440x900x24 -nolisten tcp -noreset 3>"$work/display" >"$work/xvfb.log" 2>&1 &
	xvfb_pid=$!
	app_pid=''
	trap '[[ -n $app_pid ]] && kill -KILL "$app_pid" 2>/dev/null; kill "$xvfb_pid" 2>/dev/null; rm -rf "$work"' EXIT
	for _ in $(seq 300); do [[ $(wc -l <"$work/display") -ge 1 ]] && break; sleep 0.1; done
	export DISPLAY=:$(tr -dc 0-9 <"$work/display")
	"$bin" >"$work/app.log" 2>&1 &
	app_pid=$!
	disown "$app_pid" # its kill at the end is expected: no "Killed" line
	win=''
	for _ in $(seq 600); do
		win=$(xdotool search --onlyvisible --name '^Atelier$' 2>/dev/null | head -n1) && [[ -n $win ]] && break
		kill -0 "$app_pid" 2>/dev/null || { cat "$work/app.log" >&2; fail "the installed app exited"; }
		sleep 0.1
	done
	[[ -n $win ]] || fail "the installed app showed no window within a minute"
	grep -q "the window starts with set-up" "$work/app.log" || { cat "$work/app.log" >&2; fail "the app did not start with set-up"; }
	say "window: the installed app opened on its set-up screen"
	# The window may take a moment to take keys: press until the set-up starts.
	deadline=$((SECONDS + 300))
	until grep -q "the studio is open" "$work/app.log"; do
		kill -0 "$app_pid" 2>/dev/null || { cat "$work/app.log" >&2; fail "the installed app exited during set-up"; }
		((SECONDS < deadline)) || { cat "$work/app.log" >&2; fail "set-up in the window did not end within 5 minutes"; }
		if ! compgen -G "$ATELIER_HOME/data/venv/*/bin" >/dev/null; then
			xdotool windowfocus --sync "$win" 2>/dev/null || true
			xdotool key --window "$win" Tab Return 2>/dev/null || true
		fi
		sleep 1
	done
	compgen -G "$ATELIER_HOME/data/venv/*/.atelier-ready" >/dev/null || fail "the studio opened without a ready venv"
	kill -0 "$app_pid" 2>/dev/null || fail "the installed app exited after set-up"
	say "window: set-up built the venv from the wheel folder, then the studio opened"
	echo "package-test: $((passed + 5)) passed, 0 failed"
else
	say "Xvfb or xdotool missing (make sysdeps installs them): window check not run"
	echo "package-test: $((passed + 3)) passed, 0 failed"
fi
