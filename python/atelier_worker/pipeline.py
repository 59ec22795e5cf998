"""Runs one generate job on diffusers' SDXL pipelines (txt2img, img2img, inpaint, their
ControlNet versions, a refiner after any of them), as numbered steps."""

from __future__ import annotations

import gc
import inspect
import json
import logging
import os
import resource
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from collections import OrderedDict

from diffusers import StableDiffusionXLPipeline
from PIL import Image as PILImage
from PIL.PngImagePlugin import PngInfo

from . import __version__, accel, device as devices, infotext, loras, prompts, schedulers, single_file, tiny, upscale
from . import images as imgs
from .job import Job  # noqa: F401 (pipeline.Job, as before)
from .protocol import (Accepted, Error, Image, Message, Metrics, Preview, Progress, Request, Result,
                       hires_size)

log = logging.getLogger("atelier.pipeline")

# Every part of a diffusers SDXL folder that the pipeline loads.
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
WEIGHTED = ("unet", "vae", "text_encoder", "text_encoder_2")
PICKLE_EXTS = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")

# Linear map from SDXL's 4 latent channels to RGB in [-1, 1] (the factors ComfyUI and
# others use for SDXL previews): a preview without running the VAE.
_LATENT_RGB = torch.tensor([
    [0.3651, 0.4232, 0.4341],
    [-0.2533, -0.0042, 0.1068],
    [0.1076, 0.1111, -0.0362],
    [-0.3165, -0.2492, -0.2188],
])
_LATENT_RGB_BIAS = torch.tensor([0.1084, -0.0175, -0.0011])


class JobFailed(Exception):
    """Ends a job with a protocol error of the given code."""

    def __init__(self, code: str, message: str, field: str = "", detail: str = ""):
        super().__init__(message)
        self.code, self.message, self.field, self.detail = code, message, field, detail


class Cancelled(Exception):
    """Raised out of the step callback, so the pipeline stops before the next step."""


def _stem(path: str) -> str:
    """A file or folder's name for the metadata: without its folder and .safetensors."""
    base = os.path.basename(path.rstrip("/\\")) or path
    return base[:-len(".safetensors")] if base.lower().endswith(".safetensors") else base


def check_file(path: str, field: str, what: str, exts: tuple[str, ...]) -> None:
    """A weights file the request names: present, a file, and of a format we load."""
    ext = os.path.splitext(path)[1].lower()
    if ext in PICKLE_EXTS:
        raise JobFailed("unsupported", f"{path} is a pickle file ({ext}): Atelier never loads "
                        f"pickle files, because they can run code; use a .safetensors {what}",
                        field=field)
    if not os.path.exists(path):
        raise JobFailed("invalid_request", f"{what} {path} does not exist", field=field)
    if not os.path.isfile(path):
        raise JobFailed("invalid_request", f"{path} is a folder, not a {what} file", field=field)
    if ext not in exts:
        raise JobFailed("invalid_request", f"{path} is not a {what} file: expected "
                        f"{' or '.join(exts)}", field=field)


def check_component_folder(path: str, field: str, what: str) -> None:
    """A diffusers model folder (config.json and safetensors weights): a ControlNet or VAE."""
    if os.path.isfile(path):
        ext = os.path.splitext(path)[1].lower()
        if ext in PICKLE_EXTS:
            check_file(path, field, what, ())
        raise JobFailed("invalid_request", f"{path} is a file: a {what} is loaded from its "
                        "diffusers folder (config.json and weights)", field=field)
    if not os.path.isdir(path):
        raise JobFailed("invalid_request", f"{what} {path} does not exist", field=field)
    names = os.listdir(path)
    if "config.json" not in names:
        raise JobFailed("invalid_request", f"{path} has no config.json: it is not a diffusers "
                        f"{what} folder", field=field)
    if not any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names):
        pickles = [n for n in names if n.lower().endswith(PICKLE_EXTS)]
        raise JobFailed("unsupported" if pickles else "invalid_request",
                        f"{path} holds {'only pickle weights (' + pickles[0] + ')' if pickles else 'no weights'}"
                        f": Atelier loads .safetensors weights only", field=field)


def check_refiner_folder(path: str) -> None:
    if os.path.isfile(path):
        ext = os.path.splitext(path)[1].lower()
        if ext in PICKLE_EXTS:
            check_file(path, "refiner", "refiner", ())
        raise JobFailed("invalid_request", f"{path} is a file: a refiner is loaded from its "
                        "diffusers folder (model_index.json, unet/, …)", field="refiner")
    if not os.path.isdir(path):
        raise JobFailed("invalid_request", f"refiner {path} does not exist", field="refiner")
    for part in ("model_index.json", "unet"):
        if not os.path.exists(os.path.join(path, part)):
            raise JobFailed("invalid_request", f"refiner folder {path} has no {part}: it is not a "
                            "diffusers SDXL model folder", field="refiner")
    check_component_folder(os.path.join(path, "unet"), "refiner", "refiner UNet")


def check_controlnet_fits(path: str, unet_cfg, field: str) -> None:
    """Refuses, before loading its weights, a ControlNet made for another architecture."""
    cfg = _read_json(os.path.join(path, "config.json"))
    for key in ("cross_attention_dim", "addition_embed_type", "projection_class_embeddings_input_dim",
                "in_channels"):
        want, got = unet_cfg.get(key), cfg.get(key)
        if want != got:
            raise JobFailed(
                "invalid_request", f"ControlNet {path} does not fit this model: its "
                f"{key} is {got}, the model's is {want} (a ControlNet for another "
                "architecture, e.g. SD 1.5?); choose an SDXL ControlNet", field=field)


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            v = json.load(f)
        return v if isinstance(v, dict) else {}
    except (OSError, ValueError):
        return {}


def _folder_variant(path: str) -> str | None:
    names = os.listdir(path)
    if any(n.endswith(".safetensors") and n.count(".") == 1 for n in names) or \
            any(n.endswith(".safetensors.index.json") and n.count(".") == 3 for n in names):
        return None
    return "fp16" if any(n.endswith(".fp16.safetensors") for n in names) else None


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


def _count_steps(scheduler, steps: int, strength: float | None = None,
                 denoising_start: float | None = None, denoising_end: float | None = None) -> int:
    """The number of timesteps the SDXL pipelines run for these settings (their
    get_timesteps and denoising_start/end rules, on a scheduler of the job's kind)."""
    scheduler.set_timesteps(steps, device="cpu")
    ts = scheduler.timesteps
    order = getattr(scheduler, "order", 1)
    n_train = scheduler.config.num_train_timesteps
    if denoising_start is not None:
        cutoff = int(round(n_train - denoising_start * n_train))
        k = int((ts < cutoff).sum())
        if order == 2 and k % 2 == 0:
            k += 1
        ts = ts[len(ts) - k:] if k else ts[:0]
    elif strength is not None:
        init = min(int(steps * strength), steps)
        ts = ts[max(steps - init, 0) * order:]
    if denoising_end is not None:
        cutoff = int(round(n_train - denoising_end * n_train))
        ts = ts[:len([t for t in ts if t >= cutoff])]
    return max(1, len(ts))


