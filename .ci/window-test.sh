#!/usr/bin/env bash
# Window test: runs the real app under a private Xvfb display, waits for its
# window, generates one image with the default (tiny) model through the real
# worker, screenshots the window and checks the picture is not blank. Then it
# stops the app and checks that no worker process of this run is left behind.
#
#   bash .ci/window-test.sh bin/atelier
#
# SCREENSHOT_OUT=path also copies the screenshot there (make screenshot).
# WINDOW_TEST_GENERATE=0 skips the generation (window and screenshot only).
# Deadlines are generous: this checks that things happen, not how fast.
set -euo pipefail

bin=${1:?usage: window-test.sh path/to/atelier}
window_deadline=${WINDOW_TEST_WINDOW_S:-60}
image_deadline=${WINDOW_TEST_IMAGE_S:-300}
generate=${WINDOW_TEST_GENERATE:-1}

say() { echo "window-test: $*" >&2; }
fail() {
	say "FAIL: $*"
	if [[ -s ${work:-/nonexistent}/app.log ]]; then
		say "last lines of the app's output:"
		tail -n 40 "$work/app.log" >&2
	fi
	exit 1
}

[[ -x $bin ]] || fail "$bin is not an executable file (run make build first)"
for tool in Xvfb xdotool import identify; do
	command -v "$tool" >/dev/null || fail "$tool is missing (run make sysdeps)"
done
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")

