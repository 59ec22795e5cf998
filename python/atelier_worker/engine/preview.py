"""Previews while a job denoises: the file they go to, and how they are made without the
VAE and without stopping the GPU (the predicted clean latents, projected to RGB on the
device, written by a thread)."""

from __future__ import annotations

import os
import threading

import torch
from PIL import Image

from ..job import Job
from . import output


def preview_file(job: Job) -> str:
    return os.path.join(job.request.output_dir, f".preview-{job.id}.png")


def previewer(path: str) -> Previewer:
    """A Previewer that writes its previews to path."""
    return Previewer(lambda im: output.write_png(im, path, sync=False))


# Linear map from SDXL's 4 latent channels to RGB in [-1, 1] (the factors ComfyUI and
# others use for SDXL previews).
_LATENT_RGB = [
    [0.3651, 0.4232, 0.4341],
    [-0.2533, -0.0042, 0.1068],
    [0.1076, 0.1111, -0.0362],
    [-0.3165, -0.2492, -0.2188],
]
_LATENT_RGB_BIAS = [0.1084, -0.0175, -0.0011]


class X0Tap:
    """Wraps a scheduler's step to keep its predicted clean latents (x0), which make a far
    clearer preview than the noisy latents of an early step. Schedulers that do not return
    one leave `x0` as None."""

    def __init__(self, scheduler):
        self.x0 = None
        orig = scheduler.step

        def step(*args, **kwargs):
            want_tuple = not kwargs.get("return_dict", True)
            kwargs["return_dict"] = True
            out = orig(*args, **kwargs)
            self.x0 = getattr(out, "pred_original_sample", None)
            return (out.prev_sample,) if want_tuple else out

        scheduler.step = step


_MATRICES: dict = {}
_PINNED: dict = {}  # shape -> pinned host buffer; one preview is in flight at a time


def _preview_matrix(device):
    """The latent->RGB projection and bias as float32 tensors on device, made once."""
    key = str(device)
    if key not in _MATRICES:
        _MATRICES[key] = (torch.tensor(_LATENT_RGB, dtype=torch.float32).to(device),
                          torch.tensor(_LATENT_RGB_BIAS, dtype=torch.float32).to(device))
    return _MATRICES[key]


class Previewer:
    """Turns latents into a small RGB preview without the VAE, and without stopping the GPU:
    the 4->3 projection runs on the device, the copy to the host is asynchronous, and the
    PNG is written by a background thread once the copy has landed."""

    def __init__(self, write):
        self._write = write  # write(PIL image) -> None
        self._thread: threading.Thread | None = None

    def submit(self, latents, on_written=None) -> bool:
        """Queues a preview of latents (C, H, W); returns False if the last is still pending.
        Nothing here waits for the GPU: the projection matrix is cached on the device (a
        fresh host tensor would be a blocking copy) and the pinned host buffer is reused
        (allocating pinned memory synchronizes the device)."""
        if self._thread is not None and self._thread.is_alive():
            return False
        with torch.no_grad():
            m, b = _preview_matrix(latents.device)
            rgb = torch.einsum("chw,cr->hwr", latents.float(), m) + b
            rgb = ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8)
            event = None
            if rgb.is_cuda:
                key = tuple(rgb.shape)
                host = _PINNED.get(key)
                if host is None:  # once per preview size for the process
                    host = _PINNED[key] = torch.empty(key, dtype=torch.uint8, pin_memory=True)
                host.copy_(rgb, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
            else:
                host = rgb.cpu()

        def finish() -> None:
            if event is not None:
                event.synchronize()
            self._write(Image.fromarray(host.numpy(), "RGB"))
            if on_written is not None:
                on_written()

        self._thread = threading.Thread(target=finish, name="preview", daemon=True)
        self._thread.start()
        return True

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
