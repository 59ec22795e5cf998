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
            index = device.split(":", 1)[1]
            if not index.isdigit() or int(index) >= torch.cuda.device_count():
                raise DeviceError(f"no CUDA device {device!r}: this machine has "
                                  f"{torch.cuda.device_count()}")
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
