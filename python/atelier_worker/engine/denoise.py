"""Steps 5 and 6 of a job, and the hires pass: the diffusers pipeline that runs (txt2img,
img2img, inpaint, their ControlNet versions), how many steps it will take, the batch in
chunks (halved when the device runs out of memory), the refiner, and the progress, cancel
and preview callback of every step."""

from __future__ import annotations

import inspect
import logging
import os
import traceback

import torch
from PIL import Image as PILImage

from .. import device as devices
from .. import images as imgs
from .. import optimize, schedulers
from ..job import Job
from ..protocol import Preview, Progress, Request, hires_size
from ..spec import STAGE_DENOISING, STAGE_HIRES, STAGE_OPTIMIZING, STAGE_REFINING
from . import memory, preview
from .errors import Cancelled
from .prepare import Plan

log = logging.getLogger("atelier.engine.denoise")

# Rough device memory a batch image needs while denoising at 1024x1024 (see first_chunk).
BATCH_BYTES_PER_MEGAPIXEL = float(os.environ.get("ATELIER_BATCH_GB_PER_MEGAPIXEL", "1.25")) * 2**30

# Tests only: seconds every step waits after its progress (a cancel cuts it short), so that a
# step outlasts the bridge's heartbeat deadline on any machine.
TEST_STEP_DELAY_S = float(os.environ.get("ATELIER_TEST_STEP_DELAY_S") or 0)


def count_steps(scheduler, steps: int, strength: float | None = None,
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


def step_counts(r: Request, plan: Plan, refiner, base_config, refiner_config) -> tuple[int, int]:
    """How many denoising iterations the base and the refiner run: what the pipelines'
    own timestep selection will give (second-order schedulers run about twice the steps,
    img2img only the strength's share, each side of the refiner switch its own part)."""
    switch = r.refiner_switch if refiner is not None else None
    strength = r.strength if plan.init is not None else None
    base = count_steps(schedulers.build(r.scheduler, r.schedule, base_config), r.steps,
                       strength=strength, denoising_end=switch)
    ref = 0
    if refiner is not None:
        ref = count_steps(schedulers.build(r.scheduler, r.schedule, refiner_config),
                          r.steps, denoising_start=switch)
    return base, ref


def hires_steps(r: Request, base_config) -> int:
    return count_steps(schedulers.build(r.scheduler, r.schedule, base_config),
                       r.hires_steps or r.steps, strength=r.hires_strength)


def first_chunk(r: Request, device: str) -> int:
    """The batch at once, unless the free device memory clearly cannot hold it: then as
    many images as fit by a rough estimate (the out-of-memory halving does the rest)."""
    if devices.kind(device) != "cuda" or r.batch_size == 1:
        return r.batch_size
    try:
        free, _total = torch.cuda.mem_get_info(device)
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


def runner(pipe, controlnets: list, plan: Plan):
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
    return build_pipeline(cls, pipe, extra)


def build_pipeline(cls, pipe, extra: dict):
    """A pipeline of class cls made from the warm pipeline's modules by the constructor,
    not from_pipe: from_pipe casts every shared module to its dtype argument (float32 by
    default), which would turn the warm half-precision model into a float32 one."""
    params = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in pipe.components.items() if k in params}
    kwargs.update({k: v for k, v in pipe.config.items() if k in params and k not in kwargs
                   and not k.startswith("_") and not isinstance(v, (list, tuple))})
    kwargs["add_watermarker"] = False
    out = cls(**kwargs, **extra)
    out.set_progress_bar_config(disable=True)
    return out


