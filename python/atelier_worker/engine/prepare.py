"""Step 3 of a job: the images the pipeline gets, at the output size (control images, Canny
edges, the init image and the blurred mask, the "only masked" crop), held in a Plan with
what later steps add to it (prompt embeddings, step counts, the hires pass's pipeline)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from PIL import Image as PILImage

from .. import images as imgs
from ..job import Job
from ..spec import STAGE_PREPROCESSING
from . import output
from .checks import Inputs


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


def prepare(job: Job, inp: Inputs, stage, files: output.JobFiles) -> Plan:
    """The plan's images; the control images are also saved with the job's files."""
    r = job.request
    plan = Plan()
    if not (inp.controlnets or inp.init is not None):
        return plan
    stage(STAGE_PREPROCESSING)
    for i, (cn, _path, _name, image) in enumerate(inp.controlnets):
        control = imgs.fit(image, r.width, r.height)
        if cn.type == "canny":
            control = imgs.canny(control, cn.canny_low, cn.canny_high)
        out = os.path.join(r.output_dir, f"{job.id}-control-{i}.png")
        files.write(control, out, what=f"control image {i + 1}")
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
