"""Chooses the compute device and dtype, and describes the machine for `hello`."""

from __future__ import annotations

import os
import platform

import torch

DTYPES = {
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
}


class DeviceError(Exception):
    """The requested device or dtype cannot be used here."""


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def kind(device: str) -> str:
    return device.split(":", 1)[0]


def visible_gpus() -> list[str] | None:
    """The entries of CUDA_VISIBLE_DEVICES up to the first invalid one (as CUDA reads it),
    or None when it is not set."""
    v = os.environ.get("CUDA_VISIBLE_DEVICES")
    if v is None:
        return None
    ids = []
    for f in v.split(","):
        f = f.strip()
        if not f or f.startswith("-"):
            break
        ids.append(f)
    return ids


def cuda_index(device: str, count: int) -> int:
    """torch's index for cuda:N, where N is the GPU's nvidia-smi index: the number users see
    everywhere (core/settings.CUDAIndex maps the other way). With CUDA_VISIBLE_DEVICES
    listing indices, the worker sees those GPUs in that order; listed by UUID, N is the
    place in the list. CUDA_DEVICE_ORDER=PCI_BUS_ID (prepare_env) makes CUDA number the
    GPUs as nvidia-smi does."""
    n = device.split(":", 1)[1]
    if not n.isdigit() or str(int(n)) != n:
        raise DeviceError(f"unknown device {device!r}: use cuda, cuda:N (N as nvidia-smi numbers "
                          "the GPU), mps or cpu")
    visible = visible_gpus()
    names = [str(i) for i in range(count)]
    if visible is not None and all(v.isdigit() for v in visible):
        names = visible[:count]
    if n not in names:
        seen = ", ".join(f"cuda:{x}" for x in names) or "none"
        raise DeviceError(f"{device} was asked for but this worker sees no such CUDA GPU: it sees "
                          f"{seen} (numbered as nvidia-smi numbers them); use one of those, or "
                          "--device cuda or auto")
    return names.index(n)


def pick(device: str | None = None, dtype: str | None = None) -> tuple[str, torch.dtype]:
    """CUDA, then MPS, then CPU, unless device names one. fp16 on CUDA: SDXL weights ship in
    fp16, every CUDA GPU runs it, and the shared GPU baselines were measured in it; the VAE,
    which overflows in fp16, is decoded in fp32 instead (see pipeline). fp16 on MPS, and fp32
    on CPU, where half precision is slow or missing."""
    if not device:
        if torch.cuda.is_available():
            device = "cuda"
        elif torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    k = kind(device)
    if k not in ("cuda", "mps", "cpu"):
        raise DeviceError(f"unknown device {device!r}: use cuda, cuda:N, mps or cpu")
    if k == "cuda":
        if not torch.cuda.is_available():
            built = f", built for CUDA {torch.version.cuda}" if torch.version.cuda else ", built without CUDA"
            name = "CUDA" if device == "cuda" else f"CUDA device {device}"
            raise DeviceError(f"{name} was asked for but this machine's torch sees no CUDA GPU: "
                              f"torch {torch.__version__}{built}, finds no GPU or driver (nvidia-smi "
                              "shows what the driver sees); use --device cpu or auto (Settings ▸ "
                              "Device in the app)")
        if ":" in device:
            device = f"cuda:{cuda_index(device, torch.cuda.device_count())}"
    if k == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("mps was asked for but this machine has no Metal GPU: use --device cpu "
                          "or auto (Settings ▸ Device in the app)")
    if not dtype:
        return device, torch.float32 if k == "cpu" else torch.float16
    if dtype.lower() not in DTYPES:
        raise DeviceError(f"unknown dtype {dtype!r}: use float16, bfloat16 or float32")
    return device, DTYPES[dtype.lower()]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def describe() -> list[dict]:
    """Every device found, GPUs first, as hello's `devices`."""
    found = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            found.append({"name": p.name, "kind": "cuda", "memory_bytes": int(p.total_memory)})
    if torch.backends.mps.is_available():
        mem = torch.mps.recommended_max_memory() if hasattr(torch.mps, "recommended_max_memory") else 0
        found.append({"name": "Apple GPU", "kind": "mps", "memory_bytes": int(mem)})
    found.append({"name": _cpu_name(), "kind": "cpu", "memory_bytes": _ram_bytes()})
    return found
