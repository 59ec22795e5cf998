"""The warm models: pipelines kept loaded between jobs, least recently used first, within a
count and a memory budget (ATELIER_WARM_MODELS, ATELIER_WARM_MODELS_GB), and what jobs add
to them (a VAE, LoRAs, ControlNets, a refiner, an upscaler), each reused while the next job
asks for the same file. loaders.py does the reading."""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from diffusers import StableDiffusionXLPipeline

from .. import loras
from ..spec import ERR_INVALID_REQUEST, LANCZOS_UPSCALER, STAGE_LOADING_MODEL
from . import loaders, memory
from .checks import Inputs, check_controlnet_fits
from .errors import JobFailed

log = logging.getLogger("atelier.engine.model_cache")


@dataclass
class Warm:
    """A loaded model and what jobs have added to it."""
    key: tuple
    pipe: StableDiffusionXLPipeline
    scheduler_config: object
    base_vae: object           # the model's own VAE, while a request's VAE replaces it
    vae_key: str = ""          # the request VAE the pipeline has now ("" = its own)
    adapters: set = field(default_factory=set)
    size_bytes: int = 0
    unfused: bool = False      # QKV projections unfused for LoRAs


def _disk_bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files if f.endswith(".safetensors"))
    return total


def _module_bytes(pipe) -> int:
    total = 0
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        m = getattr(pipe, name, None)
        if m is not None:
            total += sum(p.numel() * p.element_size() for p in m.parameters())
    return total


class ModelCache:
    """What stays loaded between jobs on one device, in one dtype."""

    def __init__(self, device: str, dtype: torch.dtype, settings, cache_dir: str):
        self.device, self.dtype, self.settings, self.cache_dir = device, dtype, settings, cache_dir
        self.models: OrderedDict[tuple, Warm] = OrderedDict()
        self.max_models = max(1, int(os.environ.get("ATELIER_WARM_MODELS") or 1))
        self.budget_bytes = int(float(os.environ.get("ATELIER_WARM_MODELS_GB") or 0) * 2**30)
        self.key: tuple | None = None   # the model of the current job
        self.controlnets: dict = {}
        self.refiner = None         # (key, pipeline)
        self.refiner_config = None
        self.upscaler = None        # (key, spandrel descriptor)
        self.speed: dict = {}       # what the speed settings did to the last model loaded

    def scheduler_config(self):
        """The scheduler config of the current job's model."""
        return self.models[self.key].scheduler_config

    def model(self, path: str, stage) -> tuple[Warm, float]:
        """The warm pipeline of this model, loaded if it is not; least recently used ones
        beyond the count and memory budget are dropped first."""
        key = (os.path.realpath(path), self.device, self.dtype)
        warm = self.models.get(key)
        if warm is not None:
            self.models.move_to_end(key)
            self.key = key
            return warm, 0.0
        stage(STAGE_LOADING_MODEL)
        need = _disk_bytes(path)
        while self.models and (len(self.models) >= self.max_models or (
                self.budget_bytes and sum(w.size_bytes for w in self.models.values()) + need
                > self.budget_bytes)):
            old_key, _ = self.models.popitem(last=False)
            log.info("unloading %s (least recently used)", old_key[0])
            self._drop_dependents()
            memory.free(self.device)
        t0 = time.perf_counter()
        pipe, self.speed = loaders.load_model(path, self.device, self.dtype, self.settings,
                                              self.cache_dir)
        warm = Warm(key=key, pipe=pipe, scheduler_config=pipe.scheduler.config, base_vae=pipe.vae,
                    size_bytes=_module_bytes(pipe))
        self.models[key] = warm
        self.key = key
        return warm, time.perf_counter() - t0

    def use_vae(self, warm: Warm, inp: Inputs, stage) -> None:
        want = inp.vae
        if want == warm.vae_key:
            return
        if not want:
            log.info("back to the model's own VAE")
            warm.pipe.vae, warm.vae_key = warm.base_vae, ""
            return
        stage(STAGE_LOADING_MODEL)
        vae = loaders.load_vae(want, warm.base_vae, self.device, self.dtype, self.settings,
                               self.cache_dir)
        warm.pipe.vae, warm.vae_key = vae, want

    def use_loras(self, warm: Warm, inp: Inputs, stage) -> None:
        if not inp.loras and not warm.adapters:
            return
        unet = warm.pipe.unet
        if inp.loras and not warm.unfused and getattr(unet, "original_attn_processors", None) is not None:
            # LoRAs target the separate q/k/v projections that fusing replaced.
            log.info("unfusing the UNet's QKV projections for LoRAs")
            unet.unfuse_qkv_projections()
            warm.unfused = True
        try:
            warm.adapters = loras.apply(warm.pipe, inp.loras, warm.adapters,
                                        lambda: stage(STAGE_LOADING_MODEL))
        except loras.LoraError as e:
            warm.adapters = loras.loaded(warm.pipe)
            raise JobFailed(ERR_INVALID_REQUEST, str(e), field=e.field) from None

    def use_controlnets(self, warm: Warm, inp: Inputs, stage) -> list:
        models = []
        unet_cfg = warm.pipe.unet.config
        for i, (_cn, path, _name, _image) in enumerate(inp.controlnets):
            key = (os.path.realpath(path), self.dtype)
            model = self.controlnets.get(key)
            if model is None:
                field = f"controlnets[{i}].model"
                check_controlnet_fits(path, unet_cfg, field)
                stage(STAGE_LOADING_MODEL)
                model = loaders.load_controlnet(path, self.device, self.dtype, field)
                self.controlnets[key] = model
            models.append(model)
        # Keep only what this job uses once there are more than a few.
        if len(self.controlnets) > 4:
            used = {id(m) for m in models}
            self.controlnets = {k: m for k, m in self.controlnets.items() if id(m) in used}
        return models

    def use_refiner(self, warm: Warm, inp: Inputs, stage):
        if not inp.refiner:
            return None
        key = (os.path.realpath(inp.refiner), warm.key)
        if self.refiner is not None and self.refiner[0] == key:
            return self.refiner[1]
        self.refiner = None
        stage(STAGE_LOADING_MODEL)
        refiner = loaders.load_refiner(inp.refiner, warm.pipe, self.device, self.dtype)
        self.refiner = (key, refiner)
        self.refiner_config = refiner.scheduler.config
        return refiner

    def use_upscaler(self, inp: Inputs, stage):
        if not inp.upscaler or inp.upscaler == LANCZOS_UPSCALER:
            return None
        st = os.stat(inp.upscaler)
        key = (os.path.realpath(inp.upscaler), st.st_size, st.st_mtime_ns)
        if self.upscaler is not None and self.upscaler[0] == key:
            return self.upscaler[1]
        stage(STAGE_LOADING_MODEL)
        desc = loaders.load_upscaler(inp.upscaler, self.device)
        self.upscaler = (key, desc)
        return desc

    def _drop_dependents(self) -> None:
        # The refiner shares the base's encoder and VAE, ControlNets were checked against it.
        self.refiner = None
        self.controlnets = {}

    def unload(self) -> None:
        if not self.models and self.upscaler is None:
            return
        log.info("unloading %s", ", ".join(k[0] for k in self.models) or "upscaler")
        self.models.clear()
        self.key = None
        self._drop_dependents()
        self.upscaler = None
        memory.free(self.device)
