"""Runs one generate job on diffusers' SDXL pipelines (txt2img, img2img, inpaint, their
ControlNet versions, a refiner after any of them), as numbered steps; each step's work lives
in the module named for it."""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable

import torch
from PIL import Image as PILImage

from .. import accel, hashes, optimize, prompts, schedulers, upscale
from .. import device as devices
from .. import images as imgs
from ..job import Job
from ..protocol import Accepted, Error, Image, Message, Metrics, Progress, Result
from ..spec import (
    ERR_CANCELLED,
    ERR_INTERNAL,
    ERR_INVALID_REQUEST,
    ERR_OUT_OF_MEMORY,
    STAGE_DECODING,
    STAGE_ENCODING,
    STAGE_SAVING,
    STAGE_UPSCALING,
)
from . import checks, decode, denoise, memory, output, prepare, preview
from .errors import Cancelled, JobFailed
from .model_cache import ModelCache

log = logging.getLogger("atelier.engine")


class Engine:
    """Keeps the last models warm and runs jobs one at a time."""

    def __init__(self, device: str, dtype: torch.dtype, cache_dir: str | None = None):
        self.device = device
        self.dtype = dtype
        self.cache_dir = cache_dir or accel.cache_root()
        try:
            self.accel = accel.from_env(devices.kind(device))
        except accel.SettingError as e:
            log.error("%s; using the default speed settings", e)
            self.accel = accel.Settings()
        optimize.configure_torch(self.accel, devices.kind(device))
        self.models = ModelCache(device, dtype, self.accel, self.cache_dir)
        self.fast = self._fast_path()
        self.pipe = None            # the pipeline of the current job's model
        self._vae_fallback = False
        self.versions = package_versions()

    def _fast_path(self):
        """The fast path's per-job side (fastrun.py), or None where it is off."""
        if not accel.fast_path_wanted(self.accel, devices.kind(self.device)):
            return None
        if "libstdc++" not in os.environ.get("LD_PRELOAD", ""):
            # Loading an artefact would crash this process (accel.libstdcxx_preload); with
            # no g++ none could be built either. The previous default, regional compile.
            log.warning("fast path off: no g++, or this process was not started with its C++ "
                        "library preloaded (the stdio worker restarts itself so); using "
                        "regional compile")
            self.accel.compile = "regional"
            return None
        from ..fastrun import FastUNets

        return FastUNets(self.device, self.cache_dir, max_autotune=self.accel.fast_max_autotune)

    @property
    def speed(self) -> dict:
        """What the speed settings did to the last model loaded."""
        return self.models.speed

    # The whole job, with every failure turned into a protocol message.
    def run(self, job: Job, emit: Callable[[Message], None]) -> Message:
        start = time.perf_counter()
        emit(Accepted(id=job.id))
        # The job's PNGs (control images included) are kept only if it succeeds.
        files = output.JobFiles()
        try:
            return self._generate(job, emit, start, files)
        except Cancelled:
            log.info("cancelled")
            return Error(id=job.id, code=ERR_CANCELLED, message="the job was cancelled")
        except JobFailed as e:
            log.info("failed: %s: %s", e.code, e.message)
            return Error(id=job.id, code=e.code, message=e.message, field=e.field, detail=e.detail)
        except Exception as e:  # noqa: BLE001 - every failure must reach the bridge as a message
            if output.is_disk_full(e):
                # Anywhere else than a PNG: a preview, the tiny model's cache.
                failed = output.disk_full(e, os.path.dirname(e.filename or "") or job.request.output_dir)
                log.warning("disk full: %s", e)
                return Error(id=job.id, code=failed.code, message=failed.message, detail=failed.detail)
            if memory.is_oom(e):
                # The traceback's frames hold the tensors that filled the device.
                traceback.clear_frames(e.__traceback__)
                memory.free(self.device)
                r = job.request
                log.warning("out of memory: %s", e)
                return Error(id=job.id, code=ERR_OUT_OF_MEMORY,
                             message=f"the {devices.kind(self.device)} device ran out of memory at "
                                     f"{r.width}x{r.height}, batch {r.batch_size}: lower the size or "
                                     "the batch size, turn on model offload (ATELIER_OFFLOAD=model), "
                                     "or close other programs using the GPU",
                             detail=str(e))
            log.exception("internal error")
            return Error(id=job.id, code=ERR_INTERNAL, message=f"{type(e).__name__}: {e}",
                         detail=traceback.format_exc())
        finally:
            files.discard()
            # Previews are only for watching a job; the result replaces them.
            try:
                os.unlink(preview.preview_file(job))
            except OSError:
                pass

    def _generate(self, job: Job, emit: Callable[[Message], None], start: float,
                  files: output.JobFiles) -> Result:
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
            return self._upscale_only(job, stage, start, files)

        # 1. Check inputs: the model and every other file the request names, the input
        #    images, and the output folder, before anything slow is loaded.
        path, model_name, load_s = checks.resolve_model(r.model, self.cache_dir, stage)
        inp = checks.check_inputs(r, self.cache_dir, stage)
        load_s += inp.created_s
        checks.make_output_dir(r.output_dir)

        # 2. Load the pipeline unless it is warm, then what the request adds to it: VAE,
        #    LoRAs, ControlNets, refiner, upscaler (each kept warm for the next job).
        models = self.models
        warm, s = models.model(path, stage)
        load_s += s
        pipe = self.pipe = warm.pipe
        t0 = time.perf_counter()
        models.use_vae(warm, inp, stage)
        models.use_loras(warm, inp, stage)
        controlnets = models.use_controlnets(warm, inp, stage)
        refiner = models.use_refiner(warm, inp, stage)
        upscaler = models.use_upscaler(inp, stage)
        load_s += time.perf_counter() - t0
        try:
            pipe.scheduler = schedulers.build(r.scheduler, r.schedule, warm.scheduler_config)
            if refiner is not None:
                refiner.scheduler = schedulers.build(r.scheduler, r.schedule, models.refiner_config)
                refiner.vae = pipe.vae
        except schedulers.ScheduleError as e:
            raise JobFailed(ERR_INVALID_REQUEST, str(e), field="schedule") from None

        # 3. Prepare the images: control images (Canny), init image and mask, at the output size.
        plan = prepare.prepare(job, inp, stage, files)
        plan.controlnets = controlnets
        runner = denoise.runner(pipe, controlnets, plan)

        # 4. Encode the prompt once; every chunk of the batch repeats it.
        stage(STAGE_ENCODING)
        guidance = r.cfg > 1.0
        with torch.inference_mode():
            # A1111's emphasis and prompts past 75 tokens (diffusers would cut them).
            plan.embeds = prompts.encode(pipe, r.prompt, r.negative_prompt, guidance)
            if refiner is not None:
                plan.refiner_embeds = prompts.encode(refiner, r.prompt, r.negative_prompt,
                                                     guidance)
        plan.base_total, plan.refiner_total = denoise.step_counts(
            r, plan, refiner, models.scheduler_config(), models.refiner_config)
        if r.hires_scale:
            plan.hires_total = denoise.hires_steps(r, models.scheduler_config())

        # 5. Denoise (and 6. refine) the batch in chunks, all at once unless the device runs
        #    out of memory: then in halves, down to one image at a time. Image i always
        #    starts from its own seed's noise, so the chunking does not change it.
        seeds = [r.seed + i for i in range(r.batch_size)]
        denoiser = denoise.Denoiser(job, plan, pipe, runner, refiner, models.scheduler_config(),
                                    self.accel, stage, emit, elapsed, self.fast)
        t0 = time.perf_counter()
        latents, chunks = denoiser.batch(seeds, denoise.first_chunk(r, self.device), self.device)
        if devices.kind(self.device) == "cuda":
            torch.cuda.synchronize(self.device)  # kernels run ahead of the clock otherwise
        denoise_s = time.perf_counter() - t0
        steps_run = (plan.base_total + plan.refiner_total) * chunks

        # 7. Decode, 8. paste back the unmasked pixels (or draw the hires pass), 9. upscale
        #    and 10. save, one image at a time to bound the memory.
        # A1111's "Model hash" is of a checkpoint file; read once per file (cached).
        model_hash = hashes.short_hash(path) if os.path.isfile(path) else ""
        parameters = output.parameters(r, model_name, inp, model_hash)
        images = []
        n = r.batch_size
        for i, seed in enumerate(seeds):
            stage(STAGE_DECODING, i, n)
            pixels = self._decode(latents[i])
            latents[i] = None
            if plan.mask is not None:
                pixels = imgs.overlay(plan.init_full, pixels, plan.mask_full, plan.box)
            if r.hires_scale:
                t0 = time.perf_counter()
                pixels = self._decode(denoiser.hires(pixels, seed))
                denoise_s += time.perf_counter() - t0
                steps_run += plan.hires_total
            if inp.upscaler:
                stage(STAGE_UPSCALING, i, n)
                pixels = upscale.upscale(pixels, r.upscale, upscaler)
            stage(STAGE_SAVING, i, n)
            out_path = os.path.join(r.output_dir, f"{job.id}-{i}.png")
            files.write(pixels, out_path, parameters(seed), what=f"image {i + 1} of {n}",
                        left=n - i)
            images.append(Image(path=out_path, seed=seed, width=pixels.width, height=pixels.height))
        files.commit()
        emit(Progress(id=job.id, stage=STAGE_SAVING, step=n, total=n, elapsed_s=elapsed()))

        total_s = time.perf_counter() - start
        peak = memory.peak(self.device)
        if self.fast is not None:
            self.fast.job_ended(peak)  # the margin a later build of this size leaves for jobs
        fast_note = {"fast_path_note": denoiser.fast_note} if denoiser.fast_note else {}
        log.info("done: %d image(s) in %.2fs (denoise %.2fs)", len(images), total_s, denoise_s)
        return Result(id=job.id, images=images, control_images=plan.control_paths, metrics=Metrics(
            total_s=round(total_s, 4), load_s=round(load_s, 4), denoise_s=round(denoise_s, 4),
            its=round(steps_run / denoise_s, 3) if denoise_s > 0 else 0.0,
            device=devices.kind(self.device), dtype=devices.dtype_name(self.dtype),
            peak_mem_bytes=peak, vae_fallback=self._vae_fallback,
            batch_chunks=chunks, versions=self.versions,
            speed={**accel.in_effect(self.accel, devices.kind(self.device), self.speed),
                   "fast_path": denoiser.fast_state, **fast_note},
        ))

    def _upscale_only(self, job: Job, stage, start: float, files: output.JobFiles) -> Result:
        """Enlarges an existing picture (A1111's Extras): no model loads, nothing is
        generated. The PNG keeps the picture's own settings, if it has any, with the
        upscaler added, so that it reloads like its source."""
        r = job.request
        inp = checks.check_inputs(r, self.cache_dir, stage)  # the picture and the upscaler, as for any job
        source = os.path.abspath(os.path.expanduser(r.init_image))
        picture = inp.init
        try:
            with PILImage.open(source) as im:
                text = (im.info.get("parameters") or "").strip()
        except OSError:
            text = ""
        checks.make_output_dir(r.output_dir)
        t0 = time.perf_counter()
        model = self.models.use_upscaler(inp, stage)
        load_s = time.perf_counter() - t0
        stage(STAGE_UPSCALING, 0, 1)
        pixels = upscale.upscale(picture, r.upscale, model)
        stage(STAGE_SAVING, 0, 1)
        out_path = os.path.join(r.output_dir, f"{job.id}-0.png")
        files.write(pixels, out_path, output.upscaled_parameters(source, text, r, inp))
        files.commit()
        total_s = time.perf_counter() - start
        return Result(id=job.id, images=[Image(path=out_path, seed=r.seed, width=pixels.width,
                                               height=pixels.height)],
                      # No denoising: 0 keeps the job out of the queue's speed estimate.
                      metrics=Metrics(total_s=round(total_s, 4), load_s=round(load_s, 4),
                                      denoise_s=0.0, its=0.0,
                                      device=devices.kind(self.device),
                                      dtype=devices.dtype_name(self.dtype),
                                      peak_mem_bytes=memory.peak(self.device),
                                      vae_fallback=False, batch_chunks=1,
                                      versions=self.versions))

    def _decode(self, latents: torch.Tensor) -> PILImage.Image:
        """7. The VAE's image of one latent (decode.py: NaN falls back to float32)."""
        image, fell_back = decode.image(self.pipe.vae, latents, self.accel)
        self._vae_fallback = self._vae_fallback or fell_back
        return image

    def unload(self) -> None:
        self.models.unload()
        self.pipe = None


def package_versions() -> dict[str, str]:
    """The versions that decide a job's pixels, for its metrics: a reproduction elsewhere
    or later compares them (`atelier history verify`)."""
    import importlib.metadata as md

    out = {"torch": torch.__version__}
    try:
        out["diffusers"] = md.version("diffusers")
    except md.PackageNotFoundError:
        pass
    return out