def _vae_decode(vae, latents: torch.Tensor, settings) -> torch.Tensor:
    """The VAE decoder's raw output (-1..1) for latents, unscaled as SDXL's VAE wants."""
    cfg = vae.config
    latents = latents.to(accel.module_device(vae), vae.dtype)  # offload: where it will run
    if getattr(cfg, "latents_mean", None) is not None and getattr(cfg, "latents_std", None) is not None:
        mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1).to(latents)
        std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1).to(latents)
        latents = latents * std / cfg.scaling_factor + mean
    else:
        latents = latents / cfg.scaling_factor
    with accel.sdpa_context(settings):
        return vae.decode(latents, return_dict=False)[0]


def _encode_in_own_dtype(vae) -> None:
    """Makes vae.encode take pixels of any dtype. The img2img and inpaint pipelines hand it
    pixels in the UNet's dtype, and cast only when the VAE's config says force_upcast; a VAE
    kept in float32 or bfloat16 (accel.py) has that turned off, so its first convolution
    would refuse half-precision pixels."""
    if getattr(vae, "_atelier_encode", False):
        return
    encode = vae.encode

    def encode_cast(x, *args, **kwargs):
        return encode(x.to(vae.dtype), *args, **kwargs)

    vae.encode = encode_cast
    vae._atelier_encode = True


@dataclass
class Inputs:
    """What the request names, checked and resolved (tiny names to cache paths)."""
    loras: list = field(default_factory=list)        # loras.Wanted
    controlnets: list = field(default_factory=list)  # (ControlNet, path, name, PIL image)
    refiner: str = ""
    refiner_name: str = ""
    vae: str = ""
    vae_name: str = ""
    upscaler: str = ""
    upscaler_name: str = ""
    init: PILImage.Image | None = None
    mask: PILImage.Image | None = None
    created_s: float = 0.0


@dataclass
class Plan:
    """The prepared images and prompt embeddings of one job."""
    control_images: list = field(default_factory=list)
    control_paths: list = field(default_factory=list)
    control_scales: list = field(default_factory=list)
    control_starts: list = field(default_factory=list)
    control_ends: list = field(default_factory=list)
    init: PILImage.Image | None = None       # what the pipeline repaints (maybe a crop)
    init_full: PILImage.Image | None = None  # the init image at the output size
    mask: PILImage.Image | None = None
    mask_full: PILImage.Image | None = None  # the blurred mask at the output size
    box: tuple | None = None                 # the "only masked" crop, if any
    embeds: tuple = ()
    refiner_embeds: tuple = ()
    base_total: int = 0
    refiner_total: int = 0
    hires_total: int = 0
    hires_runner: object = None              # the img2img pipeline of the hires pass
    controlnets: list = field(default_factory=list)  # the loaded ControlNet models
    control_inputs: list = field(default_factory=list)  # (unit, input image) for the hires pass
    hires_controls: list = field(default_factory=list)  # control images at the hires size


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


# Rough device memory a batch image needs while denoising at 1024x1024 (see _first_chunk).
BATCH_BYTES_PER_MEGAPIXEL = float(os.environ.get("ATELIER_BATCH_GB_PER_MEGAPIXEL", "1.25")) * 2**30


def default_cache_dir() -> str:
    if os.environ.get("ATELIER_CACHE_DIR"):
        return os.environ["ATELIER_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "atelier")


def check_model_folder(path: str) -> None:
    """Refuses what cannot load, with a message that says what to do, before torch tries."""
    if not os.path.exists(path):
        raise JobFailed("model_not_found", f"model folder {path} does not exist: choose another "
                        "model, or download this one again", field="model")
    if os.path.isfile(path):
        ext = os.path.splitext(path)[1].lower()
        if ext in PICKLE_EXTS:
            raise JobFailed("unsupported", f"{path} is a pickle checkpoint ({ext}): Atelier never "
                            "loads pickle files, because they can run code; use a .safetensors "
                            "or diffusers-folder version of this model", field="model")
        if ext == ".safetensors":
            try:
                single_file.check(path)
            except single_file.SingleFileError as e:
                raise JobFailed("unsupported", str(e), field="model") from None
            return
        raise JobFailed("model_not_found", f"{path} is a file, not a diffusers model folder: "
                        "choose the folder that holds model_index.json", field="model")
    missing = [c + "/" for c in COMPONENTS if not os.path.isdir(os.path.join(path, c))]
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        missing.insert(0, "model_index.json")
    if missing:
        raise JobFailed("model_not_found", f"model folder {path} is incomplete: it has no "
                        f"{', '.join(missing)}; download the model again or choose another",
                        field="model")
    for c in WEIGHTED:
        names = os.listdir(os.path.join(path, c))
        if any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names):
            continue
        pickles = [n for n in names if n.lower().endswith(PICKLE_EXTS)]
        if pickles:
            raise JobFailed("unsupported", f"{c}/ in {path} holds only pickle weights "
                            f"({pickles[0]}): Atelier never loads pickle files; convert the model "
                            "to safetensors", field="model")
        raise JobFailed("model_not_found", f"{c}/ in {path} holds no weights: download the "
                        "model again or choose another", field="model")


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


def preview_file(job: Job) -> str:
    return os.path.join(job.request.output_dir, f".preview-{job.id}.png")


def latent_preview(latents: torch.Tensor) -> PILImage.Image:
    rgb = torch.einsum("chw,cr->hwr", latents.float().cpu(), _LATENT_RGB) + _LATENT_RGB_BIAS
    arr = ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    return PILImage.fromarray(arr, "RGB")


