"""The harness of bench_probe: one JSON record per measurement, the full-size random-weight
UNet and its inputs, and timing on the device."""

from __future__ import annotations

import json
import os
import statistics
import time

T_START = time.perf_counter()

_OUT = None
_STAGE = ""


def record(what: str, **fields) -> dict:
    rec = {"stage": _STAGE, "what": what, "t_s": round(time.perf_counter() - T_START, 3), **fields}
    line = json.dumps(rec, default=str)
    print(line, flush=True)
    if _OUT:
        with open(_OUT, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    return rec


def torch_setup(device: str):
    import torch

    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch


def build_unet(preset: str, seed: int, device: str, dtype, fuse: bool = True):
    import torch
    from diffusers import UNet2DConditionModel

    from . import tiny

    cfg = tiny.configs(preset, 49408, 49406, 49407)["unet"]
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**cfg).eval().to(dtype)
    if fuse:
        unet.fuse_qkv_projections()
    unet.requires_grad_(False)
    return unet


def make_inputs(unet, size: int, device: str, dtype, seed: int = 123):
    import torch

    g = torch.Generator(device).manual_seed(seed)
    h = size // 8
    cross = unet.config.cross_attention_dim
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    return {
        "sample": torch.randn(2, 4, h, h, device=device, dtype=dtype, generator=g),
        "timestep": torch.tensor(500.0, device=device),
        "ehs": torch.randn(2, 77, cross, device=device, dtype=dtype, generator=g) * 0.5,
        "text_embeds": torch.randn(2, pooled, device=device, dtype=dtype, generator=g) * 0.5,
        "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * 2, device=device, dtype=dtype),
    }


def call(unet, inp):
    """The UNet called exactly as the SDXL pipeline calls it."""
    return unet(inp["sample"], inp["timestep"], encoder_hidden_states=inp["ehs"], timestep_cond=None,
                cross_attention_kwargs=None,
                added_cond_kwargs={"text_embeds": inp["text_embeds"], "time_ids": inp["time_ids"]},
                return_dict=False)[0]


def step_module(unet):
    """The product's CFG UNet call with flat inputs (fastrun.Step), what export takes."""
    from .fastrun import Step

    return Step(unet).eval()


def capture(fn, static):
    """A CUDA graph of fn(*static), captured after two warm-up calls on a side stream (as
    torch asks); returns (graph, its output, the capture's seconds, warm-ups left out)."""
    import torch

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn(*static)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    t0 = time.perf_counter()
    with torch.cuda.graph(graph):
        out = fn(*static)
    return graph, out, time.perf_counter() - t0


def flat(inp):
    return (inp["sample"], inp["timestep"], inp["ehs"], inp["text_embeds"], inp["time_ids"])


def sync(device):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_ms(fn, device, reps: int = 10, warm: int = 2) -> dict:
    for _ in range(warm):
        fn()
    sync(device)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        ts.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": round(statistics.median(ts), 3), "min_ms": round(min(ts), 3),
            "max_ms": round(max(ts), 3), "n": reps}


def rel_err(y, ref) -> float:
    y, ref = y.float(), ref.float()
    return round(float((y - ref).norm() / ref.norm()), 6)


def first_call(fn, device) -> tuple[float, object]:
    sync(device)
    t0 = time.perf_counter()
    y = fn()
    sync(device)
    dt = round(time.perf_counter() - t0, 3)
    # A CUDA-graph output is overwritten by the next replay: keep a copy.
    return dt, y.clone()


def env_info(device: str) -> dict:
    import platform

    import torch

    v = {"python": platform.python_version(), "torch": torch.__version__,
         "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}
    for name in ("diffusers", "triton", "transformers"):
        try:
            v[name] = __import__(name).__version__
        except ImportError:
            pass
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(0)
        v.update(gpu=p.name, sms=p.multi_processor_count, mem_gib=round(p.total_memory / 2**30, 1))
    v["cpus"] = os.cpu_count()
    return v
