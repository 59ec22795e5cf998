"""The request's input images: init image, inpainting mask, control images (with the
built-in Canny preprocessor), and the mask overlay that keeps the unmasked pixels."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageFilter, UnidentifiedImageError


class ImageError(ValueError):
    """An input image that cannot be used; `field` names the request field."""

    def __init__(self, message: str, field: str):
        super().__init__(message)
        self.field = field


def open_image(path: str, field: str, mode: str = "RGB") -> Image.Image:
    if not os.path.exists(path):
        raise ImageError(f"image {path} does not exist", field)
    if os.path.isdir(path):
        raise ImageError(f"{path} is a folder, not an image", field)
    try:
        with Image.open(path) as im:
            im.load()
            if mode == "L" and im.mode in ("RGBA", "LA"):
                # A mask painted on a transparent layer: what is painted is what is masked.
                alpha = im.getchannel("A")
                if alpha.getextrema()[0] < 255:
                    return alpha
            return im.convert(mode)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageError(f"{path} is not an image this worker can read ({e})", field) from None


def fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """Resized (stretched) to width x height, as the pipelines need; unchanged if it fits."""
    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.Resampling.LANCZOS)


def canny(image: Image.Image, low: int, high: int) -> Image.Image:
    """OpenCV's Canny edges, white on black, as three channels (what canny ControlNets see)."""
    import cv2

    edges = cv2.Canny(np.asarray(image.convert("RGB")), low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1), "RGB")


def blur_mask(mask: Image.Image, radius: int) -> Image.Image:
    """The mask's edge softened by a Gaussian of the given radius (A1111's mask blur)."""
    mask = mask.convert("L")
    return mask.filter(ImageFilter.GaussianBlur(radius)) if radius > 0 else mask


def crop_region(mask: Image.Image, width: int, height: int, pad: int) -> tuple[int, int, int, int]:
    """The box around the mask's white part plus `pad` pixels, grown to width:height's aspect
    and kept inside the picture ("only masked" inpainting)."""
    from diffusers.image_processor import VaeImageProcessor

    return tuple(int(v) for v in VaeImageProcessor.get_crop_region(mask, width, height, pad=pad))


def overlay(original: Image.Image, generated: Image.Image, mask: Image.Image,
            box: tuple[int, int, int, int] | None = None) -> Image.Image:
    """The generated pixels where the (blurred) mask is white, the original's elsewhere,
    blended along the blur. With a box, `generated` is the repainted crop, pasted back into it."""
    if box is not None:
        x0, y0, x1, y1 = box
        full = original.copy()
        full.paste(generated.resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS), (x0, y0))
        generated = full
    m = np.asarray(mask.convert("L"), dtype=np.float32)[..., None] / 255.0
    a = np.asarray(original.convert("RGB"), dtype=np.float32)
    b = np.asarray(generated.convert("RGB"), dtype=np.float32)
    out = a * (1.0 - m) + b * m
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")
