"""The fast path's CPU side: the key an artefact is kept under, the store's LRU bound, the
background build's state machine, and the UNet forward's dispatch. Building and loading a
real artefact needs a CUDA GPU (docs/BENCHMARKS.md has those runs); where a test needs one,
a stand-in takes its place and says so. The real builder process still runs here, and
must fail clearly without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from atelier_worker import accel, fastpath, fastrun, tiny
from atelier_worker.fastpath import ABSENT, BUILDING, FAILED_STATE, READY, Builds, Key, Store


def key(**kw) -> Key:
    base = dict(torch="2.11.0", gpu="NVIDIA H200", arch="abc", dtype="float16", batch=2,
                height=1024, width=1024, seq=77)
    base.update(kw)
    return Key(**base)


def tiny_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**tiny.configs("tiny", 49408, 49406, 49407)["unet"]).eval()


# --- the key ---------------------------------------------------------------------------


def test_key_changes_with_every_field_and_reads_as_its_size():
    k = key()
    assert k.name() == key().name(), "the same key names the same folder in every process"
    assert k.name().startswith("1024x1024-b2-t77-float16-")
    others = [key(torch="2.12.0"), key(gpu="NVIDIA H100 80GB HBM3"), key(arch="abd"),
              key(dtype="bfloat16"), key(batch=4), key(height=768), key(width=1216), key(seq=154)]
    names = {o.name() for o in others}
    assert len(names) == len(others) and k.name() not in names
    assert key(width=1216, height=832).size() == "1216\u00d7832"


def test_the_key_digest_is_stable_across_versions_of_the_code():
    # The H200 artefact built on 2026-12-04 (docs/bench): its folder name, from its meta.json;
    # a change here makes every user's artefacts unreachable (bump FORMAT instead).
    k = Key(torch="2.11.0+cu130", gpu="NVIDIA H200", arch="615338c232a60efbb509", dtype="float16",
            batch=2, height=1024, width=1024, seq=77)
    assert k.name() == "1024x1024-b2-t77-float16-951fd6a8bb3b74ea"


def test_signature_is_the_architecture_not_the_weights():
    a, b = tiny_unet(0), tiny_unet(1)
    assert not torch.equal(a.conv_in.weight, b.conv_in.weight)
    assert fastrun.unet_signature(a) == fastrun.unet_signature(b), \
        "one artefact serves every checkpoint of an architecture"
    plain = fastrun.unet_signature(a)
    a.fuse_qkv_projections()
    assert fastrun.unet_signature(a) != plain, "fused projections are other weights"
    assert fastrun.unet_signature(b.half()) != plain, "the dtype is part of it"


# --- the store -------------------------------------------------------------------------


def make_artefact(store: Store, k: Key, size: int, used: float) -> str:
    d = store.path(k)
    os.makedirs(d)
    with open(os.path.join(d, fastpath.PACKAGE), "wb") as f:
        f.write(b"x" * size)
    meta = os.path.join(d, fastpath.META)
    with open(meta, "w") as f:
        json.dump({"key": {}}, f)
    os.utime(meta, (used, used))  # its last use, set rather than waited for
    return d


def test_prune_removes_the_least_recently_used_beyond_the_count(tmp_path):
    store = Store(str(tmp_path), max_count=2, max_bytes=10**9)
    old, mid, new = key(width=512), key(width=768), key(width=1024)
    make_artefact(store, old, 10, 1000)
    make_artefact(store, mid, 10, 2000)
    make_artefact(store, new, 10, 3000)
    removed = store.prune()
    assert removed == [store.path(old)]
    assert not store.ready(old) and store.ready(mid) and store.ready(new)


def test_prune_keeps_within_the_bytes_and_never_removes_what_is_kept(tmp_path):
    store = Store(str(tmp_path), max_count=10, max_bytes=250)
    a, b, c = key(width=512), key(width=768), key(width=1024)
    make_artefact(store, a, 100, 1000)
    make_artefact(store, b, 100, 2000)
    make_artefact(store, c, 100, 3000)
    # a is the oldest but in use: b goes instead.
    assert store.prune(keep=(a,)) == [store.path(b)]
    assert store.ready(a) and store.ready(c)


def test_touch_makes_an_artefact_the_most_recently_used(tmp_path):
    store = Store(str(tmp_path), max_count=1)
    a, b = key(width=512), key(width=768)
    make_artefact(store, a, 10, 1000)
    make_artefact(store, b, 10, 2000)
    store.touch(a)  # now: far later than 2000
    assert store.prune() == [store.path(b)]


def test_prune_removes_the_folders_of_dead_builds_only(tmp_path):
    store = Store(str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = os.path.join(str(tmp_path), f"{key().name()}.build-{dead.pid}")
    live = os.path.join(str(tmp_path), f"{key(width=512).name()}.build-{os.getpid()}")
    os.makedirs(stale)
    os.makedirs(live)
    store.prune()
    assert not os.path.exists(stale) and os.path.exists(live)


def test_store_bounds_come_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ATELIER_FAST_CACHE_COUNT", "3")
    monkeypatch.setenv("ATELIER_FAST_CACHE_GB", "0.5")
    monkeypatch.delenv("ATELIER_FAST_DIR", raising=False)
    s = fastpath.store_from_env(str(tmp_path))
    assert (s.root, s.max_count, s.max_bytes) == (os.path.join(str(tmp_path), "fast"), 3, 2**29)
    monkeypatch.setenv("ATELIER_FAST_DIR", str(tmp_path / "elsewhere"))
    assert fastpath.store_from_env(str(tmp_path)).root == str(tmp_path / "elsewhere")


# --- the background build --------------------------------------------------------------


class StandInBuild:
    """Fault injection: stands in for the GPU build (which CI cannot run). It does what the
    real builder's end does, when the test says: the artefact's folder renamed into place
    and exit 0, or a failure with a log line and exit 1."""

    def __init__(self, spec_path: str, log_path: str):
        with open(spec_path) as f:
            self.spec = json.load(f)
        self.log_path = log_path
        self.rc = None

    def poll(self):
        return self.rc

    def succeed(self):
        d = self.spec["out"]
        tmp = d + ".build-1"
        os.makedirs(tmp)
        for name in (fastpath.PACKAGE, fastpath.META):
            with open(os.path.join(tmp, name), "w") as f:
                f.write("{}")
        os.replace(tmp, d)
        self.rc = 0

    def fail(self, why: str):
        with open(self.log_path, "a") as f:
            f.write(why + "\n")
        self.rc = 1


class StandInLauncher:
    def __init__(self):
        self.started: list[StandInBuild] = []

    def __call__(self, spec_path, log_path):
        b = StandInBuild(spec_path, log_path)
        self.started.append(b)
        return b


def test_a_build_goes_from_absent_to_building_to_ready(tmp_path):
    launcher = StandInLauncher()
    builds = Builds(Store(str(tmp_path)), launcher)
    k = key()
    assert builds.state(k) == ABSENT
    assert builds.request(k, {"config": {"in_channels": 4}}) == BUILDING
    assert builds.request(k, {}) == BUILDING, "asking again starts no second build"
    assert len(launcher.started) == 1
    spec = launcher.started[0].spec
    assert spec["key"]["width"] == 1024 and spec["config"] == {"in_channels": 4}
    assert spec["out"] == builds.store.path(k) and spec["format"] == fastpath.FORMAT
    launcher.started[0].succeed()
    assert builds.state(k) == READY
    assert builds.finished[-1][:2] == (k, READY)


def test_a_failed_build_is_kept_with_its_reason_and_not_tried_again(tmp_path):
    launcher = StandInLauncher()
    builds = Builds(Store(str(tmp_path)), launcher)
    k = key()
    builds.request(k, {})
    launcher.started[0].fail("CppCompileError: no g++")
    assert builds.state(k) == FAILED_STATE
    assert "status 1" in builds.store.failed(k) and "no g++" in builds.store.failed(k)
    assert builds.request(k, {}) == FAILED_STATE and len(launcher.started) == 1
    # A new key (another torch, say) is built afresh.
    assert Builds(builds.store, launcher).request(key(torch="2.12.0"), {}) == BUILDING


def test_one_build_at_a_time_and_the_other_size_waits(tmp_path):
    launcher = StandInLauncher()
    builds = Builds(Store(str(tmp_path)), launcher)
    a, b = key(), key(width=768, height=1344)
    assert builds.request(a, {}) == BUILDING
    assert builds.request(b, {}) == ABSENT, "asked again by a later job of that size"
    launcher.started[0].succeed()
    assert builds.request(b, {}) == BUILDING and len(launcher.started) == 2


def test_a_finished_build_prunes_the_store(tmp_path):
    launcher = StandInLauncher()
    store = Store(str(tmp_path), max_count=1)
    old = key(width=512)
    make_artefact(store, old, 10, 1000)
    builds = Builds(store, launcher)
    builds.request(key(), {})
    launcher.started[0].succeed()
    assert builds.state(key()) == READY and not store.ready(old)


def test_a_builder_that_cannot_start_is_a_failure(tmp_path):
    def launcher(spec_path, log_path):
        raise FileNotFoundError("no such python")

    builds = Builds(Store(str(tmp_path)), launcher)
    assert builds.request(key(), {}) == FAILED_STATE
    assert "did not start" in builds.store.failed(key())


def test_the_real_builder_without_a_gpu_fails_with_its_reason(tmp_path):
    """The real launcher and builder process (python -m atelier_worker.fastbuild): with no
    CUDA it must end with a clear reason, which becomes the key's failed state."""
    unet = tiny_unet()
    builds = Builds(Store(str(tmp_path)))
    k = key(arch=fastrun.unet_signature(unet), dtype="float32", height=64, width=64)
    cfg = {n: v for n, v in dict(unet.config).items() if not n.startswith("_")}
    assert builds.request(k, {"config": cfg, "fused_qkv": False}) == BUILDING
    builds.wait(timeout=600)
    assert builds.state(k) == FAILED_STATE
    assert "CUDA" in builds.store.failed(k)


