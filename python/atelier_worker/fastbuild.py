"""Builds one fast-path artefact, in a process of its own while the worker goes on with jobs:

    python -m atelier_worker.fastbuild --spec SPEC.json

The spec (written by fastpath.Builds) names the UNet's config, whether its QKV projections
are fused, the key (shape, dtype, the architecture's signature) and the folder to create.
The UNet is made with random weights (weights are inputs of the artefact, not part of it;
with FP8 they are quantized as the worker's are),
its CFG call exported and compiled by AOTInductor with the weights left out and the
constants derived from them folded at load time. The folder is built under a temporary
name and renamed into place at the end, so the worker never sees half an artefact.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

from .fastpath import OOM_STATUS


def build(spec: dict) -> str:
    import torch
    from diffusers import UNet2DConditionModel

    from . import fastrun
    from .fastpath import META, PACKAGE, Key

    if not torch.cuda.is_available():
        raise SystemExit("the fast path is built on a CUDA GPU, and this process sees none")
    key = Key(**spec["key"])
    dtype = getattr(torch, key.dtype)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.device("cuda"):
        unet = UNet2DConditionModel(**spec["config"]).eval().to(dtype)
    if spec.get("fused_qkv"):
        unet.fuse_qkv_projections()
    unet.requires_grad_(False)
    if spec.get("fp8"):
        from . import fp8

        fp8.quantize(unet)  # as the worker's UNet is: its float8 weights are the inputs
    sig = fastrun.unet_signature(unet)
    if sig != key.arch:
        raise SystemExit(f"this UNet's architecture ({sig}) is not the worker's ({key.arch}): "
                         "a model with extra layers (LoRA adapters) has no fast path")
    inputs = fastrun.example_inputs(unet, key, "cuda")
    final = spec["out"]
    tmp = f"{final}.build-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    # No attention backend is chosen here: AOTInductor compiles in torch's own choice
    # (cuDNN on an H200) whatever sdpa_kernel context the build runs in (docs/BENCHMARKS.md).
    with torch.no_grad():
        t1 = time.perf_counter()
        ep = torch.export.export(fastrun.Step(unet).eval(), inputs)
        export_s = time.perf_counter() - t1
        cfgs = {"aot_inductor.package_constants_in_so": False,
                "aot_inductor.use_runtime_constant_folding": True}
        if spec.get("max_autotune"):
            cfgs["max_autotune"] = True
        t1 = time.perf_counter()
        torch._inductor.aoti_compile_and_package(ep, package_path=os.path.join(tmp, PACKAGE),
                                                 inductor_configs=cfgs)
        compile_s = time.perf_counter() - t1
    meta = {"key": spec["key"], "format": spec["format"], "export_s": round(export_s, 3),
            "compile_s": round(compile_s, 3), "build_s": round(time.perf_counter() - t0, 3),
            "configs": cfgs, "peak_gpu_bytes": torch.cuda.max_memory_allocated()}
    with open(os.path.join(tmp, META), "w", encoding="utf-8") as f:
        json.dump(meta, f)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    print(json.dumps({"built": final, **meta}), flush=True)
    return final


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m atelier_worker.fastbuild")
    ap.add_argument("--spec", required=True)
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with open(a.spec, encoding="utf-8") as f:
        spec = json.load(f)
    from . import accel

    accel.setup_env()
    try:
        os.nice(10)  # the worker's jobs go first: its plain path is launch-bound on the CPU
    except OSError:
        pass
    try:
        build(spec)
    except Exception as e:  # noqa: BLE001 - only running out of GPU memory is told apart
        import torch

        if not (isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()):
            raise
        # The worker reads the status (fastpath.OOM_STATUS): not tried again until it restarts.
        print(f"fastbuild: out of GPU memory: {str(e).splitlines()[0] if str(e) else e!r}",
              file=sys.stderr, flush=True)
        return OOM_STATUS
    return 0


if __name__ == "__main__":
    sys.exit(main())
