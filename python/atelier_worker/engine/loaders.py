"""Reads each kind of weights from disk into a module on the device: the base model (a
diffusers folder or a single file), a VAE, a ControlNet, a refiner and an upscaler. LoRAs
load onto the warm pipeline (loras.py). What is kept warm, and when a load is needed, is
model_cache.py's."""

from __future__ import annotations

import json
import logging
import os

import torch
from diffusers import StableDiffusionXLPipeline

from .. import device as devices
from .. import optimize, single_file, upscale
from ..spec import ERR_INVALID_REQUEST, ERR_UNSUPPORTED
from .checks import WEIGHTED, read_json
from .errors import JobFailed

log = logging.getLogger("atelier.engine.loaders")

def folder_variant(path: str) -> str | None:
    names = os.listdir(path)
    if any(n.endswith(".safetensors") and n.count(".") == 1 for n in names) or \
            any(n.endswith(".safetensors.index.json") and n.count(".") == 3 for n in names):
        return None
    return "fp16" if any(n.endswith(".fp16.safetensors") for n in names) else None


def _weights_variant(path: str) -> str | None:
    # Some downloads carry only `*.fp16.safetensors`; from_pretrained needs to be told.
    for c in WEIGHTED:
        names = os.listdir(os.path.join(path, c))
        plain = [n for n in names if n.endswith(".safetensors") and n.count(".") == 1]
        if plain:
            return None
    return "fp16"