# --- the worker's side -----------------------------------------------------------------


class StandInLoaded:
    """Fault injection: stands in for a loaded artefact (an AOTInductor package and a CUDA
    graph need a GPU). It runs the plain UNet and counts its calls, so a test sees which
    calls the dispatch sent to it."""

    def __init__(self, path, unet, key, device, checked=False):
        self.key, self.calls, self.load_s = key, 0, 0.5
        self.check_err = None if checked else 1e-3  # as Loaded: checked against eager once
        self.unet_forward = type(unet).forward.__get__(unet)
        self.static = fastrun.example_inputs(unet, key, device)

    def matches(self, sample, ehs, text_embeds, time_ids):
        return sample.shape == self.static[0].shape and ehs.shape == self.static[2].shape

    def __call__(self, sample, timestep, ehs, text_embeds, time_ids):
        self.calls += 1
        return self.unet_forward(sample, timestep, ehs, added_cond_kwargs={
            "text_embeds": text_embeds, "time_ids": time_ids}, return_dict=False)[0]


def test_jobs_run_plain_while_building_then_on_the_artefact(tmp_path):
    launcher = StandInLauncher()
    fast = fastrun.FastUNets("cpu", str(tmp_path), Builds(Store(str(tmp_path)), launcher),
                             gpu="stand-in", loader=StandInLoaded)
    unet = tiny_unet()
    args = (2, 64, 64, 77, torch.float32)
    assert fast.prepare(unet, *args)[0] == "building"
    assert launcher.started == [], "the first job of a size runs alone: the build waits for it"
    fast.job_ended(0)
    assert len(launcher.started) == 1 and launcher.started[0].spec["config"]["in_channels"] == 4
    assert fast.prepare(unet, *args)[0] == "building", "the next job too, until it is built"
    fast.job_ended(0)
    assert len(launcher.started) == 1, "one build"
    launcher.started[0].succeed()
    state, k = fast.prepare(unet, *args)
    assert state == "on" and fast.last_load_s == 0.5
    inp = fastrun.example_inputs(unet, k, "cpu")
    cond = {"text_embeds": inp[3], "time_ids": inp[4]}
    with torch.inference_mode():
        out = unet(inp[0], inp[1], encoder_hidden_states=inp[2], added_cond_kwargs=cond,
                   return_dict=False)[0]
        loaded = unet._atelier_fast["active"]
        assert loaded.calls == 1 and out.shape == inp[0].shape
        # What the artefact does not take runs plain: ControlNet residuals, another size.
        unet(inp[0], inp[1], encoder_hidden_states=inp[2], added_cond_kwargs=cond,
             mid_block_additional_residual=torch.zeros(1), return_dict=False)
        unet(inp[0][:1], inp[1], encoder_hidden_states=inp[2][:1], added_cond_kwargs={
            "text_embeds": inp[3][:1], "time_ids": inp[4][:1]}, return_dict=False)
        unet(inp[0], inp[1], encoder_hidden_states=inp[2], added_cond_kwargs=cond,
             cross_attention_kwargs={"scale": 0.5}, return_dict=False)
        assert loaded.calls == 1
        fast.done(unet)
        unet(inp[0], inp[1], encoder_hidden_states=inp[2], added_cond_kwargs=cond, return_dict=False)
        assert loaded.calls == 1, "after the job, calls run plain"
    assert fast.prepare(unet, *args)[0] == "on" and fast.last_load_s == 0.0, "loaded once"


