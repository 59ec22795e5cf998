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
import os
import sys
import time

from . import bench_probe_kit
from .bench_probe_kit import (
    build_unet,
    call,
    capture,
    env_info,
    first_call,
    flat,
    make_inputs,
    record,
    rel_err,
    step_module,
    sync,
    time_ms,
    torch_setup,
)
from .bench_probe_preview import preview_experiment

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


def stage_aoti_build(a):
    """torch.export of the CFG UNet call, then an AOTInductor package without its weights."""
    t0 = time.perf_counter()
    torch = torch_setup(a.device)
    import diffusers  # noqa: F401

    record("imports", s=round(time.perf_counter() - t0, 3))
    dtype = torch.float16 if a.device.startswith("cuda") else torch.float32
    unet = build_unet(a.preset, 0, a.device, dtype)
    inp = make_inputs(unet, a.size, a.device, dtype)
    cfgs = {"aot_inductor.package_constants_in_so": not a.weights_out}
    if a.max_autotune:
        cfgs["max_autotune"] = True
    if a.runtime_fold:
        cfgs["aot_inductor.use_runtime_constant_folding"] = True
    if a.on_disk_format:
        # Weights kept beside the .so in the package (not linked into it).
        cfgs["aot_inductor.package_constants_on_disk_format"] = a.on_disk_format
    export_package(step_module(unet), inp, a.package, cfgs, a.device)


def export_package(mod, inp, package: str, cfgs: dict, device: str) -> str:
    """torch.export of mod on inp, then AOTInductor into package, each timed and recorded."""
    import torch

    with torch.no_grad():
        t0 = time.perf_counter()
        ep = torch.export.export(mod, flat(inp))
        record("export", s=round(time.perf_counter() - t0, 3))
        t0 = time.perf_counter()
        path = torch._inductor.aoti_compile_and_package(ep, package_path=package, inductor_configs=cfgs)
        peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0
        record("aoti_compile_and_package", s=round(time.perf_counter() - t0, 3), configs=cfgs,
               bytes=os.path.getsize(path), path=path, peak_gpu_gib=round(peak / 2**30, 2))
    return path


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

    from .fastrun import tensors

    t0 = time.perf_counter()
    # The loader compares the package's CPU vector ISA with this machine's, which it finds
    # by compiling test programs (seconds); a CUDA package has no CPU kernels to match.
    with icfg.patch({"cpp.vec_isa_ok": False} if a.skip_isa else {}):
        if a.loader == "package":
            from torch._inductor.package import load_package

            compiled = load_package(a.package, run_single_threaded=bool(a.single_threaded),
                                    device_index=a.device_index)
        else:
            compiled = torch._inductor.aoti_load_package(a.package, run_single_threaded=bool(a.single_threaded),
                                                         device_index=a.device_index)
    t_load = time.perf_counter() - t0
    record("package_loaded", s=round(t_load, 3))
    fqns = compiled.get_constant_fqns()
    state = tensors(mod)
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
            graph, gy, t_cap = capture(compiled, flat(inp))
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


def stage_fast_build(a):
    """The product's fast-path build for the bench model's UNet, before a bench: its config
    on the meta device (no weights, no GPU memory), fused QKV as the worker has it, the CFG
    call at --size, 77 tokens, fp16, through fastpath.Builds into --fast-dir, as the worker
    starts it. Then `atelier bench --fast-dir` times jobs that find it."""
    import torch
    from diffusers import UNet2DConditionModel

    from . import fastpath, fastrun, tiny

    t0 = time.perf_counter()
    cfg = tiny.configs(a.preset, 49408, 49406, 49407)["unet"]
    # FP8's signature has the float8 weights' names and dtypes, and quantizing needs values.
    with torch.device("cuda" if a.fp8 else "meta"):
        unet = UNet2DConditionModel(**cfg).to(torch.float16)
    unet.fuse_qkv_projections()
    if a.fp8:
        from . import fp8

        record("fp8_quantized", linears=fp8.quantize(unet))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    fast = fastrun.FastUNets(a.device, "", fastpath.Builds(fastpath.Store(a.fast_dir)), gpu=gpu,
                             max_autotune=bool(a.max_autotune))
    key = fast.key(unet, 2, a.size, a.size, 77, torch.float16)
    record("fast_build_started", key=key.name(), state=fast.builds.request(key, fast._spec(unet, key)))
    fast.builds.wait(a.duration)
    record("fast_build", key=key.name(), state=fast.builds.state(key), failed=fast.builds.reason(key),
           s=round(time.perf_counter() - t0, 3))