work=$(mktemp -d "${TMPDIR:-/tmp}/atelier-window-test.XXXXXX")
xvfb_pid='' app_pid=''
cleanup() {
	[[ -n $app_pid ]] && kill -KILL "$app_pid" 2>/dev/null || true
	[[ -n $xvfb_pid ]] && kill "$xvfb_pid" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

# A private display: -displayfd makes Xvfb pick a free number itself, so runs
# beside other X servers (or other runs of this script) never collide.
# The file exists before Xvfb starts: on a busy machine the loop below can read
# it before the background shell has opened it, and a missing file would end the
# script (set -e) with a confusing error.
: >"$work/display"
Xvfb -displayfd 3 -screen 0 1440x900x24 -nolisten tcp -noreset 3>"$work/display" >"$work/xvfb.log" 2>&1 &
xvfb_pid=$!
display=''
for _ in $(seq 100); do
	# Xvfb ends the number with a newline: wait for it, not for its first digit.
	if [[ $(wc -l <"$work/display") -ge 1 ]]; then
		display=$(tr -dc 0-9 <"$work/display")
		[[ -n $display ]] && break
	fi
	kill -0 "$xvfb_pid" 2>/dev/null || { cat "$work/xvfb.log" >&2; fail "Xvfb did not start"; }
	sleep 0.1
done
[[ -n $display ]] || fail "Xvfb did not report its display number within 10s"
export DISPLAY=:$display
say "Xvfb on $DISPLAY"

# What the app writes goes under the temporary folder: its database, images and
# previews (ATELIER_HOME) and Fyne's preferences (XDG_CONFIG_HOME), so the run
# starts as a first run and leaves the user's own history alone.
export ATELIER_HOME=$work/home XDG_CONFIG_HOME=$work/config
mkdir -p "$ATELIER_HOME" "$XDG_CONFIG_HOME"
images=$ATELIER_HOME/data/images
"$bin" >"$work/app.log" 2>&1 &
app_pid=$!

# Wait for the window. A dead app or a missed deadline fails loudly.
wid=''
deadline=$((SECONDS + window_deadline))
while [[ -z $wid ]]; do
	kill -0 "$app_pid" 2>/dev/null || fail "the app exited before its window appeared"
	((SECONDS < deadline)) || fail "no window named Atelier appeared within ${window_deadline}s"
	wid=$(xdotool search --onlyvisible --name '^Atelier$' 2>/dev/null | head -n 1) || true
	[[ -n $wid ]] || sleep 0.5
done
say "window $wid is up"

# descendants lists the app's process tree, to find its worker.
descendants() {
	local pids=$1 all=''
	while [[ -n $pids ]]; do
		all="$all $pids"
		pids=$(for p in $pids; do ps -o pid= --ppid "$p" || true; done | tr -s ' \n' ' ')
		pids=${pids# }
		pids=${pids% }
	done
	echo "$all"
}
workers=''
if [[ $generate == 1 ]]; then
	# Ctrl+Enter generates with what the form holds: on a first run, the tiny
	# demo model at a size that takes seconds on a CPU.
	xdotool windowfocus --sync "$wid" 2>/dev/null || true
	xdotool key --window "$wid" --clearmodifiers ctrl+Return
	deadline=$((SECONDS + image_deadline))
	while :; do
		kill -0 "$app_pid" 2>/dev/null || fail "the app died while generating"
		for p in $(descendants "$app_pid"); do
			[[ $p == "$app_pid" ]] && continue
			if ps -o args= -p "$p" | grep -q atelier_worker && [[ " $workers " != *" $p "* ]]; then
				workers="$workers $p"
			fi
		done
		# Previews are hidden files beside the images; only a visible PNG is a result.
		[[ -n $(find "$images" -name '*.png' ! -name '.*' -print -quit 2>/dev/null) ]] && break
		((SECONDS < deadline)) || fail "no image was generated within ${image_deadline}s" \
			"(a binary not built by make needs ATELIER_PYTHON and ATELIER_WORKER_DIR)"
		sleep 0.5
	done
	[[ -n $workers ]] || fail "an image was made but no atelier_worker process was seen under the app"
	say "generated an image with worker(s):$workers"
	sleep 2 # the history strip and the final frame follow the file
fi

# On a first run the "Get a real model" panel lies over the studio; Esc closes
# it (with no panel and no job, Esc does nothing), so the picture shows the studio.
xdotool key --window "$wid" --clearmodifiers Escape 2>/dev/null || true
sleep 1

# Screenshot the window until it shows a real frame: a first frame, or a GL
# surface that is not drawn yet, is one flat colour.
shot=$work/screenshot.png
colours=0
deadline=$((SECONDS + 30))
while :; do
	if import -window "$wid" "$shot" 2>"$work/import.log"; then
		colours=$(identify -format '%k' "$shot")
	fi
	((colours >= 256)) && break
	((SECONDS < deadline)) || fail "the window stays blank: the screenshot has $colours colour(s)"
	sleep 1
done
say "screenshot: $(identify -format '%wx%h' "$shot"), $colours colours"
if [[ -n ${SCREENSHOT_OUT:-} ]]; then
	mkdir -p "$(dirname "$SCREENSHOT_OUT")"
	cp "$shot" "$SCREENSHOT_OUT"
	say "wrote $SCREENSHOT_OUT"
fi

# Stop the app as a desktop session would, then make sure the worker went with it.
kill -TERM "$app_pid"
for _ in $(seq 100); do
	kill -0 "$app_pid" 2>/dev/null || break
	sleep 0.2
done
if kill -0 "$app_pid" 2>/dev/null; then
	# SIGQUIT makes the Go runtime print every goroutine: show where main hangs.
	kill -QUIT "$app_pid" 2>/dev/null || true
	sleep 2
	kill -KILL "$app_pid" 2>/dev/null || true
	say "the app's main goroutine when it would not exit:"
	sed -n '/^goroutine 1 \[/,/^$/p' "$work/app.log" >&2
	fail "the app did not exit within 20s of SIGTERM"
fi
wait "$app_pid" 2>/dev/null || true
app_pid=''
left=''
for _ in $(seq 50); do
	left=''
	for p in $workers; do
		if kill -0 "$p" 2>/dev/null; then left="$left $p"; fi
	done
	[[ -z $left ]] && break
	sleep 0.2
done
if [[ -n $left ]]; then
	ps -o pid,ppid,args -p "${left// /,}" >&2 || true
	kill -KILL $left 2>/dev/null || true
	fail "atelier_worker process(es) left behind after the app exited:$left"
fi
# A build without -tags migrated_fynedo logs every widget call made off the UI
# goroutine; the studio must make none.
if grep -q 'Error in Fyne call thread' "$work/app.log"; then
	grep -m 5 -A 3 'Error in Fyne call thread' "$work/app.log" >&2
	fail "the app touched widgets off the UI goroutine (see above)"
fi
say "OK"
