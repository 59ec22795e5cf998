"""The fast path's artefacts on disk and their background builds, without torch: the key an
artefact is kept under (torch version, GPU, the UNet's architecture, dtype and call shape),
the store under the cache folder with its least-recently-used bound, and the state machine
of one artefact (absent -> building -> ready, or failed) around a builder process, and
whether the GPU has room for a build (room()).

An artefact is the SDXL UNet's CFG call compiled ahead of time by AOTInductor
(fastbuild.py), with the weights left out: it is built from random weights of the same
architecture and takes the loaded model's weights at load time (fastrun.py), so one artefact
serves every checkpoint of that architecture and shape.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

log = logging.getLogger("atelier.fastpath")

# Bumped whenever what an artefact holds or how it is called changes: old ones are not reused.
FORMAT = "aoti-1"
PACKAGE = "unet.pt2"
META = "meta.json"
FAILED = ".failed"
LOADING = ".loading"
CHECKED = "checked.json"  # inside the artefact's folder: compared with the plain UNet once

PEAKS = "peaks.json"  # the builds' GPU peaks by architecture and shape, kept past pruning

ABSENT, BUILDING, READY, FAILED_STATE = "absent", "building", "ready", "failed"
# The builder's exit status when it ran out of GPU memory (fastbuild.main).
OOM_STATUS = 3
OOM_ADVICE = ("close other programs using the GPU, or choose the Low VRAM speed mode "
              "(Settings), which turns the fast path off")

GIB = 2**30
# What a build needs, where no earlier build of its architecture and shape recorded its peak:
# the random-weight copy of the UNet (its parameter bytes) plus, for export and AOTInductor,
# as much again at SDXL's 1024x1024 CFG batch 2, scaled by the call's pixels. Source: the
# H200 build of SDXL's UNet (fp16, 1024x1024, batch 2, 77 tokens) peaked at 9.6 GiB
# (docs/BENCHMARKS.md) with 4.78 GiB of weights: 9.6 / 4.78 = 2.0. The rest is not
# measured: CONTEXT for the builder's CUDA context and the allocator's cached blocks, which
# max_memory_allocated leaves out, and JOB_MARGIN for a running job's activations where the
# worker has not yet measured its peak for that shape (the H100's 10.2 GiB job peak at 1024x1024
# less about 6.5 GiB of SDXL's weights, rounded up).
BUILD_EXTRA = 1.0
REF_PIXELS = 2 * 1024 * 1024
CONTEXT = 1 * GIB
JOB_MARGIN = 4 * GIB


def _scale(key: Key) -> float:
    return key.batch * key.height * key.width / REF_PIXELS


def build_estimate(param_bytes: int, key: Key) -> int:
    """The GPU memory a build of key is expected to peak at, from the UNet's parameter bytes."""
    return int(param_bytes * (1 + BUILD_EXTRA * _scale(key)))


@dataclass(frozen=True)
class Room:
    """Whether a build fits beside the running jobs: need and free in bytes, and why not."""

    ok: bool
    need: int
    free: int
    why: str = ""


def room(key: Key, free: int, param_bytes: int, recorded_peak: int | None = None,
         job_margin: int | None = None) -> Room:
    """Whether free bytes of GPU memory hold a build of key: the peak an earlier build of that
    architecture and shape recorded, else build_estimate; plus the running jobs' activations
    (the worker's measured peak for the shape less its memory at rest, else JOB_MARGIN scaled
    by the call's pixels) and CONTEXT."""
    build = recorded_peak if recorded_peak else build_estimate(param_bytes, key)
    margin = job_margin if job_margin is not None else int(JOB_MARGIN * _scale(key))
    need = build + max(0, margin) + CONTEXT
    if free >= need:
        return Room(True, need, free)
    return Room(False, need, free,
                f"not enough free GPU memory to optimize for {key.size()}: needs about "
                f"{need / GIB:.1f} GB, {free / GIB:.1f} GB free; jobs run on the regular path")


