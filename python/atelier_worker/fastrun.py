"""The fast path in the worker: for each job, whether its UNet calls can run on a built
artefact (fastpath.py), starting a background build where none exists yet, and the loaded
artefact itself: an AOTInductor package given the model's own weights (no copy), replayed
from a CUDA graph, behind the UNet's forward for calls of exactly its shape.

A job never waits for a build: it runs on the plain path while the artefact for its shape
is built by another process, and the next job of that shape (between jobs) loads it, in
about a second. A build starts only where the GPU's free memory holds it beside the running
jobs (fastpath.room); else, and where a build ran out of memory, jobs stay on the plain path
and the state's note says why, once.
"""

from __future__ import annotations

import logging
import os
import time

import torch

from . import fastpath, fp8
from .fastpath import ABSENT, BUILDING, FAILED_STATE, READY, Key

log = logging.getLogger("atelier.fastrun")

# The artefact's output and eager's may differ by fp16 rounding (about 2e-3 measured);
# past this the artefact is not used.
CHECK_TOLERANCE = 2e-2
# ATELIER_FAST_CUDA_GRAPH=0 calls the package directly instead of replaying a CUDA graph.
CUDA_GRAPH = os.environ.get("ATELIER_FAST_CUDA_GRAPH", "1").strip() not in ("0", "off", "false", "no")


class Step(torch.nn.Module):
    """One CFG UNet call with flat tensor inputs: what torch.export and AOTInductor take.
    Its parameters are named unet.<name>, as load_constants is given them."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, ehs, text_embeds, time_ids):
        return self.unet(sample, timestep, encoder_hidden_states=ehs,
                         added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids},
                         return_dict=False)[0]


def tensors(mod) -> dict:
    """A module's parameters and buffers by name: the constants an artefact built without
    its weights takes (of Step(unet): named unet.<name>)."""
    return dict(list(mod.named_parameters()) + list(mod.named_buffers()))


def unet_signature(unet) -> str:
    return fastpath.signature(list(unet.named_parameters()) + list(unet.named_buffers()))


def example_inputs(unet, key: Key, device, generator=None):
    """Random inputs of the key's shapes, as the SDXL pipeline passes them."""
    dtype = getattr(torch, key.dtype)
    cfg = unet.config
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    h, w, b = key.height // 8, key.width // 8, key.batch

    def rnd(*shape):
        return torch.randn(*shape, device=device, dtype=dtype, generator=generator)

    return (rnd(b, cfg.in_channels, h, w), torch.tensor(500.0, device=device),
            rnd(b, key.seq, cfg.cross_attention_dim) * 0.5, rnd(b, pooled) * 0.5,
            torch.tensor([[key.height, key.width, 0, 0, key.height, key.width]] * b,
                         device=device, dtype=dtype))


def load_package(path: str):
    """The AOTInductor package at path, loaded for CUDA-graph capture (single-threaded).
    The loader would first find this machine's CPU vector ISA to match the package's CPU
    kernels, by compiling a test program for each ISA: about 30 s on the H200's machine,
    every time a worker starts (docs/BENCHMARKS.md). The package has no CPU kernels, so the
    check is skipped for the load."""
    import torch._inductor.config as icfg

    with icfg.patch({"cpp.vec_isa_ok": False}):
        return torch._inductor.aoti_load_package(path, run_single_threaded=True)


