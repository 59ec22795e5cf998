"""The Ray proxy (`queue run --ray`) against a local Ray head with two CPU slots: it speaks
the worker's protocol, its actor runs the worker's engine, the PNGs land in the local
output_dir, cancel reaches the actor, and a killed actor ends the proxy as a crashed worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import PYTHON_DIR, WorkerProcess, new_id, request

pytest.importorskip("ray", reason="Ray is not installed: `make venv-ray` installs it "
                                  "(python/requirements-ray.txt)")

import raykit  # noqa: E402
from PIL import Image  # noqa: E402


@pytest.fixture(scope="module")
def head():
    h = raykit.Head(num_cpus=2)
    try:
        h.wait_ready()
        yield h
    finally:
        h.stop()


def proxy(head) -> WorkerProcess:
    w = WorkerProcess(module="atelier_worker.ray_proxy", args=("--address", head.address),
                      env={"ATELIER_HEARTBEAT_INTERVAL_S": "0.2"})
    w.wait_hello(timeout=600)
    return w


def test_slots_are_the_clusters_cpus_without_a_gpu(head):
    out = subprocess.run([sys.executable, "-m", "atelier_worker.ray_proxy", "--address",
                          head.address, "--slots"], cwd=PYTHON_DIR, capture_output=True,
                         env=dict(os.environ, PYTHONPATH=PYTHON_DIR), timeout=600)
    assert out.returncode == 0, out.stderr.decode()
    assert json.loads(out.stdout) == {"slots": 2, "gpus": 0, "cpus": 2}


def test_a_job_runs_on_the_actor_and_its_png_lands_here(head, tmp_path):
    w = proxy(head)
    try:
        assert w.hello.device == "cpu"
        assert "heartbeat" in w.hello.capabilities.features
        assert any(m.type == "loading" and "Ray" in m.message for m in w.startup)
        id, msgs = w.generate(tmp_path, preview_every=1, steps=6)
        assert [m.type for m in msgs][0] == "accepted"
        result = msgs[-1]
        assert result.type == "result", msgs[-1]
        assert "denoising" in [m.stage for m in msgs if m.type == "progress"]
        previews = [m for m in msgs if m.type == "preview"]
        assert previews and all(os.path.dirname(p.path) == str(tmp_path) for p in previews)
        [im] = result.images
        assert im.path == str(tmp_path / f"{id}-0.png")
        with Image.open(im.path) as png:
            assert png.size == (64, 64)
            assert "Seed: 7" in png.info["parameters"]
        # The result replaces the preview; no temporary file is left.
        assert sorted(os.listdir(tmp_path)) == [f"{id}-0.png"]
        assert w.heartbeats and all(h.id == id for h in w.heartbeats)

        # The pipeline stays warm on the actor: the second job loads nothing.
        _, again = w.generate(tmp_path, seed=8)
        assert again[-1].type == "result"
        assert "loading_model" not in [m.stage for m in again if m.type == "progress"]
        w.ping()
    finally:
        assert w.close() == 0


def test_the_speed_mode_holds_on_the_actor(head, tmp_path):
    """The bridge sets the speed mode's variables in the proxy's environment; the actor, a
    process of the Ray cluster, must run with them (its metrics say what was in effect)."""
    w = WorkerProcess(module="atelier_worker.ray_proxy", args=("--address", head.address),
                      env={"ATELIER_VAE_TILING": "1", "ATELIER_VAE_SLICING": "1"})
    w.wait_hello(timeout=600)
    try:
        _, msgs = w.generate(tmp_path, steps=2)
        assert msgs[-1].type == "result", msgs[-1]
        speed = msgs[-1].metrics.speed
        assert (speed["vae_tiling"], speed["vae_slicing"]) == ("on", "on"), speed
    finally:
        assert w.close() == 0


def test_cancel_reaches_the_actor(head, tmp_path):
    w = proxy(head)
    try:
        id = new_id()
        w.send({"type": "generate", "id": id, "request": request(tmp_path, steps=150)})
        w.until(lambda m: m.type == "progress" and m.stage == "denoising" and m.step >= 1)
        w.send({"type": "cancel", "id": id})
        last = w.finish(id)[-1]
        assert (last.type, last.code) == ("error", "cancelled")
        assert os.listdir(tmp_path) == []
    finally:
        assert w.close() == 0


def test_a_killed_actor_ends_the_proxy_as_a_crashed_worker(head, tmp_path):
    w = proxy(head)
    id = new_id()
    w.send({"type": "generate", "id": id, "request": request(tmp_path, steps=150)})
    w.until(lambda m: m.type == "progress" and m.stage == "denoising" and m.step >= 1)
    killed = subprocess.run([sys.executable, raykit.__file__, "kill-busy", head.address],
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == 0, killed.stderr
    assert killed.stdout.strip() == id
    # No result or error for the job: the proxy exits non-zero, which the bridge reports as
    # worker_crashed (and the queue re-runs the job).
    got = []
    while True:
        try:
            got.append(w.next(600))
        except AssertionError as e:
            assert "closed stdout" in str(e)
            break
    assert not [m for m in got if m.type in ("result", "error")], got
    assert w.proc.wait(60) == 1
    assert "worker_crashed" in w.stderr_text()
    assert os.listdir(tmp_path) == []
