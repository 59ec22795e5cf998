"""Applies the speed settings (accel.py) to torch and to a loaded pipeline: the process-wide
torch switches, placement or CPU offload, the VAE's dtype, fused QKV projections,
channels-last, FP8 matmuls, torch.compile, and the context the denoising calls run in
(inference mode, the attention backend)."""

from __future__ import annotations

import contextlib
import logging
import time

import torch

from .accel import Settings

log = logging.getLogger("atelier.optimize")


def configure_torch(s: Settings, device_kind: str) -> None:
    """Process-wide switches; called once, after torch is imported."""
    if device_kind != "cuda":
        return
    torch.backends.cudnn.benchmark = s.cudnn_benchmark
    # Only parts kept in fp32 (a float32 VAE) use these; fp16/bf16 work is unaffected.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    from torch import _dynamo

    # A bounded number of compiled variants per function (sizes, batch sizes): past it the
    # function runs eagerly instead of compiling again. A second size makes the graph dynamic.
    _dynamo.config.cache_size_limit = 16
    try:
        _dynamo.config.automatic_dynamic_shapes = True
    except AttributeError:
        pass


def vae_dtype(s: Settings, dtype, vae_force_upcast: bool):
    """The VAE's dtype. SDXL's VAE overflows in fp16 (NaNs, black images); bf16 has fp32's
    range, so on CUDA auto picks bf16 where fp16 would overflow: no fp32 upcast."""
    names = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
    if s.vae_dtype != "auto":
        return names[s.vae_dtype]
    if dtype == torch.float16 and vae_force_upcast:
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return dtype


def sdpa_context(s: Settings):
    """The context for the denoising and decoding calls: inference mode (diffusers' own
    no_grad still pays for version counters and view tracking on every op, which the eager
    UNet, launch-bound on the CPU, feels: measured 82 against 61 ms a step on an H100), and
    the attention backend when one is pinned."""
    stack = contextlib.ExitStack()
    if s.inference_mode:
        stack.enter_context(torch.inference_mode())
    stack.enter_context(attention(s.sdpa))
    return stack


def attention(name: str):
    """The context that puts one backend of scaled_dot_product_attention first (ATELIER_SDPA),
    or none for "auto" (torch picks; torch 2.11 picks cuDNN for SDXL's UNet on an H200). The
    others stay behind it in torch's order, because no backend takes every call: cuDNN has
    no kernel for the VAE's attention (one head of 512), which pinned alone failed every job
    ("No available kernel", H200). The fast path's artefacts are not affected: AOTInductor
    compiles in torch's own choice whatever this context says."""
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION,
             SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    first = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[name]
    return sdpa_kernel([first] + [b for b in order if b != first], set_priority=True)


def place(pipe, device: str, s: Settings) -> None:
    """Moves the pipeline onto the device, or sets up CPU offload for small GPUs."""
    if s.offload == "model" and device.startswith("cuda"):
        pipe.enable_model_cpu_offload(device=device)
    elif s.offload == "sequential" and device.startswith("cuda"):
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)


def module_device(module):
    """Where a module computes: with CPU offload its weights sit on the CPU between calls,
    and the offload hook names the GPU it moves them to."""
    hook = getattr(module, "_hf_hook", None)
    dev = getattr(hook, "execution_device", None)
    if dev is not None:
        return dev
    dev = getattr(module, "device", None)  # diffusers' models have one
    return dev if dev is not None else next(module.parameters()).device


def apply(pipe, device: str, dtype, s: Settings) -> dict:
    """Applies the settings to a loaded, placed pipeline; returns what was done and how long
    it took (compiling itself happens lazily, at the first call)."""
    t0 = time.perf_counter()
    done: dict = {}
    cuda = device.startswith("cuda")
    vd = vae_dtype(s, dtype, bool(getattr(pipe.vae.config, "force_upcast", False)))
    if pipe.vae.dtype != vd:
        pipe.vae.to(dtype=vd)
    # The pipeline's own decode would upcast a fp16 VAE to fp32 and back at every call.
    if vd != torch.float16:
        pipe.vae.register_to_config(force_upcast=False)
    done["vae_dtype"] = str(vd).removeprefix("torch.")
    if s.vae_tiling:
        pipe.vae.enable_tiling()
        done["vae_tiling"] = True
    if s.vae_slicing:
        pipe.vae.enable_slicing()
        done["vae_slicing"] = True
    if s.fuse_qkv:
        try:
            pipe.fuse_qkv_projections()
            done["fuse_qkv"] = True
        except Exception as e:  # noqa: BLE001 - a model without it just runs unfused
            log.warning("fused QKV projections unavailable: %s", e)
    if s.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
        done["channels_last"] = True
    if s.fp8 and cuda:
        from . import fp8

        why = fp8.unsupported(device)
        if why:
            log.warning("ATELIER_FP8: %s; the UNet runs in %s", why, str(pipe.unet.dtype).removeprefix("torch."))
        else:
            done["fp8_linears"] = fp8.quantize(pipe.unet)
    if s.compile in ("regional", "full") and cuda:
        mode = None if s.compile_mode == "default" else s.compile_mode
        if s.compile_text:
            for name in ("text_encoder", "text_encoder_2"):
                te = getattr(pipe, name, None)
                if te is not None:
                    te.forward = torch.compile(te.forward, fullgraph=False)
            done["compile_text"] = True
        if s.compile == "regional":
            pipe.unet.compile_repeated_blocks(fullgraph=True, mode=mode)
        else:
            pipe.unet = torch.compile(pipe.unet, fullgraph=True, mode=mode)
        done["compile"] = s.compile + ("" if mode is None else f" ({mode})")
        if s.compile_vae:
            pipe.vae.decoder = torch.compile(pipe.vae.decoder, fullgraph=True, mode=mode)
            done["compile_vae"] = True
    done["optimize_s"] = round(time.perf_counter() - t0, 3)
    log.info("speed settings: %s", done)
    return done
