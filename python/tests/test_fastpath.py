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

    def __init__(self, path, unet, key, device):
        self.key, self.calls, self.load_s = key, 0, 0.5
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
    assert launcher.started[0].spec["config"]["in_channels"] == 4
    assert fast.prepare(unet, *args)[0] == "building", "the next job too, until it is built"
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


def test_an_artefact_that_fails_to_load_is_not_used_again(tmp_path):
    launcher = StandInLauncher()

    def broken(*a):
        raise RuntimeError("the artefact's output differs from the model's by 0.9")

    fast = fastrun.FastUNets("cpu", str(tmp_path), Builds(Store(str(tmp_path)), launcher),
                             gpu="stand-in", loader=broken)
    unet = tiny_unet()
    args = (2, 64, 64, 77, torch.float32)
    fast.prepare(unet, *args)
    launcher.started[0].succeed()
    assert fast.prepare(unet, *args)[0] == "off"
    k = fast.key(unet, *args)
    assert "differs" in fast.builds.store.failed(k)
    assert fast.prepare(unet, *args)[0] == "off"


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
    ({"ATELIER_OFFLOAD": "model"}, "cuda", "off"), ({"ATELIER_FP8": "1"}, "cuda", "off"),
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
