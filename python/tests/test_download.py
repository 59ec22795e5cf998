"""The model download (atelier_worker.download) against a local stand-in for the hub
(hubserver.py, through HF_ENDPOINT): never the real hub."""

from __future__ import annotations

import fnmatch
import json
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest
from hubserver import BASE_REPO, Hub, hub_layout

from atelier_worker import download
from atelier_worker.engine.loaders import folder_variant

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNET = "unet/diffusion_pytorch_model.fp16.safetensors"


@pytest.fixture(scope="module")
def layout(tiny_model):
    return hub_layout(tiny_model)


class Run:
    """python -m atelier_worker.download as the app runs it, its JSON lines read as they come."""

    def __init__(self, endpoint: str, dest, *args, env: dict | None = None):
        full = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
        full.update(PYTHONPATH=PYTHON_DIR, HF_ENDPOINT=endpoint, HF_HOME=str(dest) + ".hf",
                    HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DOWNLOAD_TIMEOUT="600", **(env or {}))
        self.proc = subprocess.Popen([sys.executable, "-m", "atelier_worker.download", *args, "--dest", str(dest)],
                                     env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: list[dict] = []

    def until(self, pred) -> dict | None:
        for line in self.proc.stdout:
            ev = json.loads(line)
            self.events.append(ev)
            if pred(ev):
                return ev
        return None

    def finish(self) -> int:
        self.until(lambda ev: False)
        self.stderr = self.proc.stderr.read()
        return self.proc.wait(timeout=600)


def wanted(layout) -> dict[str, bytes]:
    pats = download.PRESETS["base"].patterns
    return {n: d for n, d in layout.items() if any(fnmatch.fnmatchcase(n, p) for p in pats)}


def test_download_fetches_only_what_the_studio_loads(tmp_path, layout):
    dest = tmp_path / "models" / "sdxl-base"
    with Hub({BASE_REPO: layout}) as hub:
        run = Run(hub.url, dest, "base")
        assert run.finish() == download.EXIT_OK, run.stderr
    plan = next(ev for ev in run.events if ev["event"] == "plan")
    want = wanted(layout)
    assert sorted(f["name"] for f in plan["files"]) == sorted(want)
    assert plan["total"] == sum(len(d) for d in want.values())
    last = [ev for ev in run.events if ev["event"] == "progress"][-1]
    assert last["done"] == last["total"] == plan["total"]
    assert run.events[-1] == {"event": "done", "repo": BASE_REPO, "dest": str(dest)}
    for name, data in want.items():
        assert (dest / name).read_bytes() == data
    # Neither the single-file copy nor the fp32 weights nor an unused component came down.
    assert not (dest / "sd_xl_base_1.0.safetensors").exists()
    assert not (dest / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert not (dest / "vae_1_0").exists()
    assert not (dest / download.PARTIAL_DIR).exists()
    # The worker loads it as an fp16-variant diffusers folder.
    assert folder_variant(str(dest / "unet")) == "fp16"
    assert json.loads((dest / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLPipeline"


def test_an_interrupted_download_resumes_with_a_range_request(tmp_path, layout):
    dest = tmp_path / "base"
    size = len(layout[UNET])
    with Hub({BASE_REPO: layout}) as hub:
        hub.drop[UNET] = size // 3
        first = Run(hub.url, dest, "base")
        assert first.finish() == download.EXIT_OFFLINE, first.stderr
        assert first.events[-1]["kind"] == "offline"
        part = dest / download.PARTIAL_DIR
        parts = list(part.rglob("*.part"))
        assert [p.stat().st_size for p in parts] == [size // 3]
        # The marker of a complete folder is not there yet: the library does not list it.
        assert not (dest / "model_index.json").exists()
        hub.requests.clear()
        second = Run(hub.url, dest, "base")
        assert second.finish() == download.EXIT_OK, second.stderr
    assert (dest / UNET).read_bytes() == layout[UNET]
    ranges = [r for p, r in hub.requests if p.endswith(UNET)]
    assert ranges == [f"bytes={size // 3}-"]
    plan = next(ev for ev in second.events if ev["event"] == "plan")
    assert plan["done"] >= size // 3


def test_sigterm_stops_cleanly_and_keeps_the_partial_file(tmp_path, layout):
    dest = tmp_path / "base"
    release = threading.Event()
    with Hub({BASE_REPO: layout}) as hub:
        hub.hold[UNET] = (len(layout[UNET]) // 2, release)
        run = Run(hub.url, dest, "base")
        started = run.until(lambda ev: ev["event"] == "progress" and ev["file"] == UNET and ev["file_done"] > 0)
        assert started is not None
        run.proc.send_signal(signal.SIGTERM)
        code = run.finish()
        release.set()
    assert code == download.EXIT_CANCELLED, run.stderr
    assert run.events[-1]["kind"] == "cancelled"
    assert [p.stat().st_size > 0 for p in (dest / download.PARTIAL_DIR).rglob("*.part")] == [True]


def test_offline_says_what_to_do(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = Run(f"http://127.0.0.1:{port}", tmp_path / "base", "base")
    assert run.finish() == download.EXIT_OFFLINE, run.stderr
    err = run.events[-1]
    assert err["kind"] == "offline"
    assert "Cannot reach the Hugging Face hub" in err["message"]
    assert "add its folder to the library" in err["message"]
    assert not (tmp_path / "base" / "model_index.json").exists()


def test_hub_offline_mode_is_named(tmp_path):
    run = Run("http://127.0.0.1:9", tmp_path / "base", "base", env={"HF_HUB_OFFLINE": "1"})
    assert run.finish() == download.EXIT_OFFLINE
    assert "HF_HUB_OFFLINE" in run.events[-1]["message"]


def test_not_enough_disk_space_is_found_before_starting(tmp_path, layout):
    dest = tmp_path / "base"
    with Hub({BASE_REPO: layout}) as hub:
        # The space kept free is more than any disk has: the check must refuse.
        run = Run(hub.url, dest, "base", env={"ATELIER_DOWNLOAD_RESERVE_BYTES": str(1 << 62)})
        assert run.finish() == download.EXIT_DISK, run.stderr
        assert not [p for p, _ in hub.requests if "/resolve/" in p]
    err = run.events[-1]
    assert err["kind"] == "disk"
    assert "Not enough free disk space" in err["message"] and "--dest" in err["message"]
    assert not list(tmp_path.rglob("*.safetensors"))


def test_unknown_repo_and_bad_name(tmp_path, layout):
    with Hub({BASE_REPO: layout}) as hub:
        run = Run(hub.url, tmp_path / "x", "someone/nothing-here")
        assert run.finish() == download.EXIT_HUB
        assert "has no model someone/nothing-here" in run.events[-1]["message"]
    run = Run("http://127.0.0.1:9", tmp_path / "y", "juggernaut")
    assert run.finish() == download.EXIT_USAGE


def test_default_patterns_prefer_fp16_and_skip_the_root_checkpoint():
    names = ["model_index.json", "sd_xl_base_1.0.safetensors", "unet/config.json",
             "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
             "unet/diffusion_pytorch_model.bin", "vae/diffusion_pytorch_model.safetensors", "README.md"]
    assert sorted(download.default_patterns(names)) == [
        "model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.safetensors"]
    files = download.select([(n, 1) for n in names], None)
    assert files[-1][0] == "model_index.json"  # the marker of a complete folder comes last
