"""bench_probe's preview stage: what previews every N steps cost in the pipeline's own loop,
with the worker's previewer and with one that never waits in the step loop."""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
import warnings

from .bench_probe_kit import record, sync


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
