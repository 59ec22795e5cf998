"""GPU probes behind the H200 section of docs/BENCHMARKS.md: the SDXL UNet alone (the
bench's `full` preset, random weights, fp16, fused QKV, CFG batch 2), timed in ways the
end-to-end bench cannot: compile modes, persisted artefacts loaded in a fresh process,
AOTInductor packages without their weights, the preview path, attention backends.

    python -m atelier_worker.bench_probe STAGE --out results.jsonl [--preset full --size 1024]

Each stage appends one JSON object per measurement to --out, so a stage cut short still
leaves what it measured. Stages that load an artefact run in a process of their own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import warnings

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
    import torch

    class Step(torch.nn.Module):
        """One CFG UNet call with flat tensor inputs: what torch.export and AOTInductor take."""

        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, sample, timestep, ehs, text_embeds, time_ids):
            return self.unet(sample, timestep, encoder_hidden_states=ehs,
                             added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids},
                             return_dict=False)[0]

    return Step(unet).eval()


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


# --- stages ---------------------------------------------------------------------------


def stage_main(a):
    """Eager, attention backends, full compile with CUDA graphs, its cache artefacts, and the
    preview path on the eager and the compiled UNet."""
    t0 = time.perf_counter()
    torch = torch_setup(a.device)
    import diffusers  # noqa: F401

    record("imports", s=round(time.perf_counter() - t0, 3), versions=env_info(a.device))
    dtype = torch.float16 if a.device.startswith("cuda") else torch.float32
    t0 = time.perf_counter()
    unet = build_unet(a.preset, 0, a.device, dtype)
    sync(a.device)
    record("build_unet", s=round(time.perf_counter() - t0, 3),
           params_m=round(sum(p.numel() for p in unet.parameters()) / 1e6, 1))
    inp = make_inputs(unet, a.size, a.device, dtype)
    with torch.inference_mode():
        t, ref = first_call(lambda: call(unet, inp), a.device)
        record("eager_first_call", s=t)
        record("eager_step", **time_ms(lambda: call(unet, inp), a.device, reps=a.reps))

        if a.device.startswith("cuda") and not a.skip_sdpa:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            for name, b in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                            ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
                try:
                    with sdpa_kernel([b]):
                        y = call(unet, inp)
                        r = time_ms(lambda: call(unet, inp), a.device, reps=a.reps)
                    record("eager_step_sdpa", backend=name, rel_err_vs_auto=rel_err(y, ref), **r)
                except Exception as e:  # noqa: BLE001 - a backend that refuses is a result
                    record("eager_step_sdpa", backend=name, error=repr(e)[:300])

        compiled = None
        if a.compile_mode != "none":
            import torch._dynamo

            torch._dynamo.config.cache_size_limit = 16
            compiled = torch.compile(unet, fullgraph=True, mode=a.compile_mode)
            t, y = first_call(lambda: call(compiled, inp), a.device)
            t2, _ = first_call(lambda: call(compiled, inp), a.device)
            t3, _ = first_call(lambda: call(compiled, inp), a.device)
            record("compile_first_calls", mode=a.compile_mode, first_s=t, second_s=t2, third_s=t3,
                   rel_err_vs_eager=rel_err(y, ref))
            record("compiled_step", mode=a.compile_mode, **time_ms(lambda: call(compiled, inp), a.device,
                                                                    reps=a.reps * 2))
            if a.save_artifacts:
                t0 = time.perf_counter()
                got = torch.compiler.save_cache_artifacts()
                s = round(time.perf_counter() - t0, 3)
                if got is None:
                    record("save_cache_artifacts", s=s, error="nothing to save")
                else:
                    blob, info = got
                    with open(a.save_artifacts, "wb") as f:
                        f.write(blob)
                    record("save_cache_artifacts", s=s, bytes=len(blob), info=str(info)[:500])

    if not a.skip_preview:
        preview_experiment(a, torch, unet, compiled, dtype)


class NoSyncPreviewer:
    """The preview with nothing in the step loop that waits: latent->RGB on the GPU into a
    buffer of its own, the copy to pinned memory on a side stream after an event, and a
    long-lived thread that waits for the copy and writes the PNG."""

    def __init__(self, write):
        import queue

        self._write = write
        self._q: queue.Queue = queue.Queue()
        self._busy = threading.Event()
        self._stream = None
        self._pinned = {}
        self._m = None
        self._th = threading.Thread(target=self._run, daemon=True)
        self._th.start()

    def _run(self):
        from PIL import Image

        while True:
            item = self._q.get()
            if item is None:
                return
            done, host, cb = item
            if done is not None:
                done.synchronize()
            self._write(Image.fromarray(host.numpy(), "RGB"))
            if cb is not None:
                cb()
            self._busy.clear()

    def submit(self, latents, on_written=None) -> bool:
        import torch

        if self._busy.is_set():
            return False
        self._busy.set()
        dev = latents.device
        if self._m is None:
            from .engine.preview import _LATENT_RGB, _LATENT_RGB_BIAS

            self._m = (torch.tensor(_LATENT_RGB, dtype=torch.float32).to(dev),
                       torch.tensor(_LATENT_RGB_BIAS, dtype=torch.float32).to(dev))
            if latents.is_cuda:
                self._stream = torch.cuda.Stream(dev)
        m, b = self._m
        with torch.no_grad():
            rgb = torch.einsum("chw,cr->hwr", latents.float(), m) + b
            rgb = ((rgb + 1) * 127.5).clamp_(0, 255).to(torch.uint8)
        done = None
        if latents.is_cuda:
            key = tuple(rgb.shape)
            host = self._pinned.get(key)
            if host is None:
                host = self._pinned[key] = torch.empty(key, dtype=torch.uint8, pin_memory=True)
            ready = torch.cuda.Event()
            ready.record()
            with torch.cuda.stream(self._stream):
                self._stream.wait_event(ready)
                host.copy_(rgb, non_blocking=True)
                rgb.record_stream(self._stream)
                done = torch.cuda.Event()
                done.record(self._stream)
        else:
            host = rgb
        self._q.put((done, host, on_written))
        return True

    def wait(self):
        while self._busy.is_set():
            time.sleep(0.001)

    def close(self):
        self._q.put(None)
        self._th.join()


def preview_experiment(a, torch, unet, compiled, dtype):
    """The pipeline's own loop (diffusers' SDXL pipeline, 30 Euler steps, CFG) with a progress
    line per step, and no previews / the worker's Previewer / the no-sync one, every 5 steps."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from . import png, tiny
    from .engine import preview

    sched_cfg = dict(tiny._SDXL_SCHEDULER)
    import tempfile

    out_dir = tempfile.mkdtemp(prefix="atelier-probe-previews-")

    r, w = os.pipe()

    def drain():
        with os.fdopen(r, "rb") as f:
            while f.read(65536):
                pass

    threading.Thread(target=drain, daemon=True).start()
    wf = os.fdopen(w, "wb", buffering=0)
    lock = threading.Lock()

    def emit(obj):
        data = (json.dumps(obj) + "\n").encode()
        with lock:
            wf.write(data)
            wf.flush()

    def write_png(im, path):
        import numpy as np

        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(png.encode_png(np.asarray(im)))
        os.replace(tmp, path)

    h = a.size
    g = torch.Generator("cpu").manual_seed(7)
    cross = unet.config.cross_attention_dim
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    pe = (torch.randn(1, 77, cross, generator=g) * 0.5).to(a.device, dtype)
    npe = (torch.randn(1, 77, cross, generator=g) * 0.5).to(a.device, dtype)
    ppe = (torch.randn(1, pooled, generator=g) * 0.5).to(a.device, dtype)
    nppe = (torch.randn(1, pooled, generator=g) * 0.5).to(a.device, dtype)
    noise = torch.randn(1, 4, h // 8, h // 8, generator=g).to(a.device, dtype)
    every = 5

    def run(model, variant: str, debug_sync: bool = False):
        pipe = StableDiffusionXLPipeline(vae=None, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                         tokenizer_2=None, unet=unet,
                                         scheduler=EulerDiscreteScheduler.from_config(sched_cfg))
        pipe.unet = model  # as the worker installs a compiled UNet
        pipe.set_progress_bar_config(disable=True)
        previewer = tap = None
        path = os.path.join(out_dir, f"{variant}.png")
        written = [0]
        if variant == "worker":
            previewer = preview.Previewer(lambda im: write_png(im, path))
        elif variant == "nosync":
            previewer = NoSyncPreviewer(lambda im: write_png(im, path))
        if previewer is not None:
            tap = preview.X0Tap(pipe.scheduler)
        t0 = time.perf_counter()

        def cb(_p, i, _t, kw):
            step = i + 1
            emit({"type": "progress", "id": "probe", "stage": "denoising", "step": step, "total": a.steps,
                  "elapsed_s": round(time.perf_counter() - t0, 4)})
            if previewer is not None and step % every == 0 and step < a.steps:
                x0 = tap.x0 if tap.x0 is not None else kw["latents"]

                def done(s=step):
                    written[0] += 1
                    emit({"type": "preview", "id": "probe", "step": s, "path": path})

                previewer.submit(x0[0], done)
            return {}

        syncs = []
        with torch.inference_mode():
            sync(a.device)
            t0 = time.perf_counter()
            if debug_sync:
                torch.cuda.set_sync_debug_mode("warn")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                lat = pipe(prompt_embeds=pe, negative_prompt_embeds=npe, pooled_prompt_embeds=ppe,
                           negative_pooled_prompt_embeds=nppe, num_inference_steps=a.steps, guidance_scale=5.0,
                           width=h, height=h, latents=noise.clone(), output_type="latent",
                           callback_on_step_end=cb, callback_on_step_end_tensor_inputs=["latents"]).images
                sync(a.device)
            dt = time.perf_counter() - t0
            if debug_sync:
                torch.cuda.set_sync_debug_mode(0)
                syncs = [str(c.message)[:160] for c in caught if "synchroniz" in str(c.message)]
        if previewer is not None:
            previewer.wait()
            if isinstance(previewer, NoSyncPreviewer):
                previewer.close()
        return dt, written[0], syncs, lat

    names = [m for m in a.preview_models.split(",") if m]
    variants = ("none", "worker", "nosync")
    for mname in names:
        if mname == "compiled":
            if compiled is None:
                continue
            model = compiled
        elif mname == "regional":
            # In place, so after the others: the default CUDA path of the worker today.
            unet.compile_repeated_blocks(fullgraph=True)
            model = unet
        else:
            model = unet
        t0 = time.perf_counter()
        for v in variants:  # warm-up, and where the syncs are
            run(model, v)
            if v == "none":
                record("preview_model_ready", model=mname, first_run_s=round(time.perf_counter() - t0, 3))
            if a.device.startswith("cuda"):
                _, n, syncs, _ = run(model, v, debug_sync=True)
                counts: dict = {}
                for s in syncs:
                    counts[s] = counts.get(s, 0) + 1
                record("preview_syncs", model=mname, variant=v, previews=n, n_syncs=len(syncs),
                       kinds=counts)
        ts: dict = {v: [] for v in variants}
        for _ in range(a.preview_reps):
            for v in variants:
                dt, n, _, _ = run(model, v)
                ts[v].append(dt)
        base = statistics.median(ts["none"])
        for v in variants:
            med = statistics.median(ts[v])
            record("preview_cost", model=mname, variant=v, every=every, steps=a.steps,
                   median_s=round(med, 4), min_s=round(min(ts[v]), 4), max_s=round(max(ts[v]), 4),
                   cost_pct=round(100 * (med - base) / base, 2), runs=len(ts[v]))


def stage_aoti_build(a):
    """torch.export of the CFG UNet call, then an AOTInductor package without its weights."""
    t0 = time.perf_counter()
    torch = torch_setup(a.device)
    import diffusers  # noqa: F401

    record("imports", s=round(time.perf_counter() - t0, 3))
    dtype = torch.float16 if a.device.startswith("cuda") else torch.float32
    unet = build_unet(a.preset, 0, a.device, dtype)
    inp = make_inputs(unet, a.size, a.device, dtype)
    mod = step_module(unet)
    with torch.no_grad():
        t0 = time.perf_counter()
        ep = torch.export.export(mod, flat(inp))
        record("export", s=round(time.perf_counter() - t0, 3))
        cfgs = {"aot_inductor.package_constants_in_so": not a.weights_out}
        if a.max_autotune:
            cfgs["max_autotune"] = True
        if a.runtime_fold:
            cfgs["aot_inductor.use_runtime_constant_folding"] = True
        t0 = time.perf_counter()
        path = torch._inductor.aoti_compile_and_package(ep, package_path=a.package, inductor_configs=cfgs)
        peak = torch.cuda.max_memory_allocated() if a.device.startswith("cuda") else 0
        record("aoti_compile_and_package", s=round(time.perf_counter() - t0, 3), configs=cfgs,
               bytes=os.path.getsize(path), path=path, peak_gpu_gib=round(peak / 2**30, 2))


def stage_aoti_load(a):
    """A fresh process: the package loaded, then the weights of a *different* model (another
    seed) handed in, so one artefact serves every checkpoint of the architecture."""
    t0 = time.perf_counter()
    torch = torch_setup(a.device)
    import diffusers  # noqa: F401

    record("imports", s=round(time.perf_counter() - t0, 3))
    dtype = torch.float16 if a.device.startswith("cuda") else torch.float32
    t_start = time.perf_counter()
    t0 = time.perf_counter()
    unet = build_unet(a.preset, 1, a.device, dtype)
    sync(a.device)
    record("build_unet_seed1", s=round(time.perf_counter() - t0, 3))
    inp = make_inputs(unet, a.size, a.device, dtype)
    mod = step_module(unet)
    record("loading_package")
    import torch._inductor.config as icfg

    t0 = time.perf_counter()
    # The loader compares the package's CPU vector ISA with this machine's, which it finds
    # by compiling test programs (seconds); a CUDA package has no CPU kernels to match.
    with icfg.patch({"cpp.vec_isa_ok": False} if a.skip_isa else {}):
        compiled = torch._inductor.aoti_load_package(a.package)
    t_load = time.perf_counter() - t0
    record("package_loaded", s=round(t_load, 3))
    fqns = compiled.get_constant_fqns()
    state = dict(mod.named_parameters())
    state.update(dict(mod.named_buffers()))
    # With runtime constant folding the package also lists the constants it folds from the
    # weights (_FOLDED_CONST_*): it recomputes those itself after each load_constants.
    folded = [f for f in fqns if f.startswith("_FOLDED_CONST")]
    missing = [f for f in fqns if f not in state and f not in folded]
    record("constants", n=len(fqns), n_folded=len(folded), missing=missing[:10],
           devices=sorted({str(state[f].device) for f in fqns if f in state}))
    t0 = time.perf_counter()
    if a.weights_out:
        compiled.load_constants({f: state[f] for f in fqns if f in state}, check_full_update=False,
                                user_managed=bool(a.user_managed))
    t_const = time.perf_counter() - t0
    record("constants_loaded", s=round(t_const, 3), user_managed=bool(a.user_managed))
    with torch.inference_mode():
        t_first, y = first_call(lambda: compiled(*flat(inp)), a.device)
        record("first_call_done", s=t_first)
        record("aoti_load", load_package_s=round(t_load, 3), load_constants_s=round(t_const, 3),
               first_call_s=t_first, n_constants=len(fqns), n_folded=len(folded), missing=missing[:10],
               n_missing=len(missing),
               since_weights_s=round(time.perf_counter() - t_start, 3))
        ref = call(unet, inp)
        record("aoti_vs_eager_other_weights", rel_err=rel_err(y, ref))
        record("aoti_step", **time_ms(lambda: compiled(*flat(inp)), a.device, reps=a.reps * 2))
        if a.device.startswith("cuda"):
            record("capturing")
            static = flat(inp)
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):
                    compiled(*static)
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            t0 = time.perf_counter()
            with torch.cuda.graph(graph):
                gy = compiled(*static)
            t_cap = time.perf_counter() - t0
            graph.replay()
            sync(a.device)
            record("aoti_cudagraph", capture_s=round(t_cap, 3), rel_err_vs_eager=rel_err(gy, ref),
                   **time_ms(graph.replay, a.device, reps=a.reps * 2))
            # A fused LoRA changes weights in place: the package reads the same storage.
            w = unet.conv_in.weight
            w.mul_(1.05)
            ref2 = call(unet, inp)
            graph.replay()
            record("aoti_after_inplace_weight_change", rel_err_graph=rel_err(gy, ref2),
                   rel_err_plain=rel_err(compiled(*flat(inp)), ref2), changed_by=rel_err(ref2, ref))
            # Handing the (changed) weights in again: what a LoRA fuse or a model switch does.
            record("reloading", user_managed=not a.user_managed)
            t0 = time.perf_counter()
            compiled.load_constants({f: state[f] for f in fqns if f in state}, check_full_update=False,
                                    user_managed=not a.user_managed)
            t_re = time.perf_counter() - t0
            t_first2, y2 = first_call(lambda: compiled(*flat(inp)), a.device)
            graph.replay()
            sync(a.device)
            record("aoti_after_reload_constants", load_constants_s=round(t_re, 3), first_call_s=t_first2,
                   rel_err_plain=rel_err(y2, ref2), rel_err_graph=rel_err(gy, ref2))