class Denoiser:
    """The denoising of one job: its pipelines, plan, and progress reporting."""

    def __init__(self, job: Job, plan: Plan, pipe, runner, refiner, scheduler_config, settings,
                 stage, emit, elapsed, fast=None):
        self.job, self.plan, self.pipe, self.runner, self.refiner = job, plan, pipe, runner, refiner
        self.scheduler_config, self.settings = scheduler_config, settings
        self.stage, self.emit, self.elapsed = stage, emit, elapsed
        self.preview_path = preview.preview_file(job)
        self.fast = fast              # fastrun.FastUNets, on CUDA with ATELIER_COMPILE=auto
        self.fast_state = "off"       # the base pass's: on | building | off
        self.fast_load_s = 0.0
        self.fast_note = ""           # why it is off, where known (metrics.speed.fast_path_note)

    def _fast(self, n: int, pe) -> None:
        """The fast path for this chunk's base pass: on where its artefact is built (loaded
        here, between jobs, if it is new), else the plain path, with the artefact started
        in the background and the optimizing stage said so the user knows why."""
        if self.fast is None or self.plan.controlnets:
            return
        r = self.job.request
        unet = self.runner.unet
        batch = n * (2 if r.cfg > 1 and unet.config.time_cond_proj_dim is None else 1)
        self.fast_state, _key = self.fast.prepare(unet, batch, r.height, r.width, pe.shape[1],
                                                  unet.dtype)
        self.fast_load_s += self.fast.last_load_s
        self.fast_note = self.fast.note or self.fast_note
        if self.fast_state == "building":
            self.stage(STAGE_OPTIMIZING, 0, 0)
        elif self.fast.note_new:
            # Why this size gets no fast path (no room on the GPU, a failed build or load):
            # said once, on the optimizing notice, which the studio shows beside the job.
            self.emit(Progress(id=self.job.id, stage=STAGE_OPTIMIZING, step=0, total=0,
                               elapsed_s=self.elapsed(), note=self.fast.note))

    def batch(self, seeds: list[int], chunk: int, device: str) -> tuple[list[torch.Tensor], int]:
        """The latents of every seed, chunk images at a time, halving the chunk when the
        device runs out of memory; returns them and how many chunks ran."""
        latents: list[torch.Tensor | None] = [None] * len(seeds)
        todo = list(range(len(seeds)))
        chunks = 0
        while todo:
            idx = todo[:chunk]
            try:
                out = self.chunk([seeds[i] for i in idx])
            except Exception as e:  # noqa: BLE001 - only out-of-memory is handled here
                if not memory.is_oom(e) or chunk == 1:
                    raise
                traceback.clear_frames(e.__traceback__)
                del e
                memory.free(device)
                chunk = max(1, chunk // 2)
                log.warning("out of memory with %d image(s) at once: going on %d at a time",
                            len(idx), chunk)
                continue
            for k, i in enumerate(idx):
                latents[i] = out[k:k + 1]
            todo = todo[len(idx):]
            chunks += 1
        return latents, chunks

    def _callback(self, name: str, total: int, tap, previewer, stop_at_total: bool = False):
        return step_callback(self.job, name, total, tap, previewer, self.preview_path, self.emit,
                             self.elapsed, stop_at_total)

    def chunk(self, seeds: list[int]) -> torch.Tensor:
        job, plan, runner, refiner = self.job, self.plan, self.runner, self.refiner
        r = job.request
        n = len(seeds)
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]

        def rep(t):
            return None if t is None else t.repeat(n, *([1] * (t.dim() - 1)))

        pe, npe, ppe, nppe = plan.embeds
        kw = dict(prompt_embeds=rep(pe), negative_prompt_embeds=rep(npe),
                  pooled_prompt_embeds=rep(ppe), negative_pooled_prompt_embeds=rep(nppe),
                  num_inference_steps=r.steps, guidance_scale=r.cfg, generator=gens,
                  output_type="latent", callback_on_step_end_tensor_inputs=["latents"])
        if plan.init is None:
            # Noise made on the CPU, one generator per image, so that a seed gives the same
            # start on every device and image i of a batch starts where seed + i alone does.
            pipe = self.pipe
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

        previewer = preview.previewer(self.preview_path)
        tap = preview.X0Tap(runner.scheduler) if r.preview_every else None
        self._fast(n, pe)
        self.stage(STAGE_DENOISING, 0, plan.base_total)
        try:
            with optimize.sdpa_context(self.settings):
                latents = runner(callback_on_step_end=self._callback(STAGE_DENOISING, plan.base_total, tap,
                                                                     previewer, emulate_end), **kw).images
        finally:
            previewer.wait()
            if self.fast is not None:
                self.fast.done(runner.unet)
        if refiner is None:
            return latents

        # 6. The refiner takes the latents over at the switch point.
        # In the refiner's own dtype: the base may hand over float32 latents (its scheduler
        # keeps float32 sigmas) and the refiner's UNet would refuse them.
        rdtype = refiner.unet.dtype
        rpe, rnpe, rppe, rnppe = (None if t is None else t.to(rdtype) for t in plan.refiner_embeds)
        log.debug("refining %s latents as %s", latents.dtype, rdtype)
        latents = latents.to(rdtype)
        previewer = preview.previewer(self.preview_path)
        tap = preview.X0Tap(refiner.scheduler) if r.preview_every else None
        self.stage(STAGE_REFINING, 0, plan.refiner_total)
        try:
            with optimize.sdpa_context(self.settings):
                latents = refiner(
                    prompt_embeds=rep(rpe), negative_prompt_embeds=rep(rnpe),
                    pooled_prompt_embeds=rep(rppe), negative_pooled_prompt_embeds=rep(rnppe),
                    image=latents, num_inference_steps=r.steps, denoising_start=r.refiner_switch,
                    guidance_scale=r.cfg, generator=gens, output_type="latent",
                    callback_on_step_end=self._callback(STAGE_REFINING, plan.refiner_total, tap, previewer),
                    callback_on_step_end_tensor_inputs=["latents"],
                ).images
        finally:
            previewer.wait()
        return latents

    def hires(self, pixels: PILImage.Image, seed: int) -> torch.Tensor:
        """A1111's hires fix: the first pass's image, enlarged with Lanczos, drawn again by
        img2img at hires_strength, so that the detail at the larger size comes from the model
        rather than from the resize (SDXL composes best near one megapixel, so the first pass
        stays there). Runs after the refiner, on the base model, with the same seed, and
        with the job's ControlNets (their control images prepared again at the new size).
        Returns the latents of the larger image."""
        job, plan = self.job, self.plan
        r = job.request
        cns = plan.controlnets
        if plan.hires_runner is None:
            import diffusers as d

            if cns:
                plan.hires_runner = build_pipeline(
                    d.StableDiffusionXLControlNetImg2ImgPipeline, self.pipe,
                    {"controlnet": cns if len(cns) > 1 else cns[0]})
            else:
                plan.hires_runner = build_pipeline(d.StableDiffusionXLImg2ImgPipeline, self.pipe, {})
            plan.hires_runner.scheduler = schedulers.build(r.scheduler, r.schedule,
                                                           self.scheduler_config)
        hires_runner = plan.hires_runner
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
        previewer = preview.previewer(self.preview_path)
        tap = preview.X0Tap(hires_runner.scheduler) if r.preview_every else None
        self.emit(Progress(id=job.id, stage=STAGE_HIRES, step=0, total=plan.hires_total,
                           elapsed_s=self.elapsed()))
        try:
            with optimize.sdpa_context(self.settings):
                return hires_runner(
                    prompt_embeds=pe, negative_prompt_embeds=npe, pooled_prompt_embeds=ppe,
                    negative_pooled_prompt_embeds=nppe, image=big, strength=r.hires_strength,
                    num_inference_steps=r.hires_steps or r.steps, guidance_scale=r.cfg,
                    generator=torch.Generator("cpu").manual_seed(seed), output_type="latent",
                    callback_on_step_end=self._callback(STAGE_HIRES, plan.hires_total, tap, previewer),
                    callback_on_step_end_tensor_inputs=["latents"], **control,
                ).images
        finally:
            previewer.wait()


def step_callback(job: Job, name: str, total: int, tap, previewer, preview_path: str, emit,
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
        if TEST_STEP_DELAY_S:
            job.cancel.wait(TEST_STEP_DELAY_S)
        if r.preview_every and step % r.preview_every == 0 and step < total:
            # From the predicted clean latents where the scheduler gives them,
            # projected to RGB on the device and written by a thread: the GPU never waits.
            x0 = tap.x0 if tap is not None and tap.x0 is not None else kwargs["latents"]
            previewer.submit(x0[0], lambda s=step: emit(Preview(id=job.id, step=s,
                                                                path=preview_path)))
        return {}
    return on_step_end
