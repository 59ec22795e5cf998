"""The GPU probes behind docs/BENCHMARKS.md, on the tiny UNet and the CPU: every stage that
can run there runs and records what it measured. No speed assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_main_stage_records_steps_and_preview_costs(tmp_path):
    out = tmp_path / "probe.jsonl"
    r = subprocess.run([sys.executable, "-m", "atelier_worker.bench_probe", "main", "--preset", "tiny",
                        "--device", "cpu", "--size", "64", "--steps", "6", "--reps", "1", "--preview-reps", "1",
                        "--compile-mode", "none", "--preview-models", "eager", "--out", str(out)],
                       check=False, capture_output=True, text=True, cwd=PYTHON_DIR, timeout=600,
                       env={**os.environ, "ATELIER_CACHE_DIR": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    what = [x["what"] for x in recs]
    assert what[0] == "imports" and what[-1] == "done"
    step = next(x for x in recs if x["what"] == "eager_step")
    assert step["n"] == 1 and step["median_ms"] > 0
    costs = {x["variant"]: x for x in recs if x["what"] == "preview_cost"}
    assert set(costs) == {"none", "worker", "nosync"}
    assert all(c["median_s"] > 0 and c["model"] == "eager" for c in costs.values())


def test_fast_build_stage_starts_the_products_build_and_records_its_end(tmp_path):
    """On the CPU the real builder refuses (no CUDA): the stage records that failure."""
    out = tmp_path / "probe.jsonl"
    r = subprocess.run([sys.executable, "-m", "atelier_worker.bench_probe", "fast_build", "--preset", "tiny",
                        "--device", "cpu", "--size", "64", "--fast-dir", str(tmp_path / "fast"),
                        "--duration", "600", "--out", str(out)],
                       check=False, capture_output=True, text=True, cwd=PYTHON_DIR, timeout=900,
                       env={**os.environ, "ATELIER_CACHE_DIR": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    recs = {x["what"]: x for x in map(json.loads, out.read_text().splitlines())}
    assert recs["fast_build_started"]["state"] == "building"
    assert recs["fast_build_started"]["key"].startswith("64x64-b2-t77-float16-")
    assert recs["fast_build"]["state"] == "failed" and "CUDA" in recs["fast_build"]["failed"]