def stage_mega_load(a):
    """A fresh process with an empty inductor cache: the saved cache artefacts loaded, then
    the same torch.compile. How long until the first step?"""
    t0 = time.perf_counter()
    torch = torch_setup(a.device)
    import diffusers  # noqa: F401
    import torch._dynamo as dynamo

    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR", "")
    record("imports", s=round(time.perf_counter() - t0, 3), cache_dir=cache,
           cache_dir_existed=bool(cache) and os.path.isdir(cache))
    dynamo.config.cache_size_limit = 16
    dtype = torch.float16 if a.device.startswith("cuda") else torch.float32
    t_start = time.perf_counter()
    unet = build_unet(a.preset, 1, a.device, dtype)
    sync(a.device)
    record("build_unet_seed1", s=round(time.perf_counter() - t_start, 3))
    inp = make_inputs(unet, a.size, a.device, dtype)
    t_art = 0.0
    info = None
    if a.load_artifacts:
        t0 = time.perf_counter()
        with open(a.load_artifacts, "rb") as f:
            info = torch.compiler.load_cache_artifacts(f.read())
        t_art = time.perf_counter() - t0
    compiled = torch.compile(unet, fullgraph=True, mode=a.compile_mode)
    with torch.inference_mode():
        t1, y = first_call(lambda: call(compiled, inp), a.device)
        t2, _ = first_call(lambda: call(compiled, inp), a.device)
        t3, _ = first_call(lambda: call(compiled, inp), a.device)
        ref = call(unet, inp)
        record("warm_compile", artifacts=bool(a.load_artifacts), load_artifacts_s=round(t_art, 3),
               first_s=t1, second_s=t2, third_s=t3, since_weights_s=round(time.perf_counter() - t_start, 3),
               rel_err_vs_eager=rel_err(y, ref), info=str(info)[:300])
        record("warm_compiled_step", **time_ms(lambda: call(compiled, inp), a.device, reps=a.reps * 2))