class Loaded:
    """An artefact loaded for one UNet: the package, the UNet's weights handed in (the
    package reads them in place), and a CUDA graph of the call over static inputs."""

    def __init__(self, path: str, unet, key: Key, device, checked: bool = False):
        t0 = time.perf_counter()
        self.key = key
        self.phases: dict[str, float] = {}  # seconds of each part of the load, for the log
        self.runner = load_package(path)
        self._lap("package", t0)
        state = tensors(Step(unet))
        fqns = self.runner.get_constant_fqns()
        missing = [f for f in fqns if f not in state and not f.startswith("_FOLDED_CONST")]
        if missing:
            raise RuntimeError(f"the artefact names weights this model lacks: {missing[:3]}")
        self.runner.load_constants({f: state[f] for f in fqns if f in state},
                                   check_full_update=False, user_managed=True)
        self._lap("weights", t0)
        g = torch.Generator(device).manual_seed(0)
        self.static = example_inputs(unet, key, device, g)
        with torch.inference_mode():
            # The first call folds the constants derived from the weights; then, the first
            # time this artefact is used (checked: the store says a worker did it before),
            # a check against the plain UNet on the same inputs, before any job relies on
            # it. The plain UNet's first call costs about 2 s on an H200 (cuDNN's autotuning).
            y = self.runner(*self.static)
            self._lap("first call", t0, device)
            if not bool(torch.isfinite(y).all()):
                raise RuntimeError("the artefact's output is not finite")
            self.check_err: float | None = None
            if not checked:
                ref = Step(unet)(*self.static)
                self._lap("check", t0, device)
                err = float((y.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12))
                if not err < CHECK_TOLERANCE:
                    raise RuntimeError(f"the artefact's output differs from the model's by {err:.3g}")
                self.check_err = err
            self.graph = self._capture(device) if CUDA_GRAPH else None
            if self.graph is not None:
                self.graph.replay()
                gerr = float((self.out.float() - y.float()).norm() / y.float().norm().clamp_min(1e-12))
                if not gerr < CHECK_TOLERANCE:
                    log.warning("fast path: the CUDA graph's output differs by %.3g: not used", gerr)
                    self.graph = None
        self._lap("graph", t0, device)
        self.load_s = time.perf_counter() - t0
        log.info("fast path for %s loaded in %.2fs (%s; %s, CUDA graph %s)", key.size(),
                 self.load_s, ", ".join(f"{k} {v:.2f}s" for k, v in self.phases.items()),
                 "checked before" if self.check_err is None else f"error {self.check_err:.1e}",
                 "yes" if self.graph is not None else "no")

    def _lap(self, name: str, t0: float, device=None) -> None:
        if device is not None:
            torch.cuda.synchronize(device)
        self.phases[name] = time.perf_counter() - t0 - sum(self.phases.values())

    def _capture(self, device):
        """A CUDA graph of the call, or None where capturing fails (the package then runs
        directly: its C++ launches are cheap, the graph saves the rest)."""
        try:
            s = torch.cuda.Stream(device)
            s.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(s):
                for _ in range(2):
                    self.runner(*self.static)
            torch.cuda.current_stream(device).wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.out = self.runner(*self.static)
            return graph
        except Exception as e:  # noqa: BLE001 - the direct call still works
            log.warning("fast path: no CUDA graph (%s); calling the package directly", e)
            torch.cuda.synchronize(device)
            return None

    def matches(self, sample, ehs, text_embeds, time_ids) -> bool:
        s = self.static
        return all(isinstance(x, torch.Tensor) and x.shape == y.shape and x.dtype == y.dtype
                   and x.device == y.device
                   for x, y in ((sample, s[0]), (ehs, s[2]), (text_embeds, s[3]), (time_ids, s[4])))

    def __call__(self, sample, timestep, ehs, text_embeds, time_ids):
        s = self.static
        s[0].copy_(sample)
        if isinstance(timestep, torch.Tensor):
            s[1].copy_(timestep.reshape(()))
        else:
            s[1].fill_(float(timestep))
        s[2].copy_(ehs)
        s[3].copy_(text_embeds)
        s[4].copy_(time_ids)
        if self.graph is None:
            return self.runner(*s)
        self.graph.replay()
        # The next replay overwrites the output buffer.
        return self.out.clone()


