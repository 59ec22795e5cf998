"""The speed module: settings from the environment, the threaded PNG encoder, the cheap
preview and the x0 tap. CPU only; nothing here compiles."""

from __future__ import annotations

import io
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from atelier_worker import accel


def test_defaults_touch_nothing_on_the_cpu(monkeypatch):
    for k in list(os.environ):
        if k.startswith("ATELIER_") and k not in ("ATELIER_CACHE_DIR",):
            monkeypatch.delenv(k, raising=False)
    s = accel.from_env("cpu")
    assert (s.compile, s.fuse_qkv, s.cudnn_benchmark, s.fp8, s.offload) == ("off", False, False, False, "none")
    g = accel.from_env("cuda")
    assert (g.compile, g.fuse_qkv, g.cudnn_benchmark) == ("regional", True, True)


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


@pytest.mark.parametrize("shape", [(1, 1), (37, 51), (300, 260), (512, 512)])
def test_encode_png_round_trips_pixels_and_text(shape):
    rng = np.random.default_rng(0)
    h, w = shape
    smooth = (np.linspace(0, 255, w)[None, :, None] + rng.normal(size=(h, w, 3)) * 3)
    for arr in (rng.integers(0, 256, (h, w, 3), dtype=np.uint8), smooth.clip(0, 255).astype(np.uint8)):
        data = accel.encode_png(arr, {"parameters": "a lighthouse\nSteps: 4, Seed: 7"})
        im = Image.open(io.BytesIO(data))
        im.load()
        assert im.mode == "RGB" and im.size == (w, h)
        assert (np.asarray(im) == arr).all()
        assert im.text["parameters"] == "a lighthouse\nSteps: 4, Seed: 7"


def test_encode_png_writes_non_latin1_text_as_itxt():
    data = accel.encode_png(np.zeros((8, 8, 3), np.uint8), {"parameters": "été 東京"})
    assert b"iTXt" in data and b"tEXt" not in data
    assert Image.open(io.BytesIO(data)).text["parameters"] == "été 東京"


def test_previewer_writes_a_latent_sized_rgb_image():
    got = []
    p = accel.Previewer(got.append)
    called = []
    assert p.submit(torch.randn(4, 16, 12), lambda: called.append(1))
    p.wait()
    assert len(got) == 1 and got[0].size == (12, 16) and got[0].mode == "RGB" and called == [1]


def test_x0_tap_keeps_the_predicted_clean_latents():
    from diffusers import EulerDiscreteScheduler

    s = EulerDiscreteScheduler(num_train_timesteps=1000)
    s.set_timesteps(4)
    tap = accel.X0Tap(s)
    x = torch.randn(1, 4, 8, 8)
    out = s.step(torch.randn_like(x), s.timesteps[0], x, return_dict=False)
    assert isinstance(out, tuple) and out[0].shape == x.shape
    assert tap.x0 is not None and tap.x0.shape == x.shape


def test_module_device_follows_an_offload_hook():
    m = torch.nn.Linear(2, 2)
    assert accel.module_device(m) == torch.device("cpu")

    class Hook:
        execution_device = "cuda:0"

    m._hf_hook = Hook()
    assert accel.module_device(m) == "cuda:0"