def stage_contention(a):
    """Eager step time while another process builds (the background build's price)."""
    torch = torch_setup(a.device)
    dtype = torch.float16
    unet = build_unet(a.preset, 0, a.device, dtype)
    inp = make_inputs(unet, a.size, a.device, dtype)
    with torch.inference_mode():
        deadline = time.perf_counter() + a.duration
        while time.perf_counter() < deadline:
            record("eager_step_during", **time_ms(lambda: call(unet, inp), a.device, reps=a.reps, warm=1))


def main(argv=None) -> int:
    global _OUT, _STAGE
    ap = argparse.ArgumentParser(prog="python -m atelier_worker.bench_probe")
    ap.add_argument("stage", choices=("main", "aoti_build", "aoti_load", "mega_load", "contention"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--label", default="")
    ap.add_argument("--preset", default="full")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--preview-reps", type=int, default=5)
    ap.add_argument("--compile-mode", default="reduce-overhead")
    ap.add_argument("--save-artifacts", default="")
    ap.add_argument("--load-artifacts", default="")
    ap.add_argument("--package", default="unet.pt2")
    ap.add_argument("--weights-out", type=int, default=1)
    ap.add_argument("--max-autotune", type=int, default=0)
    ap.add_argument("--runtime-fold", type=int, default=1)
    ap.add_argument("--user-managed", type=int, default=0)
    ap.add_argument("--skip-isa", type=int, default=1)
    ap.add_argument("--skip-sdpa", action="store_true")
    ap.add_argument("--skip-preview", action="store_true")
    ap.add_argument("--preview-models", default="eager,compiled,regional")
    ap.add_argument("--duration", type=float, default=60)
    a = ap.parse_args(argv)
    if a.compile_mode == "default":
        a.compile_mode = None
    _OUT, _STAGE = a.out, a.stage + (f":{a.label}" if a.label else "")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    {"main": stage_main, "aoti_build": stage_aoti_build, "aoti_load": stage_aoti_load,
     "mega_load": stage_mega_load, "contention": stage_contention}[a.stage](a)
    record("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
