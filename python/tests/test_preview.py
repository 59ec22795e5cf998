"""Previews without the VAE: the latent projection and the x0 tap. CPU only."""

from __future__ import annotations

import torch

from atelier_worker.engine import preview


def test_previewer_writes_a_latent_sized_rgb_image():
    got = []
    p = preview.Previewer(got.append)
    called = []
    assert p.submit(torch.randn(4, 16, 12), lambda: called.append(1))
    p.wait()
    assert len(got) == 1 and got[0].size == (12, 16) and got[0].mode == "RGB" and called == [1]


def test_x0_tap_keeps_the_predicted_clean_latents():
    from diffusers import EulerDiscreteScheduler

    s = EulerDiscreteScheduler(num_train_timesteps=1000)
    s.set_timesteps(4)
    tap = preview.X0Tap(s)
    x = torch.randn(1, 4, 8, 8)
    out = s.step(torch.randn_like(x), s.timesteps[0], x, return_dict=False)
    assert isinstance(out, tuple) and out[0].shape == x.shape
    assert tap.x0 is not None and tap.x0.shape == x.shape


def test_zero_latents_preview_as_mid_grey():
    got = []
    p = preview.Previewer(got.append)
    assert p.submit(torch.zeros(4, 16, 8))
    p.wait()
    assert got[0].size == (8, 16) and got[0].mode == "RGB"
    # Zero latents map to the bias: a mid grey, not black.
    assert 100 < got[0].getpixel((0, 0))[0] < 160