def test_an_artefact_is_checked_against_the_plain_unet_once(tmp_path):
    launcher = StandInLauncher()
    seen: list[bool] = []

    def loader(path, unet, key, device, checked=False):
        seen.append(checked)
        return StandInLoaded(path, unet, key, device, checked=checked)

    store = Store(str(tmp_path))
    args = (2, 64, 64, 77, torch.float32)
    fast = fastrun.FastUNets("cpu", str(tmp_path), Builds(store, launcher), gpu="stand-in", loader=loader)
    unet = tiny_unet()
    fast.prepare(unet, *args)
    fast.job_ended(0)
    launcher.started[0].succeed()
    k = fast.key(unet, *args)
    assert not store.checked(k)
    assert fast.prepare(unet, *args)[0] == "on" and store.checked(k)
    # A restarted worker (a new FastUNets on the same store) with another checkpoint.
    again = fastrun.FastUNets("cpu", str(tmp_path), Builds(store, launcher), gpu="stand-in", loader=loader)
    assert again.prepare(tiny_unet(1), *args)[0] == "on"
    assert seen == [False, True], "the second load skips the comparison with the plain UNet"


def test_an_artefact_that_fails_to_load_is_not_used_again(tmp_path):
    launcher = StandInLauncher()

    def broken(*a, **kw):
        raise RuntimeError("the artefact's output differs from the model's by 0.9")

    fast = fastrun.FastUNets("cpu", str(tmp_path), Builds(Store(str(tmp_path)), launcher),
                             gpu="stand-in", loader=broken)
    unet = tiny_unet()
    args = (2, 64, 64, 77, torch.float32)
    fast.prepare(unet, *args)
    fast.job_ended(0)
    launcher.started[0].succeed()
    assert fast.prepare(unet, *args)[0] == "off"
    k = fast.key(unet, *args)
    assert "differs" in fast.builds.store.failed(k)
    # Said once, with the reason (the job's metrics carry it: the UI and the bench show it).
    assert fast.note_new and fast.note.startswith("the optimized path for 64\u00d764 is not available (")
    assert "differs from the model's by 0.9" in fast.note and fast.note.endswith("regular path")
    assert fast.prepare(unet, *args)[0] == "off" and not fast.note_new
    # A restarted worker finds the failure on disk and says it once too.
    again = fastrun.FastUNets("cpu", str(tmp_path), Builds(Store(str(tmp_path)), launcher),
                              gpu="stand-in", loader=broken)
    assert again.prepare(unet, *args)[0] == "off" and again.note_new and "differs" in again.note


