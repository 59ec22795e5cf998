"""The threaded PNG encoder and the whole-file PNG writes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from atelier_worker import png


@pytest.mark.parametrize("shape", [(1, 1), (37, 51), (300, 260), (512, 512)])
def test_encode_png_round_trips_pixels_and_text(shape):
    rng = np.random.default_rng(0)
    h, w = shape
    smooth = (np.linspace(0, 255, w)[None, :, None] + rng.normal(size=(h, w, 3)) * 3)
    for arr in (rng.integers(0, 256, (h, w, 3), dtype=np.uint8), smooth.clip(0, 255).astype(np.uint8)):
        data = png.encode_png(arr, {"parameters": "a lighthouse\nSteps: 4, Seed: 7"})
        im = Image.open(io.BytesIO(data))
        im.load()
        assert im.mode == "RGB" and im.size == (w, h)
        assert (np.asarray(im) == arr).all()
        assert im.text["parameters"] == "a lighthouse\nSteps: 4, Seed: 7"


def test_encode_png_writes_non_latin1_text_as_itxt():
    data = png.encode_png(np.zeros((8, 8, 3), np.uint8), {"parameters": "été 東京"})
    assert b"iTXt" in data and b"tEXt" not in data
    assert Image.open(io.BytesIO(data)).text["parameters"] == "été 東京"