def _vae_config(path: str) -> dict:
    try:
        with open(os.path.join(path, "vae", "config.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}  # from_pretrained will say what is wrong with it


def encode_in_own_dtype(vae) -> None:
    """Makes vae.encode take pixels of any dtype. The img2img and inpaint pipelines hand it
    pixels in the UNet's dtype, and cast only when the VAE's config says force_upcast; a VAE
    kept in float32 or bfloat16 (optimize.py) has that turned off, so its first convolution
    would refuse half-precision pixels."""
    if getattr(vae, "_atelier_encode", False):
        return
    encode = vae.encode

    def encode_cast(x, *args, **kwargs):
        return encode(x.to(vae.dtype), *args, **kwargs)

    vae.encode = encode_cast
    vae._atelier_encode = True


def load_model(path: str, device: str, dtype: torch.dtype, settings, cache_dir: str):
    """The SDXL pipeline of a model folder or single file, placed on the device with the
    speed settings applied; returns it and what the settings did."""
    log.info("loading %s on %s as %s", path, device, devices.dtype_name(dtype))
    if os.path.isfile(path):
        pipe = load_single_file(path, dtype, cache_dir)
    else:
        # SDXL's VAE overflows in fp16 (its config says force_upcast): loading it in fp32
        # once costs ~170 MB and saves the pipeline's casts back and forth at every decode.
        load_dtype = dtype
        if load_dtype == torch.float16 and _vae_config(path).get("force_upcast", True):
            load_dtype = {"default": torch.float16, "vae": torch.float32}
        # `dtype` is diffusers 0.42's name for the deprecated `torch_dtype`.
        pipe = StableDiffusionXLPipeline.from_pretrained(
            path, local_files_only=True, dtype=load_dtype, use_safetensors=True,
            variant=_weights_variant(path), add_watermarker=False,
        )
    optimize.place(pipe, device, settings)
    speed = optimize.apply(pipe, device, dtype, settings)
    pipe.set_progress_bar_config(disable=True)
    encode_in_own_dtype(pipe.vae)
    return pipe, speed


def load_single_file(path: str, dtype: torch.dtype, cache_dir: str):
    config = single_file.config_for(path, cache_dir)
    try:
        pipe = StableDiffusionXLPipeline.from_single_file(
            path, config=config, local_files_only=True, torch_dtype=dtype,
            add_watermarker=False)
    except (ValueError, KeyError, RuntimeError, OSError) as e:
        raise JobFailed(ERR_UNSUPPORTED, f"{path} is not a single-file SDXL checkpoint this "
                        f"worker can load: {type(e).__name__}: {str(e)[:300]}",
                        field="model") from None
    if dtype == torch.float16 and pipe.vae.config.get("force_upcast", True):
        pipe.vae.to(torch.float32)
    return pipe


def load_vae(path: str, base_vae, device: str, dtype: torch.dtype, settings, cache_dir: str):
    """A request's VAE (a diffusers folder or one .safetensors file) for a model whose own
    VAE is base_vae, in the dtype the settings choose."""
    log.info("loading VAE %s", path)
    from diffusers import AutoencoderKL

    try:
        if os.path.isfile(path):
            vae = single_file.load_vae(path, base_vae.config, cache_dir)
        else:
            vae = AutoencoderKL.from_pretrained(path, local_files_only=True, use_safetensors=True,
                                                variant=folder_variant(path))
    except single_file.SingleFileError as e:
        raise JobFailed(ERR_INVALID_REQUEST, str(e), field="vae") from None
    except (ValueError, OSError, RuntimeError) as e:
        raise JobFailed(ERR_INVALID_REQUEST, f"{path} is not a VAE this worker can load: "
                        f"{type(e).__name__}: {str(e)[:300]}", field="vae") from None
    if vae.config.latent_channels != base_vae.config.latent_channels:
        raise JobFailed(ERR_INVALID_REQUEST, f"{path} has {vae.config.latent_channels} latent "
                        "channels where SDXL has 4: it is not an SDXL VAE", field="vae")
    vd = optimize.vae_dtype(settings, dtype, bool(vae.config.get("force_upcast", False)))
    vae.to(device, vd)
    if vd != torch.float16:
        vae.register_to_config(force_upcast=False)
    encode_in_own_dtype(vae)
    return vae


def load_controlnet(path: str, device: str, dtype: torch.dtype, field: str):
    """A ControlNet folder (checks.check_controlnet_fits has made sure it fits the UNet)."""
    from diffusers import ControlNetModel

    log.info("loading ControlNet %s", path)
    try:
        model = ControlNetModel.from_pretrained(
            path, local_files_only=True, use_safetensors=True, dtype=dtype,
            variant=folder_variant(path))
    except (ValueError, OSError, RuntimeError) as e:
        raise JobFailed(ERR_INVALID_REQUEST, f"{path} is not a ControlNet this worker can "
                        f"load: {type(e).__name__}: {str(e)[:300]}", field=field) from None
    model.to(device).eval()
    return model


def load_refiner(path: str, base, device: str, dtype: torch.dtype):
    """A refiner folder as an img2img pipeline that shares the base's modules it can."""
    log.info("loading refiner %s", path)
    from diffusers import StableDiffusionXLImg2ImgPipeline

    index = read_json(os.path.join(path, "model_index.json"))
    # The refiner shares the base's second text encoder (both SDXL models use OpenCLIP
    # bigG) and its VAE, so that neither is loaded twice; a full model as refiner shares
    # the first encoder as well.
    shared = dict(text_encoder_2=base.text_encoder_2, tokenizer_2=base.tokenizer_2,
                  vae=base.vae)
    if (index.get("text_encoder") or [None])[0]:
        shared.update(text_encoder=base.text_encoder, tokenizer=base.tokenizer)
    unet_cfg = read_json(os.path.join(path, "unet", "config.json"))
    te2_dim = base.text_encoder_2.config.hidden_size
    te_dims = te2_dim + (base.text_encoder.config.hidden_size if "text_encoder" in shared else 0)
    if unet_cfg.get("cross_attention_dim") != te_dims:
        raise JobFailed(ERR_INVALID_REQUEST, f"{path} does not fit this model: its UNet "
                        f"expects text features of {unet_cfg.get('cross_attention_dim')}, the "
                        f"model's text encoders give {te_dims} (a refiner for another base?)",
                        field="refiner")
    try:
        refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
            path, local_files_only=True, use_safetensors=True, dtype=dtype,
            variant=folder_variant(os.path.join(path, "unet")), add_watermarker=False,
            **shared)
    except (ValueError, OSError, RuntimeError) as e:
        raise JobFailed(ERR_INVALID_REQUEST, f"{path} is not a refiner this worker can "
                        f"load: {type(e).__name__}: {str(e)[:300]}", field="refiner") from None
    refiner.unet.to(device)
    refiner.set_progress_bar_config(disable=True)
    return refiner


def load_upscaler(path: str, device: str):
    log.info("loading upscaler %s", path)
    try:
        return upscale.load(path, device)
    except upscale.UpscalerError as e:
        raise JobFailed(ERR_INVALID_REQUEST, str(e), field="upscaler") from None
