"""The Ray actor behind `atelier queue run --ray`: one per GPU (or CPU slot) of the cluster,
holding the pipeline warm between jobs (docs/scaling.md).

It runs each job with the stdio worker's own Engine.run, so a request, its progress and
previews, cancel and the closed set of errors are the worker's. Only files differ: the
actor's node cannot see the client's folders, so the job writes into a folder of the
actor's own, and its PNGs (and previews) travel back as bytes for ray_proxy.py to write
into the request's output_dir. Input pictures travel the other way.

This module does not import ray: ray_proxy.py wraps ActorCore with ray.remote, so the
class is plain Python that a test can also drive in-process.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import socket
import tempfile
import threading

import msgspec

from . import worker
from .job import Job
from .protocol import Error, Generate, Message, Preview, Request, Result, decode, encode
from .spec import ERR_INTERNAL

log = logging.getLogger("atelier.ray")

# The request fields that name an input picture of the user's, sent as bytes.
INPUT_FIELDS = ("init_image", "mask_image")


def input_key(field: str, index: int | None = None) -> str:
    """The key of one input picture in the files sent with a job."""
    return field if index is None else f"{field}[{index}].image"


class ActorCore:
    """Jobs one at a time on this actor's device; the methods are called from Ray's thread
    pool (the actor runs with max_concurrency > 1), so poll and cancel work mid-job."""

    def __init__(self, device: str | None = None, dtype: str | None = None):
        worker.prepare_env()
        worker.setup_logging()
        import torch  # noqa: F401 - before device.pick, which needs it

        from . import device as devices

        self.dev, self.dtype = devices.pick(device, dtype)
        self._hello = worker.make_hello(self.dev, self.dtype)
        import diffusers  # noqa: F401

        worker._route_library_logs()
        from .engine import Engine

        self.engine = Engine(self.dev, self.dtype)
        self._lock = threading.Lock()
        self._job: Job | None = None
        self._queues: dict[str, queue.Queue] = {}
        self._root = tempfile.mkdtemp(prefix="atelier-ray-")
        log.info("actor ready: %s, %s, pid %d on %s", self.dev, devices.dtype_name(self.dtype),
                 os.getpid(), socket.gethostname())

    def hello(self) -> dict:
        """The hello line of this actor's engine, and where it runs."""
        return {"hello": encode(self._hello), "pid": os.getpid(), "host": socket.gethostname()}

    def busy(self) -> str:
        """The id of the job in hand, or ""."""
        with self._lock:
            return self._job.id if self._job is not None else ""

    def start(self, line: str, inputs: dict[str, tuple[str, bytes]]) -> None:
        """Starts the job of a generate line; inputs maps input_key() to (file name, bytes)
        of the pictures the client sent. The job's messages come from poll()."""
        msg = decode(line)
        assert isinstance(msg, Generate), msg.type
        job_dir = tempfile.mkdtemp(prefix=f"{msg.id}-", dir=self._root)
        job = Job(id=msg.id, request=_local_request(msg.request, job_dir, inputs))
        with self._lock:
            if self._job is not None:
                shutil.rmtree(job_dir, ignore_errors=True)
                raise RuntimeError(f"job {self._job.id} is still running on this actor")
            self._job = job
            self._queues[job.id] = queue.Queue()
        threading.Thread(target=self._run, args=(job, self._queues[job.id], job_dir),
                         name=f"job-{job.id}", daemon=True).start()

    def _run(self, job: Job, q: queue.Queue, job_dir: str) -> None:
        token = worker.current_id.set(job.id)

        def emit(m: Message) -> None:
            data = None
            if isinstance(m, Preview):
                # Read now: the next preview overwrites the file.
                try:
                    data = _read(m.path)
                except OSError:
                    return  # a preview is only for watching; the job goes on
            q.put((encode(m), data, False))

        files: dict[str, bytes] = {}
        try:
            outcome = self.engine.run(job, emit)
            if isinstance(outcome, Result):
                try:
                    for p in [im.path for im in outcome.images] + list(outcome.control_images):
                        files[os.path.basename(p)] = _read(p)
                except OSError as e:
                    outcome = Error(id=job.id, code=ERR_INTERNAL,
                                    message=f"the actor could not read back its image: {e}")
                    files = {}
        except BaseException as e:  # noqa: BLE001 - the client must hear of every end
            log.exception("the job failed outside the engine")
            outcome = Error(id=job.id, code=ERR_INTERNAL, message=f"{type(e).__name__}: {e}")
        finally:
            shutil.rmtree(job_dir, ignore_errors=True)
            with self._lock:
                self._job = None
            worker.current_id.reset(token)
        q.put((encode(outcome), files, True))

    def poll(self, id: str, timeout: float) -> list[tuple[str, object, bool]]:
        """The job's messages since the last poll, waiting up to timeout for the first:
        (line, bytes of a preview or {name: bytes} of the result, last)."""
        q = self._queues.get(id)
        if q is None:
            raise KeyError(f"no job {id} on this actor")
        out = []
        try:
            out.append(q.get(timeout=timeout))
            while True:
                out.append(q.get_nowait())
        except queue.Empty:
            pass
        if out and out[-1][2]:
            self._queues.pop(id, None)
        return out

    def cancel(self, id: str) -> None:
        with self._lock:
            if self._job is not None and self._job.id == id:
                self._job.cancel.set()
                log.info("cancel requested", extra={"id": id})

    def unload(self) -> None:
        self.engine.unload()


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _local_request(r: Request, job_dir: str, inputs: dict[str, tuple[str, bytes]]) -> Request:
    """The request as this node runs it: output into job_dir, and each input picture the
    client sent written there under its own name."""

    def place(key: str, current: str) -> str:
        if key not in inputs:
            return current  # a path on the cluster (a shared folder)
        name, data = inputs[key]
        # Numbered: two fields may name files of the same name in different folders.
        path = os.path.join(job_dir, f"input-{len(os.listdir(job_dir))}-{os.path.basename(name)}")
        with open(path, "wb") as f:
            f.write(data)
        return path

    changes: dict = {"output_dir": job_dir}
    for field in INPUT_FIELDS:
        value = getattr(r, field)
        if value:
            changes[field] = place(input_key(field), value)
    if r.controlnets:
        changes["controlnets"] = [msgspec.structs.replace(c, image=place(input_key("controlnets", i), c.image))
                                  for i, c in enumerate(r.controlnets)]
    return msgspec.structs.replace(r, **changes)
