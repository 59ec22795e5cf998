"""Device memory: the peak a job used, giving back what a job left, and telling an
out-of-memory failure from another."""

from __future__ import annotations

import gc
import resource
import sys

import torch

from .. import device as devices


def peak(device: str) -> int:
    k = devices.kind(device)
    if k == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if k == "mps":
        return int(torch.mps.driver_allocated_memory())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def is_oom(e: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(e, (oom, torch.cuda.OutOfMemoryError)) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def free(device: str) -> None:
    gc.collect()
    k = devices.kind(device)
    if k == "cuda":
        torch.cuda.empty_cache()
    elif k == "mps":
        torch.mps.empty_cache()
