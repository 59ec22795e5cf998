"""Step 10 of a job: the PNGs it writes (whole or not at all) and the A1111 `parameters`
text they carry (infotext.py formats it)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import numpy as np
from PIL import Image as PILImage
from PIL.PngImagePlugin import PngInfo

from .. import __version__, infotext, png
from ..protocol import Request
from ..spec import ERR_INTERNAL
from .checks import Inputs
from .errors import JobFailed


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
                f.write(png.encode_png(np.asarray(image), None if parameters is None
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
        raise JobFailed(ERR_INTERNAL, f"could not save the image to {path}: {e.strerror or e}. "
                        "Free some disk space or choose another output folder, then generate "
                        "again", field="output_dir") from None


def parameters(r: Request, model_name: str, inp: Inputs, model_hash: str = "") -> Callable[[int], str]:
    """The `parameters` text of the job's images, by seed. `model_hash` is the
    checkpoint file's short hash; a model folder has none."""
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
        # The tags are in the prompt too (format_parameters), where A1111 reads them; this
        # is the whole list, for Atelier.
        extra.append(("Loras", json.dumps(" ".join(infotext.lora_tag(w.name, w.weight) for w in inp.loras),
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
            height=r.height, model=model_name, version=__version__, model_hash=model_hash,
            loras=[(w.name, w.weight) for w in inp.loras], extra=extra)
    return text


def upscaled_parameters(source: str, text: str, r: Request, inp: Inputs) -> str:
    """The `parameters` of an upscaled picture: its source's own (text, maybe empty), with
    the upscaler added to their last line, so that it reloads like its source."""
    extra = (f"Postprocess upscaler: {infotext.quote(inp.upscaler_name)}, "
             f"Postprocess upscale by: {infotext.number(r.upscale)}")
    if text:
        return text + ", " + extra
    return f"Upscaled {os.path.basename(source)}\n{extra}, Version: Atelier {__version__}"