def test_a_unet_with_lora_adapters_has_no_fast_path(tmp_path):
    launcher = StandInLauncher()
    fast = fastrun.FastUNets("cpu", str(tmp_path), Builds(Store(str(tmp_path)), launcher),
                             gpu="stand-in", loader=StandInLoaded)
    unet = tiny_unet()
    unet.peft_config = {"style": object()}
    assert fast.prepare(unet, 2, 64, 64, 77, torch.float32)[0] == "off"
    assert launcher.started == []


# --- settings --------------------------------------------------------------------------


@pytest.mark.parametrize("env, kind, want", [
    ({}, "cuda", "auto"), ({}, "cpu", "off"), ({"ATELIER_COMPILE": "auto"}, "cpu", "off"),
    ({"ATELIER_COMPILE": "regional"}, "cuda", "regional"),
    ({"ATELIER_OFFLOAD": "model"}, "cuda", "off"), ({"ATELIER_FP8": "1"}, "cuda", "auto"),
])
def test_the_fast_path_is_the_default_on_cuda_only(monkeypatch, env, kind, want):
    for name in ("ATELIER_COMPILE", "ATELIER_OFFLOAD", "ATELIER_FP8"):
        monkeypatch.delenv(name, raising=False)
    for name, v in env.items():
        monkeypatch.setenv(name, v)
    s = accel.from_env(kind)
    assert s.compile == want
    assert accel.fast_path_wanted(s, kind) == (want == "auto")


