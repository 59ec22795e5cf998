"""Step 10 of a job: the PNGs it writes (all of a job's or none, each whole) and the
A1111 `parameters` text they carry (infotext.py formats it)."""

from __future__ import annotations

import errno
import io
import json
import os
from collections.abc import Callable

import numpy as np
from PIL import Image as PILImage
from PIL.PngImagePlugin import PngInfo

from .. import __version__, infotext, png
from ..protocol import Request
from ..spec import ERR_DISK_FULL, ERR_INTERNAL
from .checks import Inputs
from .errors import JobFailed

# What a write fails with when the disk, or the user's quota on it, is full.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


def is_disk_full(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS


def encode(image: PILImage.Image, parameters: str | None = None) -> bytes:
    """The PNG file of image, with a `parameters` text chunk when given."""
    if image.mode == "RGB":
        # Deflated on several threads: PIL's single-threaded PNG takes longer than the
        # whole denoising loop on a fast GPU.
        return png.encode_png(np.asarray(image), None if parameters is None
                              else {"parameters": parameters})
    info = None
    if parameters is not None:
        info = PngInfo()
        info.add_text("parameters", parameters)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def write_file(path: str, data: bytes, sync: bool = True) -> None:
    """Writes data to path; every PNG goes through here, so a test can fail it."""
    with open(path, "wb") as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())


def _tmp_name(path: str) -> str:
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}")


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def write_png(image: PILImage.Image, path: str, parameters: str | None = None, sync: bool = True) -> None:
    """Writes through a temporary file and a rename, so that a reader never sees half a PNG."""
    tmp = _tmp_name(path)
    try:
        write_file(tmp, encode(image, parameters), sync)
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def disk_full(e: OSError, folder: str, what: str = "", needed: int = 0) -> JobFailed:
    """The error of a job that found the disk (or the quota) full while writing into folder:
    what it was writing, about how much the job needs and how much is free, what to do."""
    try:
        st = os.statvfs(folder)
        free = f"{_size(st.f_bavail * st.f_frsize)} are free"
    except (OSError, AttributeError):  # no statvfs on Windows
        free = ""
    full = "the disk is full" if e.errno == errno.ENOSPC else "your disk quota is used up"
    writing = f"saving {what}" if what else "writing"
    need = " and ".join(x for x in (f"the job needs about {_size(needed)}" if needed else "", free) if x)
    return JobFailed(ERR_DISK_FULL,
                     f"{full} ({folder}): {writing} failed" + (f" ({need})" if need else "") +
                     ". Nothing of this job was kept. Free some space on that disk, or move "
                     "Atelier's folder to another disk (ATELIER_HOME), then generate again",
                     detail=f"{e.filename or folder}: {e.strerror or e}")


def _save_error(e: OSError, path: str, what: str, needed: int) -> JobFailed:
    if is_disk_full(e):
        return disk_full(e, os.path.dirname(path), what, needed)
    return JobFailed(ERR_INTERNAL, f"could not save the image to {path}: {e.strerror or e}. "
                     "Free some disk space or choose another output folder, then generate "
                     "again", field="output_dir")


class JobFiles:
    """The PNGs of one job, all kept or none: each is written to a temporary name in its
    folder, and commit renames them all into place once every one is written. discard
    removes what is not committed; the engine calls it however the job ends."""

    def __init__(self) -> None:
        self._staged: list[tuple[str, str]] = []  # (temporary, final) paths
        self._written = 0  # bytes

    def write(self, image: PILImage.Image, path: str, parameters: str | None = None,
              what: str = "", left: int = 1) -> None:
        """Writes one PNG of the job; left counts the images still to write, this one
        included, so that a full disk can say about how much the whole job needs."""
        data = encode(image, parameters)
        tmp = _tmp_name(path)
        self._staged.append((tmp, path))
        try:
            write_file(tmp, data)
        except OSError as e:
            # The job is over: what it wrote is gone before the free space is measured.
            self.discard()
            raise _save_error(e, path, what or os.path.basename(path),
                              self._written + len(data) * left) from None
        self._written += len(data)

    def commit(self) -> None:
        placed: list[str] = []
        try:
            for tmp, path in self._staged:
                os.replace(tmp, path)
                placed.append(path)
        except OSError as e:
            for path in placed:
                _unlink(path)
            raise _save_error(e, path, os.path.basename(path), 0) from None
        self._staged = []

    def discard(self) -> None:
        for tmp, _ in self._staged:
            _unlink(tmp)
        self._staged = []


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
