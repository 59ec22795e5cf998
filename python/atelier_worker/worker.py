"""The worker process: handshake, stdin reader, job loop, parent watch.

stdout carries protocol lines only. At start the real stdout is moved to a private file
descriptor and fd 1 is pointed at stderr, so a stray print() in any library cannot corrupt
the protocol.
"""

from __future__ import annotations

import argparse
import contextvars
import ctypes
import logging
import os
import platform
import queue
import signal
import socket
import sys
import threading
import time
from typing import IO

from . import __version__
from .job import Job
from .protocol import (
    Cancel,
    Capabilities,
    Device,
    Error,
    Generate,
    Heartbeat,
    Hello,
    Loading,
    Message,
    Ping,
    Pong,
    ProtocolError,
    Shutdown,
    Unload,
    decode,
    encode,
)
from .spec import (
    CONTROLNET_TYPES,
    ERR_INVALID_REQUEST,
    ERR_UNSUPPORTED,
    FEATURES,
    GO_TO_WORKER,
    HEARTBEAT_INTERVAL_S,
    MAX_LINE_BYTES,
    PROTOCOL_VERSION,
    SCHEDULERS,
)

log = logging.getLogger("atelier.worker")

# The request id of the job the current thread works on, for every log line.
current_id: contextvars.ContextVar[str] = contextvars.ContextVar("current_id", default="-")

# How long a job may take to notice a cancel once stdin has closed, before the process
# exits anyway (a model load cannot be interrupted).
EXIT_GRACE_S = 5.0

# The feature (spec.FEATURES) listed only where model upscalers can load.
_UPSCALE_MODEL = "upscale_model"

_STOP = object()
_UNLOAD = object()


class Output:
    """Serializes protocol lines onto the private stdout."""

    def __init__(self, stream: IO[bytes]):
        self._stream = stream
        self._lock = threading.Lock()
        self.broken = False

    def send(self, msg: Message) -> None:
        data = (encode(msg) + "\n").encode("utf-8")
        with self._lock:
            if self.broken:
                return
            try:
                self._stream.write(data)
                self._stream.flush()
            except (BrokenPipeError, OSError, ValueError):
                # The bridge is gone; stdin's EOF or the parent watch ends the process.
                self.broken = True


def heartbeat_interval() -> float:
    """The seconds between heartbeats: the spec's, or ATELIER_HEARTBEAT_INTERVAL_S where it is
    a positive number (tests shorten it, together with the bridge's deadline)."""
    raw = os.environ.get("ATELIER_HEARTBEAT_INTERVAL_S", "")
    try:
        v = float(raw)
    except ValueError:
        v = 0.0
    if raw and not v > 0:
        log.warning("ATELIER_HEARTBEAT_INTERVAL_S=%r is not a positive number: using %ss", raw,
                    HEARTBEAT_INTERVAL_S)
    return v if v > 0 else float(HEARTBEAT_INTERVAL_S)


class Heartbeats:
    """Sends a heartbeat every interval while a job is in hand, from a thread of its own: the
    bridge then hears from a worker whose step takes minutes, and stops hearing from one that
    is frozen (stopped, deadlocked) and kills it. The line goes out under the lock, so that no
    beat of a job follows its stop()."""

    def __init__(self, out: Output, interval: float):
        self._out = out
        self._interval = interval
        self._cond = threading.Condition()
        self._id: str | None = None
        self._turn = 0  # counts start() and stop(), so that a wait they cut short sends nothing
        threading.Thread(target=self._run, name="heartbeat", daemon=True).start()

    def start(self, id: str) -> None:
        with self._cond:
            self._id = id
            self._turn += 1
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._id = None
            self._turn += 1
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._id is None:
                    self._cond.wait()
                id, turn = self._id, self._turn
                self._cond.wait(self._interval)
                if self._turn == turn:
                    self._out.send(Heartbeat(id=id))


class _IdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "id"):
            record.id = current_id.get()
        return True


def setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_IdFilter())
    handler.setFormatter(logging.Formatter(
        "%(asctime)s.%(msecs)03d %(levelname)s [%(id)s] %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("ATELIER_LOG_LEVEL", "INFO").upper())
    logging.captureWarnings(True)


def _route_library_logs() -> None:
    # diffusers and transformers print through handlers of their own; routing them through
    # ours puts the job id on their lines as well.
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    for lib in (dlog, tlog):
        lib.disable_default_handler()
        lib.enable_propagation()
        lib.disable_progress_bar()


def take_stdout() -> IO[bytes]:
    """Returns a private stream on the real stdout and points fd 1 at stderr."""
    sys.stdout.flush()
    proto = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return proto


def watch_parent() -> None:
    """Exits when the parent dies: Linux's parent-death signal where it exists, and a polling
    thread everywhere (the signal follows the parent thread, not the process)."""
    parent = os.getppid()
    # The parent that started us says who it is: if it died before this point, getppid()
    # already names whoever adopted us, and the watch below would never fire.
    expected = os.environ.get("ATELIER_PARENT_PID", "")
    if expected.isdigit() and int(expected) != parent:
        log.error("parent process %s is gone (now %d): exiting", expected, parent)
        os._exit(1)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            PR_SET_PDEATHSIG = 1
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
                log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        except (OSError, AttributeError) as e:
            log.warning("prctl unavailable: %s", e)

    def poll() -> None:
        while True:
            if os.getppid() != parent:
                log.error("parent process %d is gone: exiting", parent)
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=poll, name="parent-watch", daemon=True).start()


class Worker:
    """Reads commands on a thread of its own and runs jobs on the calling thread."""

    def __init__(self, engine, out: Output, stdin: IO[bytes], heartbeat_s: float | None = None):
        self.engine = engine
        self.out = out
        self.stdin = stdin
        self.heartbeats = Heartbeats(out, heartbeat_s or heartbeat_interval())
        self.jobs: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._current = None  # the accepted job, queued or running

    # Reader thread ---------------------------------------------------------

    def read_commands(self) -> None:
        while True:
            raw = self.stdin.readline(MAX_LINE_BYTES + 1)
            if not raw:
                log.info("stdin closed: exiting")
                break
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):
                    raw = self.stdin.readline(MAX_LINE_BYTES + 1)
                self._reply_bad(ProtocolError(f"line is longer than {MAX_LINE_BYTES} bytes"))
                continue
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            try:
                msg = decode(line)
            except ProtocolError as e:
                self._reply_bad(e)
                continue
            if msg.type not in GO_TO_WORKER:
                self._reply_bad(ProtocolError(f"{msg.type} is a message the worker sends, not one "
                                              "it reads", "type", getattr(msg, "id", "")))
                continue
            if isinstance(msg, Shutdown):
                log.info("shutdown")
                break
            self._handle(msg)
        self._stop()

    def _handle(self, msg: Message) -> None:
        if isinstance(msg, Ping):
            self.out.send(Pong(id=msg.id))
        elif isinstance(msg, Cancel):
            with self._lock:
                job = self._current
                if job is not None and job.id == msg.id:
                    job.cancel.set()
                    log.info("cancel requested", extra={"id": msg.id})
                else:
                    log.info("cancel for a job that is not running: ignored", extra={"id": msg.id})
        elif isinstance(msg, Unload):
            self.jobs.put(_UNLOAD)
        elif isinstance(msg, Generate):
            with self._lock:
                busy = self._current
                if busy is None:
                    self._current = Job(id=msg.id, request=msg.request)
                    self.jobs.put(self._current)
                    # From here, not from accepted: the first job waits for the pipeline's
                    # import, and the bridge's deadline runs from the generate it sent.
                    self.heartbeats.start(msg.id)
            if busy is not None:
                self.out.send(Error(id=msg.id, code=ERR_INVALID_REQUEST,
                                    message=f"job {busy.id} is still running: one job runs at a "
                                            "time; wait for its result or cancel it"))

    def _reply_bad(self, e: ProtocolError) -> None:
        log.warning("bad line: %s", e, extra={"id": e.id or "-"})
        self.out.send(Error(id=e.id, code=ERR_INVALID_REQUEST, message=str(e), field=e.field))

    def _stop(self) -> None:
        """Cancels the running job, lets it end for a short grace, then exits regardless."""
        with self._lock:
            if self._current is not None:
                self._current.cancel.set()
        self.jobs.put(_STOP)

        def deadline() -> None:
            time.sleep(EXIT_GRACE_S)
            log.error("the running job did not stop within %.0fs: exiting", EXIT_GRACE_S)
            os._exit(0)

        threading.Thread(target=deadline, name="exit-deadline", daemon=True).start()

    # Job thread ------------------------------------------------------------

    def run_jobs(self) -> None:
        while True:
            item = self.jobs.get()
            if item is _STOP:
                return
            if isinstance(self.engine, PendingEngine):
                # The first command waits for the pipeline's import, begun after hello.
                self.engine = self.engine.wait()
            if item is _UNLOAD:
                self.engine.unload()
                continue
            token = current_id.set(item.id)
            try:
                log.info("job started: %dx%d, %d steps, %s", item.request.width,
                         item.request.height, item.request.steps, item.request.model)
                outcome = self.engine.run(item, self.out.send)
            finally:
                # Free the slot before the last line goes out, so that a generate the bridge
                # sends as soon as it reads the result is not refused as a second job.
                with self._lock:
                    self._current = None
                self.heartbeats.stop()
            self.out.send(outcome)
            current_id.reset(token)