def test_no_preload_where_the_fast_path_is_off(monkeypatch):
    monkeypatch.delenv("ATELIER_PRELOADED", raising=False)
    monkeypatch.setenv("ATELIER_COMPILE", "off")
    assert accel.libstdcxx_preload() is None
    monkeypatch.setenv("ATELIER_COMPILE", "auto")
    monkeypatch.setenv("ATELIER_PRELOADED", "1")
    assert accel.libstdcxx_preload() is None, "a process started so is not started again"


def test_an_artefact_whose_load_killed_a_worker_is_not_loaded_again(tmp_path):
    """Fault injection: a load that crashes the process (a native fault) leaves its note;
    the next worker, seeing the note of a dead process, runs plain instead of crashing."""
    store = Store(str(tmp_path))
    k = key()
    make_artefact(store, k, 10, 1000)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(store.path(k) + fastpath.LOADING, "w") as f:
        f.write(str(dead.pid))
    builds = Builds(store, StandInLauncher())
    assert builds.state(k) == FAILED_STATE
    assert "ended while loading" in store.failed(k)
    # This process's own note (a load under way) is no crash.
    k2 = key(width=512)
    make_artefact(store, k2, 10, 1000)
    store.begin_load(k2)
    assert builds.state(k2) == READY
    store.end_load(k2)
    assert not os.path.exists(store.path(k2) + fastpath.LOADING)


# --- room on the GPU for a build ---------------------------------------------------------

GIB = fastpath.GIB
SDXL_PARAMS = 2_567_463_684 * 2  # SDXL's UNet in fp16


def test_room_is_the_estimate_plus_the_jobs_margin_and_says_why_not():
    k = key()  # SDXL's 1024x1024, CFG batch 2: the H200's measured build
    est = fastpath.build_estimate(SDXL_PARAMS, k)
    assert 9.4 * GIB < est < 9.8 * GIB, "the rule gives the H200's 9.6 GiB back at its shape"
    need = est + 2 * GIB + fastpath.CONTEXT
    ok = fastpath.room(k, need, SDXL_PARAMS, job_margin=2 * GIB)
    assert ok.ok and ok.need == need and ok.why == ""
    short = fastpath.room(k, 6 * GIB, SDXL_PARAMS, job_margin=2 * GIB)
    assert not short.ok
    assert short.why == (f"not enough free GPU memory to optimize for 1024\u00d71024: needs about "
                         f"{need / GIB:.1f} GB, 6.0 GB free; jobs run on the regular path")
    # No measured margin: the estimate, scaled by the call's pixels.
    assert fastpath.room(k, 0, SDXL_PARAMS).need == est + fastpath.JOB_MARGIN + fastpath.CONTEXT
    small = key(height=512, width=512)
    assert fastpath.room(small, 0, SDXL_PARAMS).need < fastpath.room(k, 0, SDXL_PARAMS).need


