"""Start-up stays lazy: hello goes out before diffusers is imported, and the feature modules
(spandrel, OpenCV, the ControlNet/img2img/inpaint pipelines) load only for a job that needs
them. No timings here: what is imported, and when."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from atelier_worker import schedulers

from conftest import PYTHON_DIR

# Runs the real worker's main() and reports, on stderr, which modules were loaded when hello
# went out and when the worker exits (after the background import has finished).
_CHILD = r"""
import json, os, sys, threading
from atelier_worker import worker

seen = {}
send = worker.Output.send
def spy(self, msg):
    if msg.type == "hello":
        seen["hello"] = sorted(sys.modules)
    send(self, msg)
worker.Output.send = spy

real_exit = os._exit
# Two threads may exit at once (stdin closing and the parent watcher): only the first one
# reports, or the other's exit could cut its write short.
exiting = threading.Lock()
def report(code):
    exiting.acquire()
    for t in threading.enumerate():
        if t.name == "import-pipeline":
            t.join()
    seen["exit"] = sorted(sys.modules)
    os.write(2, ("MODULES " + json.dumps(seen) + "\n").encode())
    real_exit(code)
os._exit = report
worker.main([])
"""

FEATURE_MODULES = (
    "spandrel", "cv2",
    "diffusers.pipelines.controlnet.pipeline_controlnet_sd_xl",
    "diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img",
    "diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_inpaint",
    "diffusers.models.controlnets.controlnet",
)


def _modules_of_a_worker_without_jobs() -> dict:
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR)
    stderr = tempfile.TemporaryFile()  # a file, not a pipe: the report is long
    p = subprocess.Popen([sys.executable, "-c", _CHILD], cwd=PYTHON_DIR, env=env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
    try:
        for raw in p.stdout:
            if json.loads(raw)["type"] == "hello":
                break
        p.stdin.close()  # no job: the worker exits
        p.stdout.read()
        p.wait(timeout=120)
        stderr.seek(0)
        err = stderr.read()
    finally:
        p.kill()
    lines = [line for line in err.decode().splitlines() if line.startswith("MODULES ")]
    assert lines, err.decode()[-3000:]
    return json.loads(lines[-1][len("MODULES "):])


def test_hello_before_diffusers_and_no_feature_modules_without_a_job():
    _modules_of_a_worker_without_jobs()  # the first start may fill the schedules cache
    seen = _modules_of_a_worker_without_jobs()
    hello, done = set(seen["hello"]), set(seen["exit"])
    # hello needs torch (the devices), not diffusers: that imports on a thread after hello.
    assert "torch" in hello
    assert not {"diffusers", "transformers", "atelier_worker.engine"} & hello
    # The background import has made the pipeline, and still no feature module is loaded.
    assert "atelier_worker.engine.engine" in done
    assert not set(FEATURE_MODULES) & done, set(FEATURE_MODULES) & done


def test_schedules_cache_matches_and_is_reused(tmp_path, monkeypatch):
    fresh = schedulers.capabilities()
    assert schedulers.cached_capabilities(str(tmp_path)) == fresh
    path = tmp_path / "worker" / "schedules.json"
    assert json.loads(path.read_text())["schedules"] == fresh

    # A later start reads the file instead of asking diffusers.
    def boom():
        raise AssertionError("recomputed although the cache is valid")
    monkeypatch.setattr(schedulers, "capabilities", boom)
    assert schedulers.cached_capabilities(str(tmp_path)) == fresh

    # Another diffusers (or a broken file) makes it ask again.
    monkeypatch.setattr(schedulers, "capabilities", lambda: {"x": []})
    data = json.loads(path.read_text())
    data["key"]["diffusers"] = "0.0.0"
    path.write_text(json.dumps(data))
    assert schedulers.cached_capabilities(str(tmp_path)) == {"x": []}
    path.write_text("{not json")
    assert schedulers.cached_capabilities(str(tmp_path)) == {"x": []}
