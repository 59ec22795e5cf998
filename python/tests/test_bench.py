"""The Python half of `atelier bench`, on the tiny model and the CPU: well-formed JSON, no
speed assertions (the Go test drives the whole bench)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from atelier_worker import bench

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_percentile_and_summary():
    assert bench.percentile([3.0], 90) == 3.0
    assert bench.percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90) == 9
    s = bench.summary([2.0, 1.0, 3.0])
    assert s == {"median_s": 2.0, "p90_s": 3.0, "min_s": 1.0, "n": 3}


def _run(*args):
    out = subprocess.run([sys.executable, "-m", "atelier_worker.bench", *args], capture_output=True,
                         text=True, cwd=PYTHON_DIR, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_emitcost_prints_json():
    r = _run("emitcost", "--n", "200")
    assert r["n"] == 200 and r["progress_line_us"] > 0


def test_model_and_baseline_on_the_tiny_preset(tmp_path):
    m = _run("model", "--out", str(tmp_path / "m"), "--preset", "tiny", "--dtype", "float32")
    assert os.path.isfile(os.path.join(m["model"], "model_index.json"))
    r = _run("baseline", "--model", m["model"], "--device", "cpu", "--steps", "2", "--width", "64",
             "--height", "64", "--runs", "1", "--warmup", "1", "--step-reps", "2", "--batches", "1,2")
    assert r["e2e"]["n"] == 1 and r["e2e"]["median_s"] > 0
    assert r["unet_tflop_per_cfg_step"] > 0 and r["vae_decode"]["n"] >= 1
    assert set(r["batches"]) == {"1", "2"}