def test_room_takes_the_peak_an_earlier_build_recorded(tmp_path):
    launcher = StandInLauncher()
    store = Store(str(tmp_path))
    builds = Builds(store, launcher)
    k = key()
    assert store.recorded_peak(k) is None
    builds.request(k, {})
    launcher.started[0].succeed()
    with open(os.path.join(store.path(k), fastpath.META), "w") as f:
        json.dump({"key": {}, "peak_gpu_bytes": 7 * GIB}, f)  # what the real builder writes
    assert builds.state(k) == READY
    # Another torch (a new key) of the same architecture and shape: the recorded peak, kept
    # even once the artefact itself is pruned.
    other = key(torch="2.12.0")
    import shutil
    shutil.rmtree(store.path(k))
    assert store.recorded_peak(other) == 7 * GIB
    assert store.recorded_peak(key(width=768)) is None
    r = fastpath.room(other, 0, SDXL_PARAMS, store.recorded_peak(other), job_margin=GIB)
    assert r.need == 7 * GIB + GIB + fastpath.CONTEXT


class StandInGPU:
    """Fault injection: stands in for torch.cuda's memory figures (no GPU here): the
    device's free bytes, and this process's allocated and reserved bytes."""

    def __init__(self, free: int, allocated: int = 0, reserved: int = 0):
        self.free, self.allocated, self.reserved, self.asked = free, allocated, reserved, 0

    def meminfo(self):
        self.asked += 1
        return self.free, 24 * GIB

    def memory(self):
        return self.allocated, self.reserved


def fast_unets(tmp_path, gpu, launcher):
    return fastrun.FastUNets("cpu", str(tmp_path), Builds(Store(str(tmp_path)), launcher),
                             gpu="stand-in", loader=StandInLoaded, meminfo=gpu.meminfo,
                             memory=gpu.memory)


def test_no_build_without_room_said_once_and_tried_again_when_memory_grows(tmp_path):
    launcher = StandInLauncher()
    unet = tiny_unet()
    params = sum(p.numel() * p.element_size() for p in unet.parameters())
    args = (2, 64, 64, 77, torch.float32)
    k = fastrun.FastUNets("cpu", str(tmp_path), Builds(Store(str(tmp_path)), launcher),
                          gpu="stand-in").key(unet, *args)
    need = fastpath.room(k, 0, params).need
    gpu = StandInGPU(free=need - 1)
    fast = fast_unets(tmp_path, gpu, launcher)
    assert fast.prepare(unet, *args)[0] == "off"
    assert launcher.started == [], "no build without room: it would OOM itself or the job"
    assert fast.note.startswith("not enough free GPU memory to optimize for 64\u00d764: needs about")
    assert fast.note.endswith("jobs run on the regular path") and fast.note_new
    # The next job, memory as before: no build, nothing said again, nothing decided again.
    assert fast.prepare(unet, *args)[0] == "off"
    assert launcher.started == [] and fast.note and not fast.note_new
    # Less free memory still: declined without a new decision.
    gpu.free = need // 2
    assert fast.prepare(unet, *args)[0] == "off" and launcher.started == []
    # A model unloaded: free memory has grown, enough now.
    gpu.free = need
    assert fast.prepare(unet, *args)[0] == "building" and fast.note == ""
    fast.job_ended(0)
    assert len(launcher.started) == 1


