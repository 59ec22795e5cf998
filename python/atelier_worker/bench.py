"""The Python half of `atelier bench`: builds the benchmark model, times plain diffusers as the
baseline, and measures the cost of the worker's progress lines. The Go half drives the real
worker through the bridge and prints the report.

    python -m atelier_worker.bench model --out DIR [--preset full|tiny]
    python -m atelier_worker.bench baseline --model DIR [--steps 30 --width 1024 ...]
    python -m atelier_worker.bench emitcost
    python -m atelier_worker.bench fp8check --model DIR [--steps 30 --seed 1000 ...]

Each command prints one JSON object as its last stdout line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import threading
import time

PROMPT = "a lighthouse at dusk, oil painting"
NEGATIVE = "fog, blur"


def percentile(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0-100) of a non-empty list."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s) - 1e-9) - 1))
    return s[k]


def summary(xs: list[float]) -> dict:
    return {"median_s": round(statistics.median(xs), 4), "p90_s": round(percentile(xs, 90), 4),
            "min_s": round(min(xs), 4), "n": len(xs)}


def versions() -> dict:
    import torch

    v = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import diffusers

        v["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        v["gpu"] = torch.cuda.get_device_name(0)
        v["cuda"] = torch.version.cuda
    return v


def cmd_model(args) -> dict:
    """Creates the random-weight model (the full SDXL sizes by default), on the GPU where
    there is one: initialising 3.5 B parameters on a CPU takes minutes."""
    import torch

    from . import tiny

    t0 = time.perf_counter()
    existed = os.path.isfile(os.path.join(args.out, "model_index.json"))
    if not existed:
        import diffusers.utils.logging as dlog

        dlog.set_verbosity_error()
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        with torch.device(dev):
            tiny.create(args.out, args.preset, args.dtype)
    return {"model": os.path.abspath(args.out), "preset": args.preset, "existed": existed,
            "create_s": round(time.perf_counter() - t0, 2)}


def _timed(fn, sync) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def cmd_baseline(args) -> dict:
    """Plain diffusers, as a user would call it: from_pretrained in fp16, .to(device), a
    prompt in, PIL images out (its VAE upcast to fp32 for the decode, as the SDXL config
    asks). No compile, no fused projections."""
    import diffusers.utils.logging as dlog
    import torch
    from diffusers import StableDiffusionXLPipeline

    dlog.set_verbosity_error()
    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = dev.startswith("cuda")
    dtype = torch.float16 if cuda else torch.float32
    sync = (lambda: torch.cuda.synchronize()) if cuda else (lambda: None)
    out: dict = {"device": dev, "dtype": str(dtype).removeprefix("torch."), "versions": versions()}

    t0 = time.perf_counter()
    pipe = StableDiffusionXLPipeline.from_pretrained(args.model, torch_dtype=dtype,
                                                     local_files_only=True, add_watermarker=False)
    pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    out["load_s"] = round(time.perf_counter() - t0, 2)
    seed = [0]

    def call(batch: int = 1, **kw):
        seed[0] += 1
        g = torch.Generator(dev).manual_seed(seed[0])
        return pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=args.steps,
                    guidance_scale=args.cfg, width=args.width, height=args.height,
                    num_images_per_prompt=batch, generator=g, **kw).images

    with torch.inference_mode():
        t0 = time.perf_counter()
        call()
        sync()
        out["first_call_s"] = round(time.perf_counter() - t0, 3)
        for _ in range(args.warmup - 1):
            call()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        ts = [_timed(call, sync) for _ in range(args.runs)]
        out["e2e"] = summary(ts)
        if cuda:
            out["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated())

        # One UNet call with classifier-free guidance (batch 2), as the loop makes it.
        h, w = args.height // 8, args.width // 8
        x = torch.randn(2, 4, h, w, device=dev, dtype=dtype)
        t = torch.tensor([500.0, 500.0], device=dev)
        ehs = torch.randn(2, 77, 2048 if pipe.unet.config.cross_attention_dim == 2048 else
                          pipe.unet.config.cross_attention_dim, device=dev, dtype=dtype)
        pooled = pipe.unet.config.projection_class_embeddings_input_dim - \
            6 * pipe.unet.config.addition_time_embed_dim
        ac = {"text_embeds": torch.randn(2, pooled, device=dev, dtype=dtype),
              "time_ids": torch.tensor([[args.height, args.width, 0, 0, args.height, args.width]] * 2,
                                       device=dev, dtype=dtype)}
        step = lambda: pipe.unet(x, t, encoder_hidden_states=ehs, added_cond_kwargs=ac)  # noqa: E731
        step()
        out["unet_step_cfg"] = summary([_timed(step, sync) for _ in range(args.step_reps)])
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc:
            step()
        out["unet_tflop_per_cfg_step"] = round(fc.get_total_flops() / 1e12, 6)

        # The decode as the pipeline does it: upcast to fp32, decode, cast back.
        z = torch.randn(1, 4, h, w, device=dev, dtype=dtype)

        def decode():
            upcast = pipe.vae.dtype == torch.float16 and pipe.vae.config.force_upcast
            if upcast:
                pipe.upcast_vae()
            pipe.vae.decode(z.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor)
            if upcast:
                pipe.vae.to(dtype=torch.float16)

        decode()
        out["vae_decode"] = summary([_timed(decode, sync) for _ in range(args.step_reps // 2 or 1)])

        out["batches"] = {}
        for b in args.batches:
            if b == 1:
                out["batches"]["1"] = {"median_s": out["e2e"]["median_s"],
                                       "images_per_s": round(1 / out["e2e"]["median_s"], 3)}
                continue
            call(b)
            ts = [_timed(lambda b=b: call(b), sync) for _ in range(max(1, args.runs // 2))]
            med = statistics.median(ts)
            out["batches"][str(b)] = {"median_s": round(med, 4), "images_per_s": round(b / med, 3)}
    return out


def cmd_emitcost(args) -> dict:
    """What one progress line costs the worker: encoding it and writing it to a pipe that a
    thread drains, as the bridge does."""
    from .protocol import Progress
    from .spec import STAGE_DENOISING
    from .worker import Output

    r, w = os.pipe()

    def drain():
        with os.fdopen(r, "rb") as f:
            while f.read(65536):
                pass

    th = threading.Thread(target=drain, daemon=True)
    th.start()
    out = Output(os.fdopen(w, "wb", buffering=0))
    n = args.n
    t0 = time.perf_counter()
    for i in range(n):
        out.send(Progress(id="bench", stage=STAGE_DENOISING, step=i % 30, total=30, elapsed_s=1.234))
    dt = (time.perf_counter() - t0) / n
    out._stream.close()
    th.join(timeout=5)
    return {"progress_line_us": round(dt * 1e6, 2), "n": n}


def cmd_fp8check(args) -> dict:
    """What FP8 (ATELIER_FP8, fp8.py) does to a picture: one image on the same seed with the
    UNet in float16, then with its FP8 linears, through the same pipeline (eager), and the
    relative error of the final latents and of the decoded pixels. Where FP8 cannot run,
    the reason, and no figures."""
    import numpy as np
    import torch
    from diffusers import StableDiffusionXLPipeline

    from . import fp8

    dev = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    why = fp8.unsupported(dev)
    if why:
        return {"skipped": why}
    import diffusers.utils.logging as dlog

    dlog.set_verbosity_error()
    pipe = StableDiffusionXLPipeline.from_pretrained(args.model, torch_dtype=torch.float16,
                                                     local_files_only=True, add_watermarker=False)
    pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    pipe.fuse_qkv_projections()  # as the worker runs it

    def run():
        g = torch.Generator(dev).manual_seed(args.seed)
        lat = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=args.steps,
                   guidance_scale=args.cfg, width=args.width, height=args.height, generator=g,
                   output_type="latent").images
        with torch.no_grad():
            vae = pipe.vae
            z = lat.to(torch.float32) / vae.config.scaling_factor
            vae.to(torch.float32)
            img = vae.decode(z).sample
            vae.to(torch.float16)
        px = ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
        return lat.float(), px

    def rel(a, b) -> float:
        return round(float((a - b).norm() / b.norm().clamp_min(1e-12)), 6)

    with torch.inference_mode():
        lat16, px16 = run()
        n = fp8.quantize(pipe.unet)
        lat8, px8 = run()
    d = np.abs(px8.astype(np.int16) - px16.astype(np.int16))
    a, b = px8.astype(np.float64), px16.astype(np.float64)
    mse = float(((a - b) ** 2).mean())
    return {"seed": args.seed, "steps": args.steps, "fp8_linears": n,
            "latents_rel_err": rel(lat8, lat16),
            "pixels_rel_err": round(float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)), 6),
            "pixels_max_abs": int(d.max()), "pixels_mean_abs": round(float(d.mean()), 4),
            "psnr_db": round(10 * math.log10(255.0 ** 2 / mse), 2) if mse > 0 else None,
            "finite": bool(torch.isfinite(lat8).all())}


def image_args(p) -> None:
    """The model and the image the baseline and fp8check make, as `atelier bench` passes them."""
    p.add_argument("--model", required=True)
    p.add_argument("--device", default=None)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--height", type=int, default=1024)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m atelier_worker.bench")
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("model", help="create the random-weight benchmark model")
    m.add_argument("--out", required=True)
    m.add_argument("--preset", choices=("tiny", "full"), default="full")
    m.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float16")
    b = sub.add_parser("baseline", help="time plain diffusers")
    image_args(b)
    b.add_argument("--runs", type=int, default=5)
    b.add_argument("--warmup", type=int, default=2)
    b.add_argument("--step-reps", type=int, default=10)
    b.add_argument("--batches", default="1,2,4")
    e = sub.add_parser("emitcost", help="time one progress line")
    e.add_argument("--n", type=int, default=20000)
    f = sub.add_parser("fp8check", help="FP8's error against float16 on one seed (latents, pixels)")
    image_args(f)
    f.add_argument("--seed", type=int, default=1000)
    args = ap.parse_args(argv)
    if getattr(args, "batches", None) is not None:
        args.batches = [int(x) for x in args.batches.split(",") if x.strip()]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = {"model": cmd_model, "baseline": cmd_baseline, "emitcost": cmd_emitcost,
              "fp8check": cmd_fp8check}[args.cmd](args)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
