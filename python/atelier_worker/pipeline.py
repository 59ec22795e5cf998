"""Runs one generate job on diffusers' StableDiffusionXLPipeline, as numbered steps."""

from __future__ import annotations

import gc
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

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
)
from PIL import Image as PILImage
from PIL.PngImagePlugin import PngInfo

from . import __version__, device as devices, tiny
from .infotext import format_parameters
from .protocol import Accepted, Error, Image, Message, Metrics, Preview, Progress, Request, Result

log = logging.getLogger("atelier.pipeline")

SCHEDULERS = {
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "ddim": DDIMScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
}

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


@dataclass
class Job:
    id: str
    request: Request
    cancel: threading.Event = field(default_factory=threading.Event)


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
            raise JobFailed("unsupported", f"{path} is a single-file checkpoint, which this worker "
                            "cannot load yet: use the model's diffusers folder", field="model")
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
        self._scheduler_config = None

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
                                     "the batch size, or close other programs using the GPU",
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

        # 1. Check inputs: the model on disk and the output folder.
        path, model_name, load_s = self._resolve_model(r.model, stage)
        try:
            os.makedirs(r.output_dir, exist_ok=True)
        except OSError as e:
            raise JobFailed("invalid_request", f"cannot create output folder {r.output_dir}: "
                            f"{e.strerror or e}", field="output_dir") from None

        # 2. Load the pipeline, unless it is the warm one.
        load_s += self._load(path, stage)
        pipe = self._pipe
        pipe.scheduler = SCHEDULERS[r.scheduler].from_config(self._scheduler_config)

        # 3. Encode the prompt once for the whole batch.
        stage("encoding")
        guidance = r.cfg > 1.0
        with torch.inference_mode():
            pe, npe, ppe, nppe = pipe.encode_prompt(
                prompt=r.prompt, device=pipe._execution_device, num_images_per_prompt=r.batch_size,
                do_classifier_free_guidance=guidance, negative_prompt=r.negative_prompt or None,
            )

        # 4. Prepare latents on the CPU, one generator per image, so that a seed gives the
        #    same start on every device and image i of a batch starts where a single run of
        #    seed + i does.
        seeds = [r.seed + i for i in range(r.batch_size)]
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        shape = (1, pipe.unet.config.in_channels, r.height // pipe.vae_scale_factor,
                 r.width // pipe.vae_scale_factor)
        latents = torch.cat([torch.randn(shape, generator=g, dtype=torch.float32) for g in gens])
        latents = latents.to(pipe._execution_device, pe.dtype)

        # 5. Denoise. The callback reports progress, writes previews, and raises on cancel.
        preview_path = preview_file(job)

        def on_step_end(_pipe, i: int, _t, kwargs: dict) -> dict:
            if job.cancel.is_set():
                raise Cancelled()
            step = i + 1
            emit(Progress(id=job.id, stage="denoising", step=step, total=r.steps, elapsed_s=elapsed()))
            if r.preview_every and step % r.preview_every == 0 and step < r.steps:
                write_png(latent_preview(kwargs["latents"][0]), preview_path, sync=False)
                emit(Preview(id=job.id, step=step, path=preview_path))
            return {}

        stage("denoising", 0, r.steps)
        t0 = time.perf_counter()
        out = pipe(
            prompt_embeds=pe, negative_prompt_embeds=npe, pooled_prompt_embeds=ppe,
            negative_pooled_prompt_embeds=nppe, num_inference_steps=r.steps, guidance_scale=r.cfg,
            width=r.width, height=r.height, latents=latents, generator=gens, output_type="latent",
            callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=["latents"],
        )
        if devices.kind(self.device) == "cuda":
            torch.cuda.synchronize(self.device)  # kernels run ahead of the clock otherwise
        denoise_s = time.perf_counter() - t0
        latents = out.images

        # 6. Decode and 7. save, one image at a time to bound the VAE's memory.
        images = []
        for i, seed in enumerate(seeds):
            stage("decoding", i, r.batch_size)
            pixels = self._decode(latents[i:i + 1])
            stage("saving", i, r.batch_size)
            out_path = os.path.join(r.output_dir, f"{job.id}-{i}.png")
            write_png(pixels, out_path, format_parameters(
                prompt=r.prompt, negative_prompt=r.negative_prompt, steps=r.steps,
                scheduler=r.scheduler, cfg=r.cfg, seed=seed, width=r.width, height=r.height,
                model=model_name, version=__version__))
            images.append(Image(path=out_path, seed=seed, width=pixels.width, height=pixels.height))
        emit(Progress(id=job.id, stage="saving", step=r.batch_size, total=r.batch_size,
                      elapsed_s=elapsed()))

        total_s = time.perf_counter() - start
        log.info("done: %d image(s) in %.2fs (denoise %.2fs)", len(images), total_s, denoise_s)
        return Result(id=job.id, images=images, metrics=Metrics(
            total_s=round(total_s, 4), load_s=round(load_s, 4), denoise_s=round(denoise_s, 4),
            its=round(r.steps / denoise_s, 3) if denoise_s > 0 else 0.0,
            device=devices.kind(self.device), dtype=devices.dtype_name(self.dtype),
            peak_mem_bytes=_peak_memory(self.device),
        ))

    def _resolve_model(self, model: str, stage) -> tuple[str, str, float]:
        """Returns the folder, the name for the PNG metadata, and the seconds spent creating."""
        if model == tiny.TINY_MODEL:
            path = os.path.join(self.cache_dir, "models", tiny.TINY_NAME)
            if os.path.isfile(os.path.join(path, "model_index.json")):
                return path, model, 0.0
            stage("creating_tiny_model")
            t0 = time.perf_counter()
            log.info("creating the tiny model at %s", path)
            tiny.create(path)
            return path, model, time.perf_counter() - t0
        path = os.path.abspath(os.path.expanduser(model))
        check_model_folder(path)
        return path, os.path.basename(path.rstrip(os.sep)) or path, 0.0

    def _load(self, path: str, stage) -> float:
        key = (os.path.realpath(path), self.device, self.dtype)
        if key == self._key:
            return 0.0
        stage("loading_model")
        self.unload()
        t0 = time.perf_counter()
        log.info("loading %s on %s as %s", path, self.device, devices.dtype_name(self.dtype))
        # SDXL's VAE overflows in fp16 (its config says force_upcast): loading it in fp32 once
        # costs ~170 MB and saves the pipeline's casts back and forth at every decode.
        dtype = self.dtype
        if dtype == torch.float16 and _vae_config(path).get("force_upcast", True):
            dtype = {"default": torch.float16, "vae": torch.float32}
        # `dtype` is diffusers 0.42's name for the deprecated `torch_dtype`.
        pipe = StableDiffusionXLPipeline.from_pretrained(
            path, local_files_only=True, dtype=dtype, use_safetensors=True,
            variant=_weights_variant(path), add_watermarker=False,
        )
        pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        self._pipe, self._key = pipe, key
        self._scheduler_config = pipe.scheduler.config
        return time.perf_counter() - t0

    @torch.inference_mode()
    def _decode(self, latents: torch.Tensor) -> PILImage.Image:
        vae = self._pipe.vae
        cfg = vae.config
        latents = latents.to(vae.device, vae.dtype)
        if getattr(cfg, "latents_mean", None) is not None and getattr(cfg, "latents_std", None) is not None:
            mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1).to(latents)
            std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1).to(latents)
            latents = latents * std / cfg.scaling_factor + mean
        else:
            latents = latents / cfg.scaling_factor
        image = vae.decode(latents, return_dict=False)[0]
        arr = ((image[0].float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        return PILImage.fromarray(arr.permute(1, 2, 0).cpu().numpy(), "RGB")

    def unload(self) -> None:
        if self._pipe is None:
            return
        log.info("unloading %s", self._key[0] if self._key else "model")
        self._pipe, self._key, self._scheduler_config = None, None, None
        self._free_memory()

    def _free_memory(self) -> None:
        gc.collect()
        k = devices.kind(self.device)
        if k == "cuda":
            torch.cuda.empty_cache()
        elif k == "mps":
            torch.mps.empty_cache()