def test_the_first_job_of_a_size_runs_alone_and_its_peak_decides_the_build(tmp_path):
    """A build beside the first job of a size made that job 27-50 % slower than the eager
    path on an H200: it starts when the job ends, once the job's peak memory is known."""
    launcher = StandInLauncher()
    unet = tiny_unet()
    params = sum(p.numel() * p.element_size() for p in unet.parameters())
    args = (2, 64, 64, 77, torch.float32)
    probe = fast_unets(tmp_path, StandInGPU(free=0), launcher)
    k = probe.key(unet, *args)
    gpu = StandInGPU(free=fastpath.room(k, 0, params).need)  # room by the estimate
    fast = fast_unets(tmp_path, gpu, launcher)
    assert fast.prepare(unet, *args) == ("building", k) and launcher.started == []
    # The job needed 20 GiB over its memory at rest: no room for a build beside such jobs.
    fast.job_ended(20 * GIB)
    assert launcher.started == [], "decided again with the job's measured peak"
    assert fast.prepare(unet, *args)[0] == "off" and "needs about" in fast.note and fast.note_new
    # Another size: its first job runs alone too; a small peak, and the build starts after it.
    other = (2, 32, 32, 77, torch.float32)
    assert fast.prepare(unet, *other)[0] == "building" and launcher.started == []
    fast.job_ended(0)
    assert len(launcher.started) == 1 and launcher.started[0].spec["config"]["in_channels"] == 4
    # A first job that fails never reaches job_ended: the next job of its size runs alone again.
    third = (2, 48, 48, 77, torch.float32)
    launcher.started[0].succeed()
    assert fast.prepare(unet, *third)[0] == "building"
    assert fast.prepare(unet, *third)[0] == "building" and len(launcher.started) == 1
    fast.job_ended(0)
    assert len(launcher.started) == 2
    # A hires job prepares two sizes: both are built, one after the other, in later job ends.
    launcher.started[1].succeed()
    gpu.free = 10**15  # room for any size from here on
    base, hires = (2, 40, 40, 77, torch.float32), (2, 56, 56, 77, torch.float32)
    assert fast.prepare(unet, *base)[0] == "building"
    assert fast.prepare(unet, *hires)[0] == "building"
    fast.job_ended(0)
    assert len(launcher.started) == 3
    # While one size builds, the other waits (its calls plain), then goes after it.
    assert fast.prepare(unet, *base)[0] == "building"
    assert fast.prepare(unet, *hires)[0] == "off"
    fast.job_ended(0)
    assert len(launcher.started) == 3, "one build at a time"
    launcher.started[2].succeed()
    fast.prepare(unet, *base)
    fast.prepare(unet, *hires)
    fast.job_ended(0)
    sizes = {(b.spec["key"]["height"], b.spec["key"]["width"]) for b in launcher.started[2:]}
    assert len(launcher.started) == 4 and sizes == {(40, 40), (56, 56)}


def test_the_jobs_measured_peak_and_the_allocators_cache_set_the_margin(tmp_path):
    launcher = StandInLauncher()
    unet = tiny_unet()
    params = sum(p.numel() * p.element_size() for p in unet.parameters())
    args = (2, 64, 64, 77, torch.float32)
    gpu = StandInGPU(free=0, allocated=5 * GIB, reserved=5 * GIB)
    fast = fast_unets(tmp_path, gpu, launcher)
    k = fast.key(unet, *args)
    assert fast.prepare(unet, *args)[0] == "off"
    fast.job_ended(8 * GIB)  # the job's peak: 3 GiB of activations over its 5 at rest
    build = fastpath.build_estimate(params, k) + fastpath.CONTEXT
    gpu.free = build + 3 * GIB - 1
    assert fast.prepare(unet, *args)[0] == "off" and "needs about" in fast.note
    # The worker's allocator now holds 2 GiB of that, cached from the last job: the job needs
    # only 1 GiB more from the device. (Free memory has grown by a byte: decided again.)
    gpu.reserved = 7 * GIB
    gpu.free = build + 3 * GIB
    assert fast.prepare(unet, *args)[0] == "building"
    assert fastpath.room(k, gpu.free, params, job_margin=GIB).need == build + GIB


# --- a build out of memory -------------------------------------------------------------


def oom_child(spec_path, log_path):
    """Fault injection: a real child process that ends as the builder does when CUDA runs
    out of memory (fastbuild.main: its message, then fastpath.OOM_STATUS)."""
    with open(log_path, "ab") as logf:
        return subprocess.Popen([sys.executable, "-c", (
            "import sys; print('fastbuild: out of GPU memory: CUDA out of memory. Tried to "
            f"allocate 2.00 GiB', file=sys.stderr); sys.exit({fastpath.OOM_STATUS})")],
            stdout=logf, stderr=subprocess.STDOUT)


def test_a_build_out_of_memory_is_not_tried_again_until_the_worker_restarts(tmp_path):
    store = Store(str(tmp_path))
    builds = Builds(store, oom_child)
    k = key()
    assert builds.request(k, {}) == BUILDING
    builds.wait(timeout=600)
    assert builds.state(k) == FAILED_STATE
    why = builds.reason(k)
    assert why.startswith("the build to optimize for 1024\u00d71024 ran out of GPU memory")
    assert "close other programs using the GPU" in why and "Low VRAM speed mode" in why
    assert builds.request(k, {}) == FAILED_STATE and builds.running is None, "not retried"
    assert store.failed(k) is None, "nothing on disk: a restarted worker tries again"
    assert Builds(store, StandInLauncher()).request(k, {}) == BUILDING