def capabilities() -> Capabilities:
    """What this worker can do (docs/protocol.md, "Capabilities"), so that a UI offers only that."""
    from . import accel, schedulers

    features = [f for f in FEATURES if f != _UPSCALE_MODEL]
    import importlib.util

    # Found, not imported: its import costs the start-up a third of a second.
    if importlib.util.find_spec("spandrel") is not None:
        features.append(_UPSCALE_MODEL)
    else:
        log.warning("spandrel is missing: model upscalers are off, Lanczos still works")
    return Capabilities(schedulers=list(SCHEDULERS), controlnet_types=list(CONTROLNET_TYPES),
                        features=features,
                        schedules=schedulers.cached_capabilities(accel.cache_root()))


def versions(torch) -> dict[str, str]:
    # From the installed packages' metadata: diffusers is not imported yet when hello goes out.
    import importlib.metadata as md

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("diffusers", "transformers", "peft", "spandrel"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


class PendingEngine:
    """The Engine while diffusers, transformers and the pipeline are imported on a thread of
    their own (seconds), so that hello need not wait for them. A failed import ends the
    worker with the reason logged, as it did when the import came before hello."""

    def __init__(self, dev: str, dtype):
        self._engine = None
        self._thread = threading.Thread(target=self._load, args=(dev, dtype),
                                        name="import-pipeline", daemon=True)
        self._thread.start()

    def _load(self, dev: str, dtype) -> None:
        t0 = time.perf_counter()
        try:
            import diffusers  # noqa: F401

            _route_library_logs()
            from .engine import Engine

            self._engine = Engine(dev, dtype)
        except BaseException:
            log.exception("importing diffusers and the pipeline failed: exiting")
            logging.shutdown()
            os._exit(1)
        log.info("pipeline ready in %.1fs, cache %s", time.perf_counter() - t0,
                 self._engine.cache_dir)

    def wait(self):
        self._thread.join()
        return self._engine


def prepare_env() -> None:
    """The environment every engine runs in, set before torch loads (the stdio worker and a
    Ray actor alike)."""
    # Nothing may come from the network: models are local folders or the generated tiny one.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    # OpenMP's default spin-waiting makes CPU inference many times slower whenever another
    # process wants the cores (the app itself, a second worker): measured 20x at 512 px on
    # 2 cores. It must be set before torch loads its OpenMP runtime.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # CUDA numbers the GPUs fastest first unless told; cuda:N means nvidia-smi's N everywhere.
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    # The compile cache under the user's cache folder (before torch reads its settings).
    from . import accel

    accel.setup_env()


def make_hello(dev: str, dtype) -> Hello:
    """The hello of an engine on device dev (torch is imported by then)."""
    import torch

    from . import device as devices

    return Hello(
        protocol=PROTOCOL_VERSION, worker_version=__version__, device=devices.kind(dev),
        dtype=devices.dtype_name(dtype), devices=[Device(**d) for d in devices.describe()],
        capabilities=capabilities(),
        versions=versions(torch), host=socket.gethostname(), pid=os.getpid(),
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m atelier_worker",
                                 description="Atelier's SDXL worker (protocol on stdin/stdout).")
    ap.add_argument("--device", default=os.environ.get("ATELIER_DEVICE") or None,
                    help="cuda, cuda:N, mps or cpu (default: the best found; env ATELIER_DEVICE)")
    ap.add_argument("--dtype", default=os.environ.get("ATELIER_DTYPE") or None,
                    help="float16, bfloat16 or float32 (default: by device; env ATELIER_DTYPE)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if argv is None:
        from . import accel

        accel.reexec_with_preload()  # before torch: the fast path's artefacts need it
    prepare_env()
    setup_logging()
    out = Output(take_stdout())
    watch_parent()

    # The imports take seconds; each loading line moves the bridge's stall deadline.
    out.send(Loading(message="importing torch"))
    import torch  # noqa: F401 - the slow import, under its loading line

    from . import device as devices

    try:
        dev, dtype = devices.pick(args.device, args.dtype)
    except devices.DeviceError as e:
        # Said on stdout too, before any hello: the bridge shows it as the reason the worker
        # did not start, rather than a crash whose cause is only in the log lines.
        log.error("%s", e)
        out.send(Error(id="", code=ERR_UNSUPPORTED, message=str(e)))
        return 2

    out.send(make_hello(dev, dtype))
    log.info("ready: %s, %s", dev, devices.dtype_name(dtype))
    # diffusers, transformers and the pipeline take seconds more to import: they load on a
    # thread of their own while the bridge gets ready to send, and the first job waits for them.
    engine = PendingEngine(dev, dtype)

    worker = Worker(engine, out, sys.stdin.buffer)
    threading.Thread(target=worker.read_commands, name="stdin-reader", daemon=True).start()
    try:
        worker.run_jobs()
    except KeyboardInterrupt:
        log.info("interrupted: exiting")
        os._exit(130)
    log.info("exiting")
    # Skips interpreter teardown, which can stall on torch's threads for seconds.
    logging.shutdown()
    os._exit(0)
