"""Single-file SDXL checkpoints (.safetensors): checked by their header, loaded with
diffusers' from_single_file against configs kept on disk, so that nothing is downloaded."""

from __future__ import annotations

import json
import os
import struct

# A key every SDXL checkpoint in the original (Stability) layout has, and the one that tells
# the base (two text encoders) from the refiner (one).
UNET_KEY = "model.diffusion_model.input_blocks.0.0.weight"
TE1_PREFIX = "conditioner.embedders.0.transformer."
TE2_PREFIX = "conditioner.embedders.1.model."


class SingleFileError(ValueError):
    pass


def header(path: str) -> dict:
    """The safetensors header (tensor names to dtype/shape), without reading the weights."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError("too short")
            (n,) = struct.unpack("<Q", raw)
            if n > 100 << 20:
                raise ValueError("header too large")
            meta = json.loads(f.read(n))
        if not isinstance(meta, dict):
            raise ValueError("header is not an object")
        return meta
    except (OSError, ValueError, struct.error) as e:
        raise SingleFileError(f"{path} is not a readable .safetensors file ({e})") from None


def check(path: str) -> dict:
    """Refuses a file that is no SDXL checkpoint; returns its header."""
    meta = header(path)
    if UNET_KEY not in meta:
        raise SingleFileError(f"{path} is not a single-file Stable Diffusion checkpoint (no "
                              "model.diffusion_model weights): a LoRA, VAE or ControlNet goes in "
                              "its own field")
    if not any(k.startswith(TE2_PREFIX) for k in meta):
        raise SingleFileError(f"{path} is not an SDXL base checkpoint (it has no second text "
                              "encoder: an SD 1.5/2.x model, or an SDXL refiner, which goes in "
                              "the refiner field as a diffusers folder)")
    return meta


def config_for(path: str, cache_dir: str) -> str:
    """The diffusers folder whose configs and tokenizers describe this checkpoint."""
    from . import tiny

    meta = check(path)
    channels = meta[UNET_KEY]["shape"][0]
    if channels == tiny.configs("tiny", 1, 0, 0)["unet"]["block_out_channels"][0]:
        return tiny.create(os.path.join(cache_dir, "models", tiny.TINY_NAME))
    raise SingleFileError(f"{path}: loading real single-file SDXL checkpoints needs the SDXL "
                          "configs and CLIP tokenizer files, which this worker does not have yet")


def load_vae(path: str, base_config):
    raise SingleFileError(f"{path}: single-file VAEs are not supported yet: use a VAE's "
                          "diffusers folder")