def signature(named_tensors) -> str:
    """The architecture of a module as its parameters' and buffers' names, shapes and dtypes
    (no values): two checkpoints of one architecture share it, a LoRA's extra layers or
    unfused attention projections change it. named_tensors yields (name, tensor)."""
    h = hashlib.sha256()
    for name, t in sorted(named_tensors, key=lambda kv: kv[0]):
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
    return h.hexdigest()[:20]


@dataclass(frozen=True)
class Key:
    """What an artefact is valid for. batch is the UNet call's (twice the images with CFG),
    height and width are the image's, seq the prompt embeddings' length in tokens."""

    torch: str
    gpu: str
    arch: str
    dtype: str
    batch: int
    height: int
    width: int
    seq: int

    def digest(self) -> str:
        blob = json.dumps({"format": FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def name(self) -> str:
        """The artefact's folder name: readable first, unique by the digest."""
        return f"{self.width}x{self.height}-b{self.batch}-t{self.seq}-{self.dtype}-{self.digest()}"

    def size(self) -> str:
        return f"{self.width}\u00d7{self.height}"


class Store:
    """The artefacts under root, one folder per key, at most max_count of them and
    max_bytes together: past either, the least recently used go first. A folder appears
    whole (the builder renames it into place), so a half-built one is never read."""

    def __init__(self, root: str, max_count: int = 8, max_bytes: int = 4 * 2**30):
        self.root = root
        self.max_count = max(1, max_count)
        self.max_bytes = max_bytes

    def path(self, key: Key) -> str:
        return os.path.join(self.root, key.name())

    def package(self, key: Key) -> str:
        return os.path.join(self.path(key), PACKAGE)

    def ready(self, key: Key) -> bool:
        d = self.path(key)
        return os.path.isfile(os.path.join(d, PACKAGE)) and os.path.isfile(os.path.join(d, META))

    def failed(self, key: Key) -> str | None:
        """Why the last build for key failed, or None: a failed build is not tried again for
        the same key (a new torch, GPU or architecture is a new key)."""
        try:
            with open(self.path(key) + FAILED, encoding="utf-8") as f:
                return f.read().strip() or "the build failed"
        except OSError:
            return None

    def mark_failed(self, key: Key, reason: str) -> None:
        os.makedirs(self.root, exist_ok=True)
        with open(self.path(key) + FAILED, "w", encoding="utf-8") as f:
            f.write(reason)

    def checked(self, key: Key) -> bool:
        """Whether a worker has compared key's artefact with the plain UNet on the same
        inputs and found it close: the artefact computes the same function for any
        checkpoint of its architecture, so one check per artefact is enough."""
        return os.path.isfile(os.path.join(self.path(key), CHECKED))

    def mark_checked(self, key: Key, err: float) -> None:
        try:
            with open(os.path.join(self.path(key), CHECKED), "w", encoding="utf-8") as f:
                json.dump({"rel_err": err, "pid": os.getpid(), "at": time.time()}, f)
        except OSError as e:  # a read-only store checks again next time
            log.warning("fast path: could not record the artefact's check: %s", e)

    def begin_load(self, key: Key) -> None:
        """Notes that this process is loading key's artefact. Should the load crash the
        process (a native fault no exception reports), the next worker finds the note of a
        dead process and takes the artefact as failed rather than crash again."""
        with open(self.path(key) + LOADING, "w", encoding="utf-8") as f:
            f.write(str(os.getpid()))

    def end_load(self, key: Key) -> None:
        try:
            os.unlink(self.path(key) + LOADING)
        except OSError:
            pass

    def crashed_loading(self, key: Key) -> bool:
        try:
            with open(self.path(key) + LOADING, encoding="utf-8") as f:
                pid = int(f.read().strip() or 0)
        except (OSError, ValueError):
            return False
        return pid != os.getpid() and not _alive(pid)

    def _shape(self, key: Key) -> str:
        return f"{key.arch}-{key.dtype}-{key.batch}x{key.height}x{key.width}x{key.seq}"

    def recorded_peak(self, key: Key) -> int | None:
        """The GPU peak an earlier build of key's architecture and shape recorded (any torch,
        any GPU), or None."""
        try:
            with open(os.path.join(self.root, PEAKS), encoding="utf-8") as f:
                return int(json.load(f)[self._shape(key)]) or None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def record_peak(self, key: Key) -> None:
        """Keeps the peak of key's finished build (its meta's peak_gpu_bytes) by shape."""
        try:
            with open(os.path.join(self.path(key), META), encoding="utf-8") as f:
                peak = int(json.load(f)["peak_gpu_bytes"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        path = os.path.join(self.root, PEAKS)
        try:
            with open(path, encoding="utf-8") as f:
                peaks = json.load(f)
        except (OSError, ValueError):
            peaks = {}
        peaks[self._shape(key)] = peak
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(peaks, f)
        os.replace(path + ".tmp", path)

    def touch(self, key: Key) -> None:
        """Marks the artefact as just used (its meta file's time is its last use)."""
        try:
            os.utime(os.path.join(self.path(key), META))
        except OSError:
            pass

    def entries(self) -> list[tuple[float, int, str]]:
        """(last use, bytes, folder) of every complete artefact, least recently used first."""
        out = []
        try:
            names = os.listdir(self.root)
        except OSError:
            return out
        for n in names:
            d = os.path.join(self.root, n)
            meta = os.path.join(d, META)
            if not os.path.isfile(meta):
                continue
            size = 0
            for base, _dirs, files in os.walk(d):
                size += sum(os.path.getsize(os.path.join(base, f)) for f in files)
            out.append((os.path.getmtime(meta), size, d))
        out.sort()
        return out

    def prune(self, keep: tuple[Key, ...] = ()) -> list[str]:
        """Removes the least recently used artefacts beyond the bounds (never those in
        keep), and build folders left by a process that died; returns what was removed."""
        removed = []
        self._remove_stale_builds()
        keep_dirs = {self.path(k) for k in keep}
        entries = self.entries()
        total = sum(e[1] for e in entries)
        count = len(entries)
        for _used, size, d in entries:
            if count <= self.max_count and total <= self.max_bytes:
                break
            if d in keep_dirs:
                continue
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
            count -= 1
            total -= size
            log.info("fast path: removed %s (least recently used)", os.path.basename(d))
        return removed

    def _remove_stale_builds(self) -> None:
        try:
            names = os.listdir(self.root)
        except OSError:
            return
        for n in names:
            if ".build-" not in n:
                continue
            pid = n.rsplit("-", 1)[-1]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(os.path.join(self.root, n), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def store_from_env(cache_root: str) -> Store:
    """The store under the cache folder (or ATELIER_FAST_DIR), bounded by
    ATELIER_FAST_CACHE_COUNT artefacts (default 8) and ATELIER_FAST_CACHE_GB (default 4)."""
    try:
        count = int(os.environ.get("ATELIER_FAST_CACHE_COUNT") or 8)
        gb = float(os.environ.get("ATELIER_FAST_CACHE_GB") or 4)
    except ValueError:
        log.warning("ATELIER_FAST_CACHE_COUNT / ATELIER_FAST_CACHE_GB are not numbers: "
                    "using 8 artefacts, 4 GB")
        count, gb = 8, 4.0
    root = os.environ.get("ATELIER_FAST_DIR") or os.path.join(cache_root, "fast")
    return Store(root, count, int(gb * 2**30))


def launch_builder(spec_path: str, log_path: str):
    """Starts the real builder (python -m atelier_worker.fastbuild) in a session of its own,
    so that a worker killed mid-job does not leave it attached to the app's terminal.
    Returns its Popen (poll() gives None while it runs)."""
    logf = open(log_path, "ab")  # noqa: SIM115 - the child keeps it; closed when it ends
    try:
        return subprocess.Popen([sys.executable, "-m", "atelier_worker.fastbuild", "--spec", spec_path],
                                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    finally:
        logf.close()


class Builds:
    """One artefact's life, for every key: absent -> building -> ready, or -> failed (its
    reason kept beside the store, so the same key is not built again). One build runs at
    a time: a key asked for while another builds stays absent and is asked for again by a
    later job. launcher(spec_path, log_path) starts a builder and returns a handle whose
    poll() is None while it runs and its exit status after (a Popen; tests pass a stand-in
    for the GPU build)."""

    def __init__(self, store: Store, launcher=launch_builder):
        self.store = store
        self.launcher = launcher
        self.running: tuple[Key, object, str, float] | None = None  # key, handle, log, start
        self.finished: list[tuple[Key, str, float]] = []  # key, state, seconds: newest last
        # Builds that ran out of GPU memory: not tried again by this process, but kept off
        # the disk so that a restarted worker (with other programs closed) tries once more.
        self.oom: dict[Key, str] = {}

    def state(self, key: Key) -> str:
        self.poll()
        if key in self.oom:
            return FAILED_STATE
        if self.store.crashed_loading(key) and self.store.failed(key) is None:
            self.store.mark_failed(key, "a worker ended while loading it")
            self.store.end_load(key)
        if self.store.failed(key) is not None:
            return FAILED_STATE
        if self.store.ready(key):
            return READY
        if self.running is not None and self.running[0] == key:
            return BUILDING
        return ABSENT

    def reason(self, key: Key) -> str | None:
        """Why key has no artefact, where it failed: out of GPU memory (this process), or the
        store's record."""
        return self.oom.get(key) or self.store.failed(key)

    def poll(self) -> None:
        """Notes a build that has ended: ready if its folder is in place, else failed with
        the end of its log as the reason."""
        if self.running is None:
            return
        key, handle, log_path, t0 = self.running
        rc = handle.poll()
        if rc is None:
            return
        self.running = None
        took = time.monotonic() - t0
        if rc == 0 and self.store.ready(key):
            log.info("fast path for %s built in %.0fs", key.size(), took)
            self.finished.append((key, READY, took))
            self.store.record_peak(key)
            self.store.prune(keep=(key,))
            return
        tail = _tail(log_path)
        if rc == OOM_STATUS or "out of memory" in tail.lower():
            self.oom[key] = (f"the build to optimize for {key.size()} ran out of GPU memory: "
                             f"{OOM_ADVICE}; jobs run on the regular path")
            log.warning("fast path for %s not built: %s (%s)", key.size(), self.oom[key], tail)
            self.finished.append((key, FAILED_STATE, took))
            return
        reason = f"the builder exited with status {rc}: " + tail
        log.warning("fast path for %s not built: %s", key.size(), reason)
        self.store.mark_failed(key, reason)
        self.finished.append((key, FAILED_STATE, took))

    def request(self, key: Key, spec: dict) -> str:
        """Starts building key's artefact if none exists, is building or has failed and no
        other build runs; returns the key's state after."""
        st = self.state(key)
        if st != ABSENT or self.running is not None:
            return st
        os.makedirs(self.store.root, exist_ok=True)
        base = self.store.path(key)
        spec = {**spec, "key": asdict(key), "out": base, "format": FORMAT}
        spec_path = base + ".spec.json"
        with open(spec_path, "w", encoding="utf-8") as f:
            json.dump(spec, f)
        log_path = base + ".log"
        try:
            handle = self.launcher(spec_path, log_path)
        except OSError as e:
            self.store.mark_failed(key, f"the builder did not start: {e}")
            return FAILED_STATE
        self.running = (key, handle, log_path, time.monotonic())
        log.info("building the fast path for %s in the background", key.size())
        return BUILDING

    def wait(self, timeout: float) -> None:
        """Tests and the bench probe only: waits for the running build to end."""
        if self.running is not None:
            handle = self.running[1]
            if hasattr(handle, "wait"):
                handle.wait(timeout)
        self.poll()


def _tail(path: str, n: int = 600) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode("utf-8", "replace").strip().replace("\n", " | ")
    except OSError:
        return "(no log)"
