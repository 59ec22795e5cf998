"""Step 7 of a job: the VAE decodes a latent to pixels. A decode with NaN or inf (SDXL's VAE
overflowing in half precision) is done again in float32, and the VAE stays in float32."""

from __future__ import annotations

import logging

import torch
from PIL import Image as PILImage

from .. import device as devices
from .. import optimize
from ..spec import ERR_INTERNAL
from .errors import JobFailed

log = logging.getLogger("atelier.engine.decode")


def vae_decode(vae, latents: torch.Tensor, settings) -> torch.Tensor:
    """The VAE decoder's raw output (-1..1) for latents, unscaled as SDXL's VAE wants."""
    cfg = vae.config
    latents = latents.to(optimize.module_device(vae), vae.dtype)  # offload: where it will run
    if getattr(cfg, "latents_mean", None) is not None and getattr(cfg, "latents_std", None) is not None:
        mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1).to(latents)
        std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1).to(latents)
        latents = latents * std / cfg.scaling_factor + mean
    else:
        latents = latents / cfg.scaling_factor
    with optimize.sdpa_context(settings):
        return vae.decode(latents, return_dict=False)[0]


@torch.inference_mode()
def image(vae, latents: torch.Tensor, settings) -> tuple[PILImage.Image, bool]:
    """The VAE's image of one latent, and whether it had to fall back to float32."""
    fell_back = False
    out = vae_decode(vae, latents, settings)
    if not torch.isfinite(out).all():
        log.warning("the VAE (%s) decoded NaN/inf: decoding again in float32, and keeping "
                    "this VAE in float32", devices.dtype_name(vae.dtype))
        fell_back = True
        if vae.dtype != torch.float32:
            vae.to(torch.float32)
            vae.register_to_config(force_upcast=False)
        out = vae_decode(vae, latents, settings)
        if not torch.isfinite(out).all():
            raise JobFailed(ERR_INTERNAL, "the VAE decodes NaN even in float32: its weights are "
                            "broken; choose another VAE")
    arr = ((out[0].float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return PILImage.fromarray(arr.permute(1, 2, 0).cpu().numpy(), "RGB"), fell_back