def test_the_worker_says_a_build_out_of_memory_once(tmp_path):
    unet = tiny_unet()
    gpu = StandInGPU(free=10**15)
    fast = fastrun.FastUNets("cpu", str(tmp_path), Builds(Store(str(tmp_path)), oom_child),
                             gpu="stand-in", loader=StandInLoaded, meminfo=gpu.meminfo,
                             memory=gpu.memory)
    args = (2, 64, 64, 77, torch.float32)
    assert fast.prepare(unet, *args)[0] == "building"
    fast.job_ended(0)
    fast.builds.wait(timeout=600)
    assert fast.prepare(unet, *args)[0] == "off"
    assert "ran out of GPU memory" in fast.note and fast.note_new
    assert fast.prepare(unet, *args)[0] == "off" and not fast.note_new


def test_the_builder_exits_with_the_oom_status_when_cuda_runs_out(tmp_path, monkeypatch, capsys):
    """Fault injection: the real builder's main, its build standing in for one that runs out
    of GPU memory (torch's own exception)."""
    from atelier_worker import fastbuild

    def oom(spec):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    spec = tmp_path / "spec.json"
    spec.write_text("{}")
    monkeypatch.setattr(os, "nice", lambda n: 0)  # not this test process's priority
    monkeypatch.setattr(accel, "setup_env", lambda: None)  # nor its environment
    monkeypatch.setattr(fastbuild, "build", oom)
    assert fastbuild.main(["--spec", str(spec)]) == fastpath.OOM_STATUS
    assert "out of GPU memory" in capsys.readouterr().err

    def other(spec):
        raise RuntimeError("CppCompileError")

    monkeypatch.setattr(fastbuild, "build", other)
    with pytest.raises(RuntimeError):
        fastbuild.main(["--spec", str(spec)])


# --- low VRAM --------------------------------------------------------------------------


def speed_mode(name: str) -> dict[str, str]:
    """A speed mode's variables as the app sets them, read from core/settings (the Go
    side's table), so that this test follows the mode."""
    import re

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "core", "settings", "worker.go"), encoding="utf-8") as f:
        src = f.read()
    block = re.search(name + r": \{([^{}]*)\}", src).group(1)
    return dict(re.findall(r'"(ATELIER_\w+)": "([^"]*)"', block))


def with_mode(monkeypatch, mode: dict[str, str]) -> None:
    for name, v in mode.items():
        if v:
            monkeypatch.setenv(name, v)
        else:
            monkeypatch.delenv(name, raising=False)


def test_low_vram_never_starts_a_build(tmp_path, monkeypatch):
    from atelier_worker import engine as engines

    mode = speed_mode("SpeedLowVRAM")
    assert mode["ATELIER_OFFLOAD"] == "model"
    monkeypatch.setenv("LD_PRELOAD", "libstdc++.so.6")  # as the restarted worker has it
    # Fault injection: torch.cuda's name of a GPU this machine lacks.
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "stand-in")
    balanced = speed_mode("SpeedBalanced")
    assert balanced == {}, "balanced is the worker's defaults"
    with_mode(monkeypatch, {name: "" for name in mode})
    assert isinstance(engines.Engine("cuda:0", torch.float16, str(tmp_path)).fast, fastrun.FastUNets), \
        "balanced: the fast path"
    with_mode(monkeypatch, mode)
    e = engines.Engine("cuda:0", torch.float16, str(tmp_path))
    assert e.fast is None and e.accel.offload == "model"
    # Even ATELIER_COMPILE=auto set over the mode: offload turns the fast path off.
    monkeypatch.setenv("ATELIER_COMPILE", "auto")
    assert engines.Engine("cuda:0", torch.float16, str(tmp_path)).fast is None
    # And an offloaded UNet (accelerate's hook, as model offload leaves it) gets no build.
    import accelerate

    launcher = StandInLauncher()
    fast = fast_unets(tmp_path, StandInGPU(free=10**15), launcher)
    unet = tiny_unet()
    accelerate.cpu_offload_with_hook(unet, "cpu")
    assert fast.prepare(unet, 2, 64, 64, 77, torch.float32) == ("off", None)
    assert launcher.started == []