def write_png(image: PILImage.Image, path: str, parameters: str | None = None, sync: bool = True) -> None:
    """Writes through a temporary file and a rename, so that a reader never sees half a PNG."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}")
    info = None
    if parameters is not None:
        info = PngInfo()
        info.add_text("parameters", parameters)
    try:
        with open(tmp, "wb") as f:
            if image.mode == "RGB":
                # Deflated on several threads: PIL's single-threaded PNG takes longer than the
                # whole denoising loop on a fast GPU.
                f.write(accel.encode_png(np.asarray(image), None if parameters is None
                                         else {"parameters": parameters}))
            else:
                image.save(f, format="PNG", pnginfo=info)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def save_png(image: PILImage.Image, path: str, parameters: str) -> None:
    """write_png for a result: a full disk or a folder taken away mid-job ends the job
    saying which, and what to do."""
    try:
        write_png(image, path, parameters)
    except OSError as e:
        raise JobFailed("internal", f"could not save the image to {path}: {e.strerror or e}. "
                        "Free some disk space or choose another output folder, then generate "
                        "again", field="output_dir") from None


def _peak_memory(device: str) -> int:
    k = devices.kind(device)
    if k == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if k == "mps":
        return int(torch.mps.driver_allocated_memory())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _is_oom(e: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(e, (oom, torch.cuda.OutOfMemoryError)) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


class Engine:
    """Keeps the last model warm and runs jobs one at a time."""

    def __init__(self, device: str, dtype: torch.dtype, cache_dir: str | None = None):
        self.device = device
        self.dtype = dtype
        self.cache_dir = cache_dir or default_cache_dir()
        self._key: tuple | None = None
        self._pipe: StableDiffusionXLPipeline | None = None
        # Warm models, least recently used first; at most max_models, and within
        # models_budget bytes of weights when one is set (ATELIER_WARM_MODELS,
        # ATELIER_WARM_MODELS_GB).
        self._models: OrderedDict[tuple, Warm] = OrderedDict()
        self.max_models = max(1, int(os.environ.get("ATELIER_WARM_MODELS") or 1))
        self.models_budget = int(float(os.environ.get("ATELIER_WARM_MODELS_GB") or 0) * 2**30)
        self._controlnets: dict = {}
        self._refiner = None        # (key, pipeline)
        self._refiner_config = None
        self._upscaler = None       # (key, spandrel descriptor)
        self._vae_fallback = False
        try:
            self.accel = accel.from_env(devices.kind(device))
        except accel.SettingError as e:
            log.error("%s; using the default speed settings", e)
            self.accel = accel.Settings()
        accel.configure_torch(self.accel, devices.kind(device))
        self.speed: dict = {}

    # The whole job, with every failure turned into a protocol message.
    def run(self, job: Job, emit: Callable[[Message], None]) -> Message:
        start = time.perf_counter()
        emit(Accepted(id=job.id))
        try:
            return self._generate(job, emit, start)
        except Cancelled:
            log.info("cancelled")
            return Error(id=job.id, code="cancelled", message="the job was cancelled")
        except JobFailed as e:
            log.info("failed: %s: %s", e.code, e.message)
            return Error(id=job.id, code=e.code, message=e.message, field=e.field, detail=e.detail)
        except Exception as e:  # noqa: BLE001 - every failure must reach the bridge as a message
            if _is_oom(e):
                # The traceback's frames hold the tensors that filled the device.
                traceback.clear_frames(e.__traceback__)
                self._free_memory()
                r = job.request
                log.warning("out of memory: %s", e)
                return Error(id=job.id, code="out_of_memory",
                             message=f"the {devices.kind(self.device)} device ran out of memory at "
                                     f"{r.width}x{r.height}, batch {r.batch_size}: lower the size or "
                                     "the batch size, turn on model offload (ATELIER_OFFLOAD=model), "
                                     "or close other programs using the GPU",
                             detail=str(e))
            log.exception("internal error")
            return Error(id=job.id, code="internal", message=f"{type(e).__name__}: {e}",
                         detail=traceback.format_exc())
        finally:
            # Previews are only for watching a job; the result replaces them.
            try:
                os.unlink(preview_file(job))
            except OSError:
                pass

    def _generate(self, job: Job, emit: Callable[[Message], None], start: float) -> Result:
        r = job.request
        elapsed = lambda: round(time.perf_counter() - start, 3)  # noqa: E731

        def stage(name: str, step: int = 0, total: int = 0) -> None:
            if job.cancel.is_set():
                raise Cancelled()
            emit(Progress(id=job.id, stage=name, step=step, total=total, elapsed_s=elapsed()))

        if devices.kind(self.device) == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._vae_fallback = False
        if r.upscale_only:
            return self._upscale_only(job, stage, start)

        # 1. Check inputs: the model and every other file the request names, the input
        #    images, and the output folder, before anything slow is loaded.
        path, model_name, load_s = self._resolve_model(r.model, stage)
        t0 = time.perf_counter()
        inp = self._check_inputs(r, stage)
        load_s += inp.created_s
        try:
            os.makedirs(r.output_dir, exist_ok=True)
        except OSError as e:
            raise JobFailed("invalid_request", f"cannot create output folder {r.output_dir}: "
                            f"{e.strerror or e}", field="output_dir") from None

        # 2. Load the pipeline unless it is warm, then what the request adds to it: VAE,
        #    LoRAs, ControlNets, refiner, upscaler (each kept warm for the next job).
        warm, s = self._load(path, stage)
        load_s += s
        pipe = self._pipe = warm.pipe
        t0 = time.perf_counter()
        self._use_vae(warm, inp, stage)
        self._use_loras(warm, inp, stage)
        controlnets = self._load_controlnets(warm, inp, stage)
        refiner = self._load_refiner(warm, inp, stage)
        upscaler = self._load_upscaler(inp, stage)
        load_s += time.perf_counter() - t0
        try:
            pipe.scheduler = schedulers.build(r.scheduler, r.schedule, warm.scheduler_config)
            if refiner is not None:
                refiner.scheduler = schedulers.build(r.scheduler, r.schedule, self._refiner_config)
                refiner.vae = pipe.vae
        except schedulers.ScheduleError as e:
            raise JobFailed("invalid_request", str(e), field="schedule") from None

        # 3. Prepare the images: control images (Canny), init image and mask, at the output size.
        plan = self._prepare(job, inp, controlnets, stage)
        plan.controlnets = controlnets
        runner = self._runner(pipe, controlnets, plan)

        # 4. Encode the prompt once; every chunk of the batch repeats it.
        stage("encoding")
        guidance = r.cfg > 1.0
        with torch.inference_mode():
            # A1111's emphasis and prompts past 75 tokens (diffusers would cut them).
            plan.embeds = prompts.encode(pipe, r.prompt, r.negative_prompt, guidance)
            if refiner is not None:
                plan.refiner_embeds = prompts.encode(refiner, r.prompt, r.negative_prompt,
                                                     guidance)
        plan.base_total, plan.refiner_total = self._step_counts(r, plan, refiner)
        if r.hires_scale:
            plan.hires_total = _count_steps(
                schedulers.build(r.scheduler, r.schedule, self._warm_config()),
                r.hires_steps or r.steps, strength=r.hires_strength)

        # 5. Denoise (and 6. refine) the batch in chunks, all at once unless the device runs
        #    out of memory: then in halves, down to one image at a time. Image i always
        #    starts from its own seed's noise, so the chunking does not change it.
        seeds = [r.seed + i for i in range(r.batch_size)]
        latents: list[torch.Tensor | None] = [None] * r.batch_size
        todo = list(range(r.batch_size))
        chunk, chunks = self._first_chunk(r), 0
        t0 = time.perf_counter()
        while todo:
            idx = todo[:chunk]
            try:
                out = self._denoise_chunk(job, plan, runner, refiner, [seeds[i] for i in idx],
                                          stage, emit, elapsed)
            except Exception as e:  # noqa: BLE001 - only out-of-memory is handled here
                if not _is_oom(e) or chunk == 1:
                    raise
                traceback.clear_frames(e.__traceback__)
                del e
                self._free_memory()
                chunk = max(1, chunk // 2)
                log.warning("out of memory with %d image(s) at once: going on %d at a time",
                            len(idx), chunk)
                continue
            for k, i in enumerate(idx):
                latents[i] = out[k:k + 1]
            todo = todo[len(idx):]
            chunks += 1
        if devices.kind(self.device) == "cuda":
            torch.cuda.synchronize(self.device)  # kernels run ahead of the clock otherwise
        denoise_s = time.perf_counter() - t0
        steps_run = (plan.base_total + plan.refiner_total) * chunks

        # 7. Decode, 8. paste back the unmasked pixels (or draw the hires pass), 9. upscale
        #    and 10. save, one image at a time to bound the memory.
        parameters = self._parameters(r, model_name, inp)
        images = []
        n = r.batch_size
        for i, seed in enumerate(seeds):
            stage("decoding", i, n)
            pixels = self._decode(latents[i])
            latents[i] = None
            if plan.mask is not None:
                pixels = imgs.overlay(plan.init_full, pixels, plan.mask_full, plan.box)
            if r.hires_scale:
                t0 = time.perf_counter()
                pixels = self._hires(job, plan, pixels, seed, emit, elapsed)
                denoise_s += time.perf_counter() - t0
                steps_run += plan.hires_total
            if inp.upscaler:
                stage("upscaling", i, n)
                pixels = upscale.upscale(pixels, r.upscale, upscaler)
            stage("saving", i, n)
            out_path = os.path.join(r.output_dir, f"{job.id}-{i}.png")
            save_png(pixels, out_path, parameters(seed))
            images.append(Image(path=out_path, seed=seed, width=pixels.width, height=pixels.height))
        emit(Progress(id=job.id, stage="saving", step=n, total=n, elapsed_s=elapsed()))

        total_s = time.perf_counter() - start
        log.info("done: %d image(s) in %.2fs (denoise %.2fs)", len(images), total_s, denoise_s)
        return Result(id=job.id, images=images, control_images=plan.control_paths, metrics=Metrics(
            total_s=round(total_s, 4), load_s=round(load_s, 4), denoise_s=round(denoise_s, 4),
            its=round(steps_run / denoise_s, 3) if denoise_s > 0 else 0.0,
            device=devices.kind(self.device), dtype=devices.dtype_name(self.dtype),
            peak_mem_bytes=_peak_memory(self.device), vae_fallback=self._vae_fallback,
            batch_chunks=chunks,
        ))

    def _upscale_only(self, job: Job, stage, start: float) -> Result:
        """Enlarges an existing picture (A1111's Extras): no model loads, nothing is
        generated. The PNG keeps the picture's own settings, if it has any, with the
        upscaler added, so that it reloads like its source."""
        r = job.request
        inp = self._check_inputs(r, stage)  # the picture and the upscaler, as for any job
        source = os.path.abspath(os.path.expanduser(r.init_image))
        picture = inp.init
        try:
            with PILImage.open(source) as im:
                text = (im.info.get("parameters") or "").strip()
        except OSError:
            text = ""
        try:
            os.makedirs(r.output_dir, exist_ok=True)
        except OSError as e:
            raise JobFailed("invalid_request", f"cannot create output folder {r.output_dir}: "
                            f"{e.strerror or e}", field="output_dir") from None
        t0 = time.perf_counter()
        model = self._load_upscaler(inp, stage)
        load_s = time.perf_counter() - t0
        stage("upscaling", 0, 1)
        pixels = upscale.upscale(picture, r.upscale, model)
        extra = (f"Postprocess upscaler: {infotext.quote(inp.upscaler_name)}, "
                 f"Postprocess upscale by: {infotext.number(r.upscale)}")
        if text:
            # The source's settings, with the upscaler added to its last line.
            text = text + ", " + extra
        else:
            text = f"Upscaled {os.path.basename(source)}\n{extra}, Version: Atelier {__version__}"
        stage("saving", 0, 1)
        out_path = os.path.join(r.output_dir, f"{job.id}-0.png")
        save_png(pixels, out_path, text)
        total_s = time.perf_counter() - start
        return Result(id=job.id, images=[Image(path=out_path, seed=r.seed, width=pixels.width,
                                               height=pixels.height)],
                      # No denoising: 0 keeps the job out of the queue's speed estimate.
                      metrics=Metrics(total_s=round(total_s, 4), load_s=round(load_s, 4),
                                      denoise_s=0.0, its=0.0,
                                      device=devices.kind(self.device),
                                      dtype=devices.dtype_name(self.dtype),
                                      peak_mem_bytes=_peak_memory(self.device),
                                      vae_fallback=False, batch_chunks=1))

    # 1. Inputs ----------------------------------------------------------------------------

    def _tiny_extra(self, name: str, stage) -> tuple[str, float]:
        target = os.path.join(self.cache_dir, "models", tiny.EXTRAS[name])
        if os.path.exists(target):
            return target, 0.0
        stage("creating_tiny_model")
        t0 = time.perf_counter()
        log.info("creating %s at %s", name, target)
        tiny.create_extra(name, self.cache_dir)
        return target, time.perf_counter() - t0

    def _check_inputs(self, r: Request, stage) -> Inputs:
        inp = Inputs()

        def tiny_or(value: str, names: tuple[str, ...]) -> str:
            if value in names:
                p, s = self._tiny_extra(value, stage)
                inp.created_s += s
                return p
            return os.path.abspath(os.path.expanduser(value))

        for i, lora in enumerate(r.loras):
            f = f"loras[{i}].path"
            p = tiny_or(lora.path, ("tiny-lora",))
            check_file(p, f, "LoRA", exts=(".safetensors",))
            name = lora.path if lora.path == "tiny-lora" else _stem(p)
            inp.loras.append(loras.Wanted(index=i, path=p, name=name, weight=lora.weight,
                                          hash10=loras.short_hash(p)))
        for i, cn in enumerate(r.controlnets):
            f = f"controlnets[{i}]"
            p = tiny_or(cn.model, ("tiny-controlnet",))
            check_component_folder(p, f + ".model", "ControlNet")
            try:
                image = imgs.open_image(os.path.abspath(os.path.expanduser(cn.image)), f + ".image")
            except imgs.ImageError as e:
                raise JobFailed("invalid_request", str(e), field=e.field) from None
            name = cn.model if cn.model == "tiny-controlnet" else _stem(p)
            inp.controlnets.append((cn, p, name, image))
        if r.refiner:
            inp.refiner = tiny_or(r.refiner, ("tiny-refiner",))
            check_refiner_folder(inp.refiner)
            inp.refiner_name = r.refiner if r.refiner == "tiny-refiner" else _stem(inp.refiner)
        if r.vae:
            inp.vae = tiny_or(r.vae, ("tiny-vae",))
            if os.path.isfile(inp.vae) or inp.vae.lower().endswith(PICKLE_EXTS + (".safetensors",)):
                check_file(inp.vae, "vae", "VAE", exts=(".safetensors",))
            else:
                check_component_folder(inp.vae, "vae", "VAE")
            inp.vae_name = r.vae if r.vae == "tiny-vae" else _stem(inp.vae)
        if r.upscaler:
            inp.upscaler = r.upscaler if r.upscaler == upscale.LANCZOS else tiny_or(
                r.upscaler, ("tiny-upscaler",))
            if inp.upscaler != upscale.LANCZOS:
                check_file(inp.upscaler, "upscaler", "upscaler model", exts=(".safetensors",))
            inp.upscaler_name = "tiny-upscaler" if r.upscaler == "tiny-upscaler" else \
                upscale.display_name(inp.upscaler)
        try:
            if r.init_image:
                inp.init = imgs.open_image(os.path.abspath(os.path.expanduser(r.init_image)), "init_image")
            if r.mask_image:
                inp.mask = imgs.open_image(os.path.abspath(os.path.expanduser(r.mask_image)),
                                           "mask_image", mode="L")
                if inp.mask.size != inp.init.size:
                    raise imgs.ImageError(
                        f"the mask is {inp.mask.width}x{inp.mask.height} but the init image is "
                        f"{inp.init.width}x{inp.init.height}: paint the mask on the same picture",
                        "mask_image")
        except imgs.ImageError as e:
            raise JobFailed("invalid_request", str(e), field=e.field) from None
        if inp.init is not None and int(r.steps * r.strength) < 1:
            raise JobFailed("invalid_request", f"strength {r.strength:g} of {r.steps} steps is no "
                            "denoising step at all: raise the strength or the steps",
                            field="strength")
        return inp

    # 2. Loading ---------------------------------------------------------------------------

    def _resolve_model(self, model: str, stage) -> tuple[str, str, float]:
        """Returns the folder or file, the name for the PNG metadata, and the seconds spent
        creating a tiny model."""
        if model == tiny.TINY_MODEL:
            path = os.path.join(self.cache_dir, "models", tiny.TINY_NAME)
            if os.path.isfile(os.path.join(path, "model_index.json")):
                return path, model, 0.0
            stage("creating_tiny_model")
            t0 = time.perf_counter()
            log.info("creating the tiny model at %s", path)
            tiny.create(path)
            return path, model, time.perf_counter() - t0
        if model == "tiny-single-file":
            path, s = self._tiny_extra(model, stage)
            return path, model, s
        path = os.path.abspath(os.path.expanduser(model))
        check_model_folder(path)
        name = os.path.basename(path.rstrip(os.sep)) or path
        return path, _stem(name) if os.path.isfile(path) else name, 0.0

    def _load(self, path: str, stage) -> tuple[Warm, float]:
        """The warm pipeline of this model, loaded if it is not; least recently used ones
        beyond the count and memory budget are dropped first."""
        key = (os.path.realpath(path), self.device, self.dtype)
        warm = self._models.get(key)
        if warm is not None:
            self._models.move_to_end(key)
            self._key = key
            return warm, 0.0
        stage("loading_model")
        need = _disk_bytes(path)
        while self._models and (len(self._models) >= self.max_models or (
                self.models_budget and sum(w.size_bytes for w in self._models.values()) + need
                > self.models_budget)):
            old_key, _ = self._models.popitem(last=False)
            log.info("unloading %s (least recently used)", old_key[0])
            self._drop_dependents()
            self._free_memory()
        t0 = time.perf_counter()
        log.info("loading %s on %s as %s", path, self.device, devices.dtype_name(self.dtype))
        if os.path.isfile(path):
            pipe = self._load_single_file(path)
        else:
            # SDXL's VAE overflows in fp16 (its config says force_upcast): loading it in fp32
            # once costs ~170 MB and saves the pipeline's casts back and forth at every decode.
            dtype = self.dtype
            if dtype == torch.float16 and _vae_config(path).get("force_upcast", True):
                dtype = {"default": torch.float16, "vae": torch.float32}
            # `dtype` is diffusers 0.42's name for the deprecated `torch_dtype`.
            pipe = StableDiffusionXLPipeline.from_pretrained(
                path, local_files_only=True, dtype=dtype, use_safetensors=True,
                variant=_weights_variant(path), add_watermarker=False,
            )
        accel.place(pipe, self.device, self.accel)
        self.speed = accel.optimize(pipe, self.device, self.dtype, self.accel)
        pipe.set_progress_bar_config(disable=True)
        _encode_in_own_dtype(pipe.vae)
        warm = Warm(key=key, pipe=pipe, scheduler_config=pipe.scheduler.config, base_vae=pipe.vae,
                    size_bytes=_module_bytes(pipe))
        self._models[key] = warm
        self._key = key
        return warm, time.perf_counter() - t0

    def _load_single_file(self, path: str):
        config = single_file.config_for(path, self.cache_dir)
        dtype = self.dtype
        try:
            pipe = StableDiffusionXLPipeline.from_single_file(
                path, config=config, local_files_only=True, torch_dtype=dtype,
                add_watermarker=False)
        except (ValueError, KeyError, RuntimeError, OSError) as e:
            raise JobFailed("unsupported", f"{path} is not a single-file SDXL checkpoint this "
                            f"worker can load: {type(e).__name__}: {str(e)[:300]}",
                            field="model") from None
        if dtype == torch.float16 and pipe.vae.config.get("force_upcast", True):
            pipe.vae.to(torch.float32)
        return pipe

    def _use_vae(self, warm: Warm, inp: Inputs, stage) -> None:
        want = inp.vae
        if want == warm.vae_key:
            return
        if not want:
            log.info("back to the model's own VAE")
            warm.pipe.vae, warm.vae_key = warm.base_vae, ""
            return
        stage("loading_model")
        log.info("loading VAE %s", want)
        from diffusers import AutoencoderKL

        try:
            if os.path.isfile(want):
                vae = single_file.load_vae(want, warm.base_vae.config, self.cache_dir)
            else:
                vae = AutoencoderKL.from_pretrained(want, local_files_only=True, use_safetensors=True,
                                                    variant=_folder_variant(want))
        except single_file.SingleFileError as e:
            raise JobFailed("invalid_request", str(e), field="vae") from None
        except (ValueError, OSError, RuntimeError) as e:
            raise JobFailed("invalid_request", f"{want} is not a VAE this worker can load: "
                            f"{type(e).__name__}: {str(e)[:300]}", field="vae") from None
        if vae.config.latent_channels != warm.base_vae.config.latent_channels:
            raise JobFailed("invalid_request", f"{want} has {vae.config.latent_channels} latent "
                            "channels where SDXL has 4: it is not an SDXL VAE", field="vae")
        vd = accel.vae_dtype(self.accel, self.dtype, bool(vae.config.get("force_upcast", False)))
        vae.to(self.device, vd)
        if vd != torch.float16:
            vae.register_to_config(force_upcast=False)
        _encode_in_own_dtype(vae)
        warm.pipe.vae, warm.vae_key = vae, want

    def _use_loras(self, warm: Warm, inp: Inputs, stage) -> None:
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
                                        lambda: stage("loading_model"))
        except loras.LoraError as e:
            warm.adapters = loras.loaded(warm.pipe)
            raise JobFailed("invalid_request", str(e), field=e.field) from None

    def _load_controlnets(self, warm: Warm, inp: Inputs, stage) -> list:
        from diffusers import ControlNetModel

        models = []
        unet_cfg = warm.pipe.unet.config
        for i, (_cn, path, _name, _image) in enumerate(inp.controlnets):
            key = (os.path.realpath(path), self.dtype)
            model = self._controlnets.get(key)
            if model is None:
                field = f"controlnets[{i}].model"
                check_controlnet_fits(path, unet_cfg, field)
                stage("loading_model")
                log.info("loading ControlNet %s", path)
                try:
                    model = ControlNetModel.from_pretrained(
                        path, local_files_only=True, use_safetensors=True, dtype=self.dtype,
                        variant=_folder_variant(path))
                except (ValueError, OSError, RuntimeError) as e:
                    raise JobFailed("invalid_request", f"{path} is not a ControlNet this worker can "
                                    f"load: {type(e).__name__}: {str(e)[:300]}", field=field) from None
                model.to(self.device).eval()
                self._controlnets[key] = model
            models.append(model)
        # Keep only what this job uses once there are more than a few.
        if len(self._controlnets) > 4:
            used = {id(m) for m in models}
            self._controlnets = {k: m for k, m in self._controlnets.items() if id(m) in used}
        return models

    def _load_refiner(self, warm: Warm, inp: Inputs, stage):
        if not inp.refiner:
            return None
        key = (os.path.realpath(inp.refiner), warm.key)
        if self._refiner is not None and self._refiner[0] == key:
            return self._refiner[1]
        self._refiner = None
        stage("loading_model")
        log.info("loading refiner %s", inp.refiner)
        from diffusers import StableDiffusionXLImg2ImgPipeline

        base = warm.pipe
        index = _read_json(os.path.join(inp.refiner, "model_index.json"))
        # The refiner shares the base's second text encoder (both SDXL models use OpenCLIP
        # bigG) and its VAE, so that neither is loaded twice; a full model as refiner shares
        # the first encoder as well.
        shared = dict(text_encoder_2=base.text_encoder_2, tokenizer_2=base.tokenizer_2,
                      vae=base.vae)
        if (index.get("text_encoder") or [None])[0]:
            shared.update(text_encoder=base.text_encoder, tokenizer=base.tokenizer)
        unet_cfg = _read_json(os.path.join(inp.refiner, "unet", "config.json"))
        te2_dim = base.text_encoder_2.config.hidden_size
        te_dims = te2_dim + (base.text_encoder.config.hidden_size if "text_encoder" in shared else 0)
        if unet_cfg.get("cross_attention_dim") != te_dims:
            raise JobFailed("invalid_request", f"{inp.refiner} does not fit this model: its UNet "
                            f"expects text features of {unet_cfg.get('cross_attention_dim')}, the "
                            f"model's text encoders give {te_dims} (a refiner for another base?)",
                            field="refiner")
        try:
            refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
                inp.refiner, local_files_only=True, use_safetensors=True, dtype=self.dtype,
                variant=_folder_variant(os.path.join(inp.refiner, "unet")), add_watermarker=False,
                **shared)
        except (ValueError, OSError, RuntimeError) as e:
            raise JobFailed("invalid_request", f"{inp.refiner} is not a refiner this worker can "
                            f"load: {type(e).__name__}: {str(e)[:300]}", field="refiner") from None
        refiner.unet.to(self.device)
        refiner.set_progress_bar_config(disable=True)
        self._refiner = (key, refiner)
        self._refiner_config = refiner.scheduler.config
        return refiner

    def _load_upscaler(self, inp: Inputs, stage):
        if not inp.upscaler or inp.upscaler == upscale.LANCZOS:
            return None
        st = os.stat(inp.upscaler)
        key = (os.path.realpath(inp.upscaler), st.st_size, st.st_mtime_ns)
        if self._upscaler is not None and self._upscaler[0] == key:
            return self._upscaler[1]
        stage("loading_model")
        log.info("loading upscaler %s", inp.upscaler)
        try:
            desc = upscale.load(inp.upscaler, self.device)
        except upscale.UpscalerError as e:
            raise JobFailed("invalid_request", str(e), field="upscaler") from None
        self._upscaler = (key, desc)
        return desc

    # 3. Images and the pipeline that runs ---------------------------------------------------

    def _prepare(self, job: Job, inp: Inputs, controlnets: list, stage) -> Plan:
        r = job.request
        plan = Plan()
        if not (inp.controlnets or inp.init is not None):
            return plan
        stage("preprocessing")
        for i, (cn, _path, _name, image) in enumerate(inp.controlnets):
            control = imgs.fit(image, r.width, r.height)
            if cn.type == "canny":
                control = imgs.canny(control, cn.canny_low, cn.canny_high)
            out = os.path.join(r.output_dir, f"{job.id}-control-{i}.png")
            write_png(control, out)
            plan.control_images.append(control)
            plan.control_paths.append(out)
            plan.control_inputs.append((cn, image))
        plan.control_scales = [cn.scale for cn, *_ in inp.controlnets]
        plan.control_starts = [cn.start for cn, *_ in inp.controlnets]
        plan.control_ends = [cn.end for cn, *_ in inp.controlnets]
        if inp.init is not None:
            plan.init_full = imgs.fit(inp.init, r.width, r.height)
            plan.init = plan.init_full
        if inp.mask is not None:
            mask = imgs.fit(inp.mask, r.width, r.height)
            plan.mask_full = imgs.blur_mask(mask, r.mask_blur)
            plan.mask = plan.mask_full
            if r.mask_padding > 0 and mask.getextrema()[1] > 0:
                # "Only masked": repaint the masked area and its surroundings at full size.
                plan.box = imgs.crop_region(plan.mask_full, r.width, r.height, r.mask_padding)
                plan.init = imgs.fit(plan.init_full.crop(plan.box), r.width, r.height)
                plan.mask = imgs.fit(plan.mask_full.crop(plan.box), r.width, r.height)
        return plan

    def _runner(self, pipe, controlnets: list, plan: Plan):
        """The diffusers pipeline for this job, made from the warm one's components."""
        import diffusers as d

        inpaint, img2img = plan.mask is not None, plan.init is not None
        extra = {}
        if controlnets:
            cls = (d.StableDiffusionXLControlNetInpaintPipeline if inpaint else
                   d.StableDiffusionXLControlNetImg2ImgPipeline if img2img else
                   d.StableDiffusionXLControlNetPipeline)
            extra["controlnet"] = controlnets if len(controlnets) > 1 else controlnets[0]
        elif inpaint:
            cls = d.StableDiffusionXLInpaintPipeline
        elif img2img:
            cls = d.StableDiffusionXLImg2ImgPipeline
        else:
            return pipe
        return self._build(cls, pipe, extra)

    @staticmethod
    def _build(cls, pipe, extra: dict):
        """A pipeline of class cls made from the warm pipeline's modules by the constructor,
        not from_pipe: from_pipe casts every shared module to its dtype argument (float32 by
        default), which would turn the warm half-precision model into a float32 one."""
        params = inspect.signature(cls.__init__).parameters
        kwargs = {k: v for k, v in pipe.components.items() if k in params}
        kwargs.update({k: v for k, v in pipe.config.items() if k in params and k not in kwargs
                       and not k.startswith("_") and not isinstance(v, (list, tuple))})
        kwargs["add_watermarker"] = False
        runner = cls(**kwargs, **extra)
        runner.set_progress_bar_config(disable=True)
        return runner

    def _step_counts(self, r: Request, plan: Plan, refiner) -> tuple[int, int]:
        """How many denoising iterations the base and the refiner run: what the pipelines'
        own timestep selection will give (second-order schedulers run about twice the steps,
        img2img only the strength's share, each side of the refiner switch its own part)."""
        switch = r.refiner_switch if refiner is not None else None
        strength = r.strength if plan.init is not None else None
        base = _count_steps(schedulers.build(r.scheduler, r.schedule, self._warm_config()), r.steps,
                            strength=strength, denoising_end=switch)
        ref = 0
        if refiner is not None:
            ref = _count_steps(schedulers.build(r.scheduler, r.schedule, self._refiner_config),
                               r.steps, denoising_start=switch)
        return base, ref

    def _warm_config(self):
        return self._models[self._key].scheduler_config

    def _first_chunk(self, r: Request) -> int:
        """The batch at once, unless the free device memory clearly cannot hold it: then as
        many images as fit by a rough estimate (the out-of-memory halving does the rest)."""
        if devices.kind(self.device) != "cuda" or r.batch_size == 1:
            return r.batch_size
        try:
            free, _total = torch.cuda.mem_get_info(self.device)
        except RuntimeError:
            return r.batch_size
        # SDXL's UNet activations with classifier-free guidance: about 1 GiB per image at
        # 1024x1024 in half precision, growing with the pixel count.
        per_image = (r.width * r.height) / (1024 * 1024) * BATCH_BYTES_PER_MEGAPIXEL
        fit = max(1, int(free * 0.9 // max(per_image, 1)))
        if fit < r.batch_size:
            log.info("%.1f GiB free holds about %d image(s) at once: splitting the batch",
                     free / 2**30, fit)
        return max(1, min(r.batch_size, fit))

    # 5. Denoising ---------------------------------------------------------------------------

    def _denoise_chunk(self, job: Job, plan: Plan, runner, refiner, seeds: list[int], stage,
                       emit, elapsed) -> torch.Tensor:
        r = job.request
        n = len(seeds)
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        preview_path = preview_file(job)

        def rep(t):
            return None if t is None else t.repeat(n, *([1] * (t.dim() - 1)))

        def callback(name: str, total: int, tap, previewer, stop_at_total: bool = False):
            return _step_callback(job, name, total, tap, previewer, preview_path, emit, elapsed,
                                  stop_at_total)

        pe, npe, ppe, nppe = plan.embeds
        kw = dict(prompt_embeds=rep(pe), negative_prompt_embeds=rep(npe),
                  pooled_prompt_embeds=rep(ppe), negative_pooled_prompt_embeds=rep(nppe),
                  num_inference_steps=r.steps, guidance_scale=r.cfg, generator=gens,
                  output_type="latent", callback_on_step_end_tensor_inputs=["latents"])
        if plan.init is None:
            # Noise made on the CPU, one generator per image, so that a seed gives the same
            # start on every device and image i of a batch starts where seed + i alone does.
            pipe = self._pipe
            shape = (1, pipe.unet.config.in_channels, r.height // pipe.vae_scale_factor,
                     r.width // pipe.vae_scale_factor)
            noise = torch.cat([torch.randn(shape, generator=g, dtype=torch.float32) for g in gens])
            kw.update(width=r.width, height=r.height,
                      latents=noise.to(pipe._execution_device, pe.dtype))
        else:
            kw.update(image=[plan.init] * n, strength=r.strength)
            if plan.mask is not None:
                kw.update(mask_image=[plan.mask] * n, width=r.width, height=r.height)
        if plan.control_images:
            many = len(plan.control_images) > 1
            control = plan.control_images if many else plan.control_images[0]
            kw["control_image" if plan.init is not None else "image"] = control
            kw.update(controlnet_conditioning_scale=plan.control_scales if many else plan.control_scales[0],
                      control_guidance_start=plan.control_starts if many else plan.control_starts[0],
                      control_guidance_end=plan.control_ends if many else plan.control_ends[0])
        emulate_end = False
        if refiner is not None:
            if "denoising_end" in inspect.signature(runner.__call__).parameters:
                kw["denoising_end"] = r.refiner_switch
            else:  # ControlNet img2img
                emulate_end = True

        previewer = accel.Previewer(lambda im: write_png(im, preview_path, sync=False))
        tap = accel.X0Tap(runner.scheduler) if r.preview_every else None
        stage("denoising", 0, plan.base_total)
        try:
            with accel.sdpa_context(self.accel):
                latents = runner(callback_on_step_end=callback("denoising", plan.base_total, tap,
                                                               previewer, emulate_end), **kw).images
        finally:
            previewer.wait()
        if refiner is None:
            return latents

        # 6. The refiner takes the latents over at the switch point.
        # In the refiner's own dtype: the base may hand over float32 latents (its scheduler
        # keeps float32 sigmas) and the refiner's UNet would refuse them.
        rdtype = refiner.unet.dtype
        rpe, rnpe, rppe, rnppe = (None if t is None else t.to(rdtype) for t in plan.refiner_embeds)
        log.debug("refining %s latents as %s", latents.dtype, rdtype)
        latents = latents.to(rdtype)
        previewer = accel.Previewer(lambda im: write_png(im, preview_path, sync=False))
        tap = accel.X0Tap(refiner.scheduler) if r.preview_every else None
        stage("refining", 0, plan.refiner_total)
        try:
            with accel.sdpa_context(self.accel):
                latents = refiner(
                    prompt_embeds=rep(rpe), negative_prompt_embeds=rep(rnpe),
                    pooled_prompt_embeds=rep(rppe), negative_pooled_prompt_embeds=rep(rnppe),
                    image=latents, num_inference_steps=r.steps, denoising_start=r.refiner_switch,
                    guidance_scale=r.cfg, generator=gens, output_type="latent",
                    callback_on_step_end=callback("refining", plan.refiner_total, tap, previewer),
                    callback_on_step_end_tensor_inputs=["latents"],
                ).images
        finally:
            previewer.wait()
        return latents

    def _hires(self, job: Job, plan: Plan, pixels: PILImage.Image, seed: int, emit,
               elapsed) -> PILImage.Image:
        """A1111's hires fix: the first pass's image, enlarged with Lanczos, drawn again by
        img2img at hires_strength, so that the detail at the larger size comes from the model
        rather than from the resize (SDXL composes best near one megapixel, so the first pass
        stays there). Runs after the refiner, on the base model, with the same seed, and
        with the job's ControlNets (their control images prepared again at the new size)."""
        r = job.request
        cns = plan.controlnets
        if plan.hires_runner is None:
            import diffusers as d

            if cns:
                plan.hires_runner = self._build(
                    d.StableDiffusionXLControlNetImg2ImgPipeline, self._pipe,
                    {"controlnet": cns if len(cns) > 1 else cns[0]})
            else:
                plan.hires_runner = self._build(d.StableDiffusionXLImg2ImgPipeline, self._pipe, {})
            plan.hires_runner.scheduler = schedulers.build(r.scheduler, r.schedule,
                                                           self._warm_config())
        runner = plan.hires_runner
        w, h = hires_size(r.width, r.height, r.hires_scale)
        big = pixels.resize((w, h), PILImage.LANCZOS)
        control = {}
        if cns:
            many = len(cns) > 1
            if not plan.hires_controls:
                # Prepared again at the larger size from the inputs (Canny too), so that
                # edges stay one pixel wide rather than enlarged.
                for cn, image in plan.control_inputs:
                    c = imgs.fit(image, w, h)
                    plan.hires_controls.append(
                        imgs.canny(c, cn.canny_low, cn.canny_high) if cn.type == "canny" else c)
            images = plan.hires_controls
            control = dict(
                control_image=images if many else images[0],
                controlnet_conditioning_scale=plan.control_scales if many else plan.control_scales[0],
                control_guidance_start=plan.control_starts if many else plan.control_starts[0],
                control_guidance_end=plan.control_ends if many else plan.control_ends[0])
        pe, npe, ppe, nppe = plan.embeds
        preview_path = preview_file(job)
        previewer = accel.Previewer(lambda im: write_png(im, preview_path, sync=False))
        tap = accel.X0Tap(runner.scheduler) if r.preview_every else None
        emit(Progress(id=job.id, stage="hires", step=0, total=plan.hires_total,
                      elapsed_s=elapsed()))
        try:
            with accel.sdpa_context(self.accel):
                latents = runner(
                    prompt_embeds=pe, negative_prompt_embeds=npe, pooled_prompt_embeds=ppe,
                    negative_pooled_prompt_embeds=nppe, image=big, strength=r.hires_strength,
                    num_inference_steps=r.hires_steps or r.steps, guidance_scale=r.cfg,
                    generator=torch.Generator("cpu").manual_seed(seed), output_type="latent",
                    callback_on_step_end=_step_callback(job, "hires", plan.hires_total, tap,
                                                        previewer, preview_path, emit, elapsed),
                    callback_on_step_end_tensor_inputs=["latents"], **control,
                ).images
        finally:
            previewer.wait()
        return self._decode(latents)

    # 7. Decoding ----------------------------------------------------------------------------

    @torch.inference_mode()
    def _decode(self, latents: torch.Tensor) -> PILImage.Image:
        """The VAE's image of one latent. A decode with NaN or inf (SDXL's VAE overflowing in
        half precision) is redone in float32, and the VAE stays in float32 from then on."""
        vae = self._pipe.vae
        image = _vae_decode(vae, latents, self.accel)
        if not torch.isfinite(image).all():
            log.warning("the VAE (%s) decoded NaN/inf: decoding again in float32, and keeping "
                        "this VAE in float32", devices.dtype_name(vae.dtype))
            self._vae_fallback = True
            if vae.dtype != torch.float32:
                vae.to(torch.float32)
                vae.register_to_config(force_upcast=False)
            image = _vae_decode(vae, latents, self.accel)
            if not torch.isfinite(image).all():
                raise JobFailed("internal", "the VAE decodes NaN even in float32: its weights are "
                                "broken; choose another VAE")
        arr = ((image[0].float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        return PILImage.fromarray(arr.permute(1, 2, 0).cpu().numpy(), "RGB")

    # 10. Metadata ---------------------------------------------------------------------------

    def _parameters(self, r: Request, model_name: str, inp: Inputs) -> Callable[[int], str]:
        q, num = infotext.quote, infotext.number
        extra: list[tuple[str, str]] = []
        if r.init_image:
            extra.append(("Denoising strength", num(r.strength)))
        if r.mask_image:
            extra.append(("Mask blur", str(r.mask_blur)))
            if r.mask_padding > 0:
                extra += [("Inpaint area", "Only masked"), ("Masked area padding", str(r.mask_padding))]
        if inp.vae:
            extra.append(("VAE", q(inp.vae_name)))
        if inp.loras:
            extra.append(("Lora hashes", json.dumps(", ".join(f"{w.name}: {w.hash10}" for w in inp.loras),
                                                    ensure_ascii=False)))
            extra.append(("Loras", json.dumps(" ".join(f"<lora:{w.name}:{num(w.weight)}>" for w in inp.loras),
                                              ensure_ascii=False)))
        for i, (cn, _path, name, _image) in enumerate(inp.controlnets):
            parts = [("Module", "canny" if cn.type == "canny" else "none")]
            if cn.type != "canny":
                parts.append(("Type", cn.type))
            parts += [("Model", name), ("Weight", num(cn.scale)), ("Guidance Start", num(cn.start)),
                      ("Guidance End", num(cn.end))]
            if cn.type == "canny":
                parts += [("Threshold A", str(cn.canny_low)), ("Threshold B", str(cn.canny_high))]
            extra.append((f"ControlNet {i}", json.dumps(", ".join(f"{k}: {v}" for k, v in parts),
                                                        ensure_ascii=False)))
        if inp.refiner:
            extra += [("Refiner", q(inp.refiner_name)), ("Refiner switch at", num(r.refiner_switch))]
        if r.hires_scale:
            extra += [("Denoising strength", num(r.hires_strength)),
                      ("Hires upscale", num(r.hires_scale))]
            if r.hires_steps:
                extra.append(("Hires steps", str(r.hires_steps)))
            extra.append(("Hires upscaler", "Lanczos"))
        if inp.upscaler:
            extra += [("Postprocess upscaler", q(inp.upscaler_name)),
                      ("Postprocess upscale by", num(r.upscale))]

        def text(seed: int) -> str:
            return infotext.format_parameters(
                prompt=r.prompt, negative_prompt=r.negative_prompt, steps=r.steps,
                scheduler=r.scheduler, schedule=r.schedule, cfg=r.cfg, seed=seed, width=r.width,
                height=r.height, model=model_name, version=__version__, extra=extra)
        return text

    def _drop_dependents(self) -> None:
        # The refiner shares the base's encoder and VAE, ControlNets were checked against it.
        self._refiner = None
        self._controlnets = {}

    def unload(self) -> None:
        if not self._models and self._upscaler is None:
            return
        log.info("unloading %s", ", ".join(k[0] for k in self._models) or "upscaler")
        self._models.clear()
        self._pipe, self._key = None, None
        self._drop_dependents()
        self._upscaler = None
        self._free_memory()

    def _free_memory(self) -> None:
        gc.collect()
        k = devices.kind(self.device)
        if k == "cuda":
            torch.cuda.empty_cache()
        elif k == "mps":
            torch.mps.empty_cache()


def _step_callback(job: Job, name: str, total: int, tap, previewer, preview_path: str, emit,
                   elapsed, stop_at_total: bool = False):
    """The pipelines' callback_on_step_end: cancel within a step, progress, previews."""
    r = job.request

    def on_step_end(_pipe, i: int, _t, kwargs: dict) -> dict:
        if job.cancel.is_set():
            raise Cancelled()
        if stop_at_total and i + 1 >= total:
            # The pipeline has no denoising_end: skip its remaining steps, which is
            # what denoising_end would do.
            _pipe._interrupt = True
        step = min(i + 1, total)
        emit(Progress(id=job.id, stage=name, step=step, total=total, elapsed_s=elapsed()))
        if r.preview_every and step % r.preview_every == 0 and step < total:
            # From the predicted clean latents where the scheduler gives them,
            # projected to RGB on the device and written by a thread: the GPU never waits.
            x0 = tap.x0 if tap is not None and tap.x0 is not None else kwargs["latents"]
            previewer.submit(x0[0], lambda s=step: emit(Preview(id=job.id, step=s,
                                                                path=preview_path)))
        return {}
    return on_step_end