def stage_fp8_aoti(a):
    """torchao's float8 (dynamic activations, --fp8-granularity) on the transformer blocks'
    linears, exported and compiled by AOTInductor with the weights out as the fast path
    builds, in one process: eager and artefact step times against the fp16 ones, and the
    error against the fp16 UNet on the same inputs."""
    t0 = time.perf_counter()
    torch = torch_setup(a.device)
    import diffusers  # noqa: F401
    import torch._inductor.config as icfg
    import torchao

    from . import fp8
    from .fastrun import tensors

    record("imports", s=round(time.perf_counter() - t0, 3), torchao=torchao.__version__,
           versions=env_info(a.device))
    perrow = a.fp8_granularity == "perrow"
    dtype = torch.bfloat16 if perrow else torch.float16  # torchao's row-wise scales want bf16
    unet = build_unet(a.preset, 0, a.device, dtype)
    inp = make_inputs(unet, a.size, a.device, dtype)
    with torch.inference_mode():
        ref = call(unet, inp).clone()
        record("plain_step", dtype=str(dtype), **time_ms(lambda: call(unet, inp), a.device, reps=a.reps))
    if a.ref_package:
        try:
            with icfg.patch({"cpp.vec_isa_ok": False}):
                pk = torch._inductor.aoti_load_package(a.ref_package)
            st = tensors(step_module(unet))
            pk.load_constants({f: st[f] for f in pk.get_constant_fqns() if f in st},
                              check_full_update=False, user_managed=True)
            with torch.inference_mode():
                y = pk(*flat(inp))
                record("plain_artefact_step", rel_err=rel_err(y, ref),
                       **time_ms(lambda: pk(*flat(inp)), a.device, reps=a.reps * 2))
            del pk
        except Exception as e:  # noqa: BLE001 - a probe records what failed
            record("plain_artefact_step", error=repr(e)[:400])
    t0 = time.perf_counter()
    n = fp8.quantize(unet, row_wise=perrow)
    record("quantized", s=round(time.perf_counter() - t0, 3), granularity=a.fp8_granularity, linears=n)
    with torch.inference_mode():
        y = call(unet, inp)
        eager8 = y.clone()
        record("fp8_eager_step", rel_err_vs_plain=rel_err(y, ref),
               **time_ms(lambda: call(unet, inp), a.device, reps=a.reps))
    mod = step_module(unet)
    cfgs = {"aot_inductor.package_constants_in_so": False,
            "aot_inductor.use_runtime_constant_folding": True}
    if a.max_autotune:
        cfgs["max_autotune"] = True
    try:
        # --reuse-package: one built before (the product's builder) is loaded and timed only.
        path = a.package if a.reuse_package and os.path.exists(a.package) else \
            export_package(mod, inp, a.package, cfgs, a.device)
        with icfg.patch({"cpp.vec_isa_ok": False}):
            pk = torch._inductor.aoti_load_package(path)
        st = tensors(mod)
        fqns = pk.get_constant_fqns()
        folded = [f for f in fqns if f.startswith("_FOLDED_CONST")]
        missing = [f for f in fqns if f not in st and f not in folded]
        record("constants", n=len(fqns), n_folded=len(folded), n_missing=len(missing), missing=missing[:5],
               sample=[f for f in fqns if "parametrizations" in f][:3])
        pk.load_constants({f: st[f] for f in fqns if f in st}, check_full_update=False, user_managed=True)
        with torch.inference_mode():
            t_first, y = first_call(lambda: pk(*flat(inp)), a.device)
            # The worker checks an artefact against its own eager UNet (fastrun.CHECK_TOLERANCE).
            record("fp8_artefact_step", first_call_s=t_first, rel_err_vs_plain=rel_err(y, ref),
                   rel_err_vs_fp8_eager=rel_err(y, eager8),
                   **time_ms(lambda: pk(*flat(inp)), a.device, reps=a.reps * 2))
            graph, gy, _ = capture(pk, flat(inp))
            graph.replay()
            sync(a.device)
            record("fp8_artefact_cudagraph", rel_err_vs_plain=rel_err(gy, ref),
                   **time_ms(graph.replay, a.device, reps=a.reps * 2))
    except Exception as e:  # noqa: BLE001 - a probe records what failed
        import traceback

        record("fp8_aoti_failed", error=repr(e)[:600], tb=traceback.format_exc()[-1500:])


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
    ap = argparse.ArgumentParser(prog="python -m atelier_worker.bench_probe")
    ap.add_argument("stage", choices=("main", "aoti_build", "aoti_load", "mega_load", "contention",
                                      "fast_build", "fp8_aoti"))
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
    ap.add_argument("--reuse-package", type=int, default=0, help="fp8_aoti: load --package if it exists")
    ap.add_argument("--runtime-fold", type=int, default=1)
    ap.add_argument("--user-managed", type=int, default=0)
    ap.add_argument("--skip-isa", type=int, default=1)
    ap.add_argument("--on-disk-format", default="", help="aot_inductor.package_constants_on_disk_format")
    ap.add_argument("--loader", default="aoti", choices=("aoti", "package"))
    ap.add_argument("--single-threaded", type=int, default=0)
    ap.add_argument("--device-index", type=int, default=-1)
    ap.add_argument("--skip-sdpa", action="store_true")
    ap.add_argument("--skip-preview", action="store_true")
    ap.add_argument("--preview-models", default="eager,compiled,regional")
    ap.add_argument("--duration", type=float, default=60, help="contention: how long; fast_build: the longest wait")
    ap.add_argument("--fast-dir", default="fast", help="fast_build: the artefact store")
    ap.add_argument("--fp8", type=int, default=0, help="fast_build: the artefact of the FP8 UNet")
    ap.add_argument("--fp8-granularity", default="pertensor", choices=("pertensor", "perrow"))
    ap.add_argument("--ref-package", default="", help="fp8_aoti: the fp16 artefact to time beside it")
    a = ap.parse_args(argv)
    if a.compile_mode == "default":
        a.compile_mode = None
    bench_probe_kit._OUT = a.out
    bench_probe_kit._STAGE = a.stage + (f":{a.label}" if a.label else "")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    {"main": stage_main, "aoti_build": stage_aoti_build, "aoti_load": stage_aoti_load,
     "mega_load": stage_mega_load, "contention": stage_contention, "fast_build": stage_fast_build,
     "fp8_aoti": stage_fp8_aoti}[a.stage](a)
    record("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
