"""Upscaling the finished images: Lanczos, or an ESRGAN-family model loaded with spandrel,
run in overlapping tiles so that a large image fits in memory."""

from __future__ import annotations

import logging
import math
import os

import numpy as np
import torch
from PIL import Image

from .spec import LANCZOS_UPSCALER

log = logging.getLogger("atelier.upscale")

TILE = 512      # input pixels a side per tile
OVERLAP = 16    # input pixels each tile shares with its neighbours


class UpscalerError(ValueError):
    field = "upscaler"


def display_name(upscaler: str) -> str:
    if upscaler == LANCZOS_UPSCALER:
        return "Lanczos"
    base = os.path.basename(upscaler.rstrip("/\\"))
    return base[:-len(".safetensors")] if base.lower().endswith(".safetensors") else base


def load(path: str, device: str):
    """The spandrel model descriptor of an upscaler file, in eval mode on device."""
    try:
        import spandrel
    except ImportError:
        raise UpscalerError("model upscalers need the spandrel package, which this worker's "
                            "Python lacks: rebuild the venv (make venv)") from None
    try:
        desc = spandrel.ModelLoader(device="cpu").load_from_file(path)
    except spandrel.UnsupportedModelError:
        raise UpscalerError(f"{path} is not an upscaler model spandrel knows (ESRGAN, "
                            "Real-ESRGAN, SwinIR, …)") from None
    except Exception as e:  # noqa: BLE001 - a broken or foreign file
        raise UpscalerError(f"{path} is not an upscaler model: {type(e).__name__}: "
                            f"{str(e)[:300]}") from None
    if not isinstance(desc, spandrel.ImageModelDescriptor) or desc.scale < 1:
        raise UpscalerError(f"{path} is a {getattr(desc, 'architecture', None) and desc.architecture.name} "
                            "model, not a super-resolution upscaler")
    desc.to(device).eval()
    return desc


def lanczos(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


@torch.inference_mode()
def _run_tiled(desc, image: Image.Image, tile: int = TILE, overlap: int = OVERLAP) -> Image.Image:
    """One pass of the model, tile by tile; each tile's border (the overlap) is cut away so
    that its seams do not show."""
    s = desc.scale
    arr = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    x = arr.permute(2, 0, 1).unsqueeze(0)
    _, _, h, w = x.shape
    out = torch.zeros(1, 3, h * s, w * s)
    param = next(desc.model.parameters(), None)
    dev = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.dtype.is_floating_point else torch.float32
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            # The tile with its overlap, clamped to the picture.
            py0, px0 = max(y0 - overlap, 0), max(x0 - overlap, 0)
            py1, px1 = min(y1 + overlap, h), min(x1 + overlap, w)
            piece = desc(x[:, :, py0:py1, px0:px1].to(dev, dtype)).float().cpu()
            out[:, :, y0 * s:y1 * s, x0 * s:x1 * s] = piece[
                :, :, (y0 - py0) * s:(y0 - py0 + y1 - y0) * s, (x0 - px0) * s:(x0 - px0 + x1 - x0) * s]
    pixels = (out[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(pixels, "RGB")


def upscale(image: Image.Image, factor: float, desc=None) -> Image.Image:
    """The image scaled by factor: with a model, as many model passes as reach the size
    (at most three), then Lanczos to the exact size; without one, Lanczos alone."""
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    if desc is not None and factor > 1:
        passes = max(1, min(3, math.ceil(math.log(factor, desc.scale) - 1e-9))) if desc.scale > 1 else 1
        for _ in range(passes):
            image = _run_tiled(desc, image)
    return lanczos(image, size)
