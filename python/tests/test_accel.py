"""The speed settings: read from the environment and checked; nothing here compiles."""

from __future__ import annotations

import os
import sys

import pytest

from atelier_worker import accel


def test_defaults_touch_nothing_on_the_cpu(monkeypatch):
    for k in list(os.environ):
        if k.startswith("ATELIER_") and k not in ("ATELIER_CACHE_DIR",):
            monkeypatch.delenv(k, raising=False)
    s = accel.from_env("cpu")
    assert (s.compile, s.fuse_qkv, s.cudnn_benchmark, s.fp8, s.offload) == ("off", False, False, False, "none")
    g = accel.from_env("cuda")
    assert (g.compile, g.fuse_qkv, g.cudnn_benchmark) == ("auto", True, False), \
        "cuDNN's autotuning costs the fast path's first image and buys it nothing"
    monkeypatch.setenv("ATELIER_COMPILE", "off")
    assert accel.from_env("cuda").cudnn_benchmark, "the eager path autotunes its convolutions"
    monkeypatch.setenv("ATELIER_COMPILE", "auto")
    monkeypatch.setenv("ATELIER_CUDNN_BENCHMARK", "1")
    assert accel.from_env("cuda").cudnn_benchmark, "asked for: on"


def test_settings_are_read_and_checked(monkeypatch):
    monkeypatch.setenv("ATELIER_COMPILE", "full")
    monkeypatch.setenv("ATELIER_COMPILE_MODE", "reduce-overhead")
    monkeypatch.setenv("ATELIER_VAE_DTYPE", "bfloat16")
    s = accel.from_env("cuda")
    assert (s.compile, s.compile_mode, s.vae_dtype) == ("full", "reduce-overhead", "bfloat16")
    monkeypatch.setenv("ATELIER_OFFLOAD", "model")
    assert accel.from_env("cuda").compile == "off"  # offload and compile do not mix
    monkeypatch.setenv("ATELIER_COMPILE", "sometimes")
    with pytest.raises(accel.SettingError, match="ATELIER_COMPILE"):
        accel.from_env("cuda")


def test_setup_env_puts_the_compile_cache_under_the_cache_dir(monkeypatch, tmp_path):
    # Set (then deleted) through monkeypatch, so that what setup_env sets is undone after.
    for k in ("TORCHINDUCTOR_CACHE_DIR", "TORCHINDUCTOR_FX_GRAPH_CACHE", "TORCHINDUCTOR_AUTOGRAD_CACHE"):
        monkeypatch.setenv(k, "x")
        monkeypatch.delenv(k)
    monkeypatch.setenv("ATELIER_CACHE_DIR", str(tmp_path))
    accel.setup_env()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == os.path.join(str(tmp_path), "inductor")


def test_importing_accel_does_not_import_torch():
    import subprocess

    code = "import sys, atelier_worker.accel; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(accel.__file__))})
    assert out.stdout.strip() == "False", out.stderr


def test_speed_vars_are_the_apps_list():
    """accel.SPEED_VARS (what a Ray actor gets from its proxy) is core/settings' SpeedVars."""
    import re

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "core", "settings", "worker.go"), encoding="utf-8") as f:
        block = re.search(r"var SpeedVars = \[\]string\{([^}]*)\}", f.read()).group(1)
    assert tuple(re.findall(r'"(ATELIER_\w+)"', block)) == accel.SPEED_VARS


def test_speed_env_is_what_is_set(monkeypatch):
    for k in accel.SPEED_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("ATELIER_VAE_TILING", "1")
    monkeypatch.setenv("ATELIER_HOME", "/somewhere")  # not a speed variable: stays here
    assert accel.speed_env() == {"ATELIER_VAE_TILING": "1"}