def _install(unet) -> None:
    """Puts the dispatch in front of unet.forward once: a call of the active artefact's
    shape, with nothing the artefact does not take (ControlNet residuals, attention
    kwargs), runs on it; every other call runs the UNet as before."""
    if getattr(unet, "_atelier_fast", None) is not None:
        return
    plain = unet.forward
    unet._atelier_fast = {"active": None, "loaded": {}}

    def forward(sample, timestep, encoder_hidden_states=None, *args, **kwargs):
        fast = unet._atelier_fast["active"]
        if fast is not None and not args:
            added = kwargs.get("added_cond_kwargs") or {}
            others = {k: v for k, v in kwargs.items()
                      if k not in ("added_cond_kwargs", "return_dict") and v is not None}
            if not others and set(added) == {"text_embeds", "time_ids"} and fast.matches(
                    sample, encoder_hidden_states, added["text_embeds"], added["time_ids"]):
                out = fast(sample, timestep, encoder_hidden_states, added["text_embeds"],
                           added["time_ids"])
                if kwargs.get("return_dict", True):
                    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

                    return UNet2DConditionOutput(sample=out)
                return (out,)
        return plain(sample, timestep, encoder_hidden_states, *args, **kwargs)

    unet.forward = forward


class FastUNets:
    """The engine's side of the fast path: per job, the artefact state for its UNet call,
    a build started where none exists, an artefact loaded where one is ready."""

    def __init__(self, device: str, cache_root: str, builds: fastpath.Builds | None = None,
                 max_autotune: bool = False, gpu: str | None = None, loader=None,
                 meminfo=None, memory=None):
        self.device = device
        self.builds = builds or fastpath.Builds(fastpath.store_from_env(cache_root))
        self.max_autotune = max_autotune
        self._gpu = gpu or torch.cuda.get_device_name(device)
        self.loader = loader or Loaded  # tests on the CPU pass a stand-in
        # The GPU's (free, total) bytes and this process's (allocated, reserved): CUDA's by
        # default; tests on the CPU pass stand-in figures, or none (no memory to guard).
        cuda = str(device).startswith("cuda")
        self.meminfo = meminfo or ((lambda: torch.cuda.mem_get_info(device)) if cuda else None)
        self.memory = memory or ((lambda: (torch.cuda.memory_allocated(device),
                                           torch.cuda.memory_reserved(device))) if cuda
                                 else (lambda: (0, 0)))
        self.last_load_s = 0.0
        self.note = ""         # why the last prepare's job has no fast path, if it is known
        self.note_new = False  # the note is said for the first time (shown once)
        self._said: set[tuple[Key, str]] = set()
        self._declined: dict[Key, tuple[int, str]] = {}  # key: free bytes then, why
        self._activations: dict[tuple, int] = {}  # shape: a job's peak less its memory at rest
        self._pending: tuple[tuple, int] | None = None
        # Builds to start when the job ends: a hires job prepares two sizes.
        self._deferred: dict[Key, object] = {}

    def key(self, unet, batch: int, height: int, width: int, seq: int, dtype) -> Key:
        return Key(torch=torch.__version__, gpu=self._gpu, arch=unet_signature(unet),
                   dtype=str(dtype).removeprefix("torch."), batch=batch, height=height,
                   width=width, seq=seq)

    def prepare(self, unet, batch: int, height: int, width: int, seq: int, dtype) -> tuple[str, Key | None]:
        """Before a job's denoising: "on" (its calls run on the artefact), "building" (they
        run on the plain path while it is built), or "off" (no artefact will serve it)."""
        self.last_load_s, self.note, self.note_new = 0.0, "", False
        _install(unet)
        state = unet._atelier_fast
        state["active"] = None
        if getattr(unet, "peft_config", None):
            return "off", None  # LoRA adapters: the weights are not the plain model's
        if getattr(unet, "_hf_hook", None) is not None:
            return "off", None  # offloaded (low VRAM): no room for a build, nor the artefact
        key = self.key(unet, batch, height, width, seq, dtype)
        self._pending = ((batch, height, width, seq), self.memory()[0])
        loaded = state["loaded"].get(key)
        if loaded is not None:
            state["active"] = loaded
            self.builds.store.touch(key)
            return "on", key
        st = self.builds.state(key)
        if st == READY:
            store = self.builds.store
            store.begin_load(key)
            try:
                loaded = self.loader(store.package(key), unet, key, self.device,
                                     checked=store.checked(key))
            except Exception as e:  # noqa: BLE001 - the job goes on on the plain path
                log.warning("fast path for %s not used: %s", key.size(), e)
                store.mark_failed(key, f"loading failed: {e}")
                return self._off(key, self._failure_note(key))
            finally:
                store.end_load(key)
            self.last_load_s = loaded.load_s
            if getattr(loaded, "check_err", None) is not None:
                store.mark_checked(key, loaded.check_err)
            # One loaded artefact per UNet: each holds a CUDA graph's memory pool.
            state["loaded"] = {key: loaded}
            state["active"] = loaded
            self.builds.store.touch(key)
            return "on", key
        if st == ABSENT and self.builds.running is None:
            why = self._no_room(unet, key)
            if why:
                return self._off(key, why)
            if (batch, height, width, seq) not in self._activations:
                # The first job of a size runs alone: beside a build (its imports, export and
                # compile workers on every core) it was 27-50 % slower than the eager path
                # (docs/BENCHMARKS.md). The build starts when the job ends, with its memory.
                self._deferred[key] = unet
                return "building", key
            st = self.builds.request(key, self._spec(unet, key))
        if st == FAILED_STATE:
            return self._off(key, self._failure_note(key))
        return ("building", key) if st == BUILDING else ("off", key)

    def _off(self, key: Key, why: str) -> tuple[str, Key]:
        self.note = why
        self.note_new = bool(why) and (key, why) not in self._said
        self._said.add((key, why))
        return "off", key

    def _failure_note(self, key: Key) -> str:
        """What the user is told, once, about a key whose artefact failed: a build out of
        memory says what to do; a failed build or load says why (the bench reports it too)."""
        oom = self.builds.oom.get(key)
        if oom:
            return oom
        why = (self.builds.store.failed(key) or "").strip().splitlines()
        # One line that fits under the viewer; the whole reason is in the worker's log.
        why = (why[0][:157] + "..." if len(why[0]) > 160 else why[0]) if why else \
            "unknown: see the worker's log"
        return f"the optimized path for {key.size()} is not available ({why}); jobs run on the regular path"

    def _no_room(self, unet, key: Key) -> str:
        """Why no build of key may start now, or "": the GPU's free memory against what it
        needs (fastpath.room). A key declined is decided again only once free memory has
        grown (a model unloaded, another program closed), not at every job."""
        if self.meminfo is None:
            return ""
        free = int(self.meminfo()[0])
        if key in self._declined and free <= self._declined[key][0]:
            return self._declined[key][1]
        allocated, reserved = self.memory()
        shape = (key.batch, key.height, key.width, key.seq)
        acts = self._activations.get(shape)
        if acts is None:
            acts = int(fastpath.JOB_MARGIN * key.batch * key.height * key.width / fastpath.REF_PIXELS)
        # What the worker's allocator already holds serves the job's activations first.
        margin = max(0, acts - (reserved - allocated))
        params = sum(p.numel() * p.element_size() for p in unet.parameters())
        r = fastpath.room(key, free, params, self.builds.store.recorded_peak(key), margin)
        if r.ok:
            self._declined.pop(key, None)
            return ""
        log.warning("fast path: %s", r.why)
        self._declined[key] = (free, r.why)
        return r.why

    def job_ended(self, peak_bytes: int) -> None:
        """After a job: its peak memory, less its memory at rest, is the margin a build of
        its shape leaves for the jobs beside it; a build the job put off starts now."""
        if self._pending is not None:
            shape, rest = self._pending
            self._activations[shape] = max(0, int(peak_bytes) - rest)
            self._pending = None
        deferred, self._deferred = self._deferred, {}
        for key, unet in deferred.items():  # one build at a time: the others wait for a later job
            if self.builds.running is not None:
                break
            if self.builds.state(key) == ABSENT and not self._no_room(unet, key):
                self.builds.request(key, self._spec(unet, key))

    def done(self, unet) -> None:
        """After the job: later calls (another pipeline's, a refiner's) run plain."""
        state = getattr(unet, "_atelier_fast", None)
        if state is not None:
            state["active"] = None

    def _spec(self, unet, key: Key) -> dict:
        cfg = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
        fused = any(getattr(m, "fused_projections", False) for m in unet.modules())
        return {"config": cfg, "fused_qkv": fused, "max_autotune": self.max_autotune,
                "fp8": fp8.is_quantized(unet)}
