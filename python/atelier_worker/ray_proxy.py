"""python -m atelier_worker.ray_proxy --address ADDRESS: the worker protocol on stdin/stdout,
with the jobs run by a Ray actor on a cluster (`atelier queue run --ray`, docs/scaling.md).

The bridge starts this process instead of the worker and sees a worker: hello, accepted,
progress, previews, one result or error per job, heartbeats, pong, cancel, shutdown. The
stdin side is the stdio worker's own Worker class; only its engine is remote (RemoteEngine
below), an actor of ray_actor.ActorCore that runs the worker's Engine.run. The actor writes
into a folder of its node and sends the PNGs back as bytes; this process writes them into
the request's output_dir, all of a job's or none, so the history records local files.

A lost actor or node (the actor process killed, its node gone) ends this process with
status 1: the bridge then ends the job as `worker_crashed`, as for a local worker that died,
and the queue re-runs it; the next job starts a new proxy and a new actor.

`--slots` prints how many actors the cluster can hold (its GPUs, or its CPUs when it has
none) as JSON and exits: `queue run --ray` starts that many proxies.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import socket
import sys
import threading
import time

import msgspec

from . import accel, worker
from .job import Job
from .protocol import Error, Generate, Hello, Loading, Message, Preview, Result, decode, encode
from .ray_actor import INPUT_FIELDS, ActorCore, input_key
from .spec import ERR_DISK_FULL, ERR_INTERNAL, ERR_INVALID_REQUEST

log = logging.getLogger("atelier.ray")

# Ray's namespace for Atelier's actors, so that `ray list actors` and a test can find them.
NAMESPACE = "atelier"
# How long poll() waits in the actor for a message: also how soon a cancel is forwarded.
POLL_S = 0.5
# A call to the actor that has not come back by then counts as a lost actor. Ray notices a
# dead actor or node by itself, far sooner; this only bounds a hung network.
CALL_TIMEOUT_S = 300.0
# How long an actor may take to be placed and to start (a first start on a node imports torch
# and diffusers; a full cluster leaves it pending).
START_TIMEOUT_S = 900.0
# Between two loading lines while the actor starts (the bridge's stall deadline is 60 s).
LOADING_EVERY_S = 10.0
# How long the first TCP connection to the cluster may take.
CONNECT_TIMEOUT_S = 30.0
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


class ActorLost(Exception):
    """The actor or its node is gone."""


class RemoteEngine:
    """The Engine interface of the Worker class (run, unload), on a Ray actor."""

    def __init__(self, ray, actor, where: str):
        self._ray = ray
        self._actor = actor
        self.where = where

    def _call(self, ref, timeout: float = CALL_TIMEOUT_S):
        ray = self._ray
        try:
            return ray.get(ref, timeout=timeout)
        except ray.exceptions.GetTimeoutError as e:
            raise ActorLost(f"the actor {self.where} did not answer within {timeout:.0f}s") from e
        except ray.exceptions.RayError as e:
            raise ActorLost(f"the actor {self.where} was lost: {type(e).__name__}: {e}") from e

    def run(self, job: Job, emit) -> Message:
        try:
            return self._run(job, emit)
        except ActorLost as e:
            lost(e)
        finally:
            _unlink(_preview_path(job))

    def _run(self, job: Job, emit) -> Message:
        r = job.request
        try:
            inputs = local_inputs(r)
        except OSError as e:
            return Error(id=job.id, code=ERR_INVALID_REQUEST, field=_field_of(e, r),
                         message=f"cannot read {e.filename}: {e.strerror}")
        self._call(self._actor.start.remote(encode(Generate(id=job.id, request=r)), inputs))
        cancel_sent = False
        while True:
            if job.cancel.is_set() and not cancel_sent:
                self._actor.cancel.remote(job.id)
                cancel_sent = True
            for line, data, last in self._call(self._actor.poll.remote(job.id, POLL_S)):
                msg = decode(line)
                if last:
                    return finish(job, msg, data or {})
                if isinstance(msg, Preview):
                    msg = save_preview(job, msg, data)
                    if msg is None:
                        continue
                emit(msg)

    def unload(self) -> None:
        try:
            self._call(self._actor.unload.remote())
        except ActorLost as e:
            lost(e)


def lost(e: BaseException) -> None:
    """Ends the process: the bridge reports the job in hand as worker_crashed."""
    log.error("%s; exiting, so that the job ends as worker_crashed and the next job starts "
              "a new actor", e)
    logging.shutdown()
    os._exit(1)


def local_inputs(r) -> dict[str, tuple[str, bytes]]:
    """The input pictures of the request that are files here, by input_key(): a path that
    is not a file here is left for the cluster (a shared folder)."""
    out = {}
    wanted = [(input_key(f), getattr(r, f)) for f in INPUT_FIELDS]
    wanted += [(input_key("controlnets", i), c.image) for i, c in enumerate(r.controlnets)]
    for key, path in wanted:
        if path and os.path.isfile(path):
            with open(path, "rb") as f:
                out[key] = (path, f.read())
    return out


def _field_of(e: OSError, r) -> str:
    for f in INPUT_FIELDS:
        if getattr(r, f) == e.filename:
            return f
    for i, c in enumerate(r.controlnets):
        if c.image == e.filename:
            return input_key("controlnets", i)
    return ""


def _preview_path(job: Job) -> str:
    return os.path.join(job.request.output_dir, f".preview-{job.id}.png")


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def save_preview(job: Job, msg: Preview, data) -> Preview | None:
    """The preview written here (through a rename, as the worker does), or None when it
    cannot be: a preview is only for watching, so the job goes on without it."""
    path = _preview_path(job)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        os.makedirs(job.request.output_dir, exist_ok=True)
        _write(tmp, data)
        os.replace(tmp, path)
    except (OSError, TypeError) as e:
        _unlink(tmp)
        log.warning("preview not written: %s", e, extra={"id": job.id})
        return None
    return msgspec.structs.replace(msg, path=path)


def finish(job: Job, msg: Message, files: dict[str, bytes]) -> Message:
    """The job's last line, with a result's images written into output_dir (all or none)
    and its paths made local."""
    if not isinstance(msg, Result):
        return msg
    out_dir = job.request.output_dir
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        return Error(id=job.id, code=ERR_INVALID_REQUEST, field="output_dir",
                     message=f"cannot create the output folder {out_dir}: {e.strerror}")
    done: list[tuple[str, str]] = []
    try:
        for name, data in files.items():
            final = os.path.join(out_dir, name)
            tmp = os.path.join(out_dir, f".{name}.tmp-{os.getpid()}")
            done.append((tmp, final))
            _write(tmp, data)
        for tmp, final in done:
            os.replace(tmp, final)
    except OSError as e:
        for tmp, _ in done:
            _unlink(tmp)
        need = sum(len(d) for d in files.values())
        if e.errno in DISK_FULL_ERRNOS:
            return Error(id=job.id, code=ERR_DISK_FULL,
                         message=f"the disk of {out_dir} is full: the job's {len(files)} PNG(s) need "
                                 f"about {need // 1024 + 1} KiB; nothing of the job is kept. Free some "
                                 "space or write to another disk, then run the job again",
                         detail=str(e))
        return Error(id=job.id, code=ERR_INTERNAL, message=f"cannot write the job's PNGs into "
                     f"{out_dir}: {e}", detail=str(e))
    local = {os.path.basename(f): f for _, f in done}
    images = [msgspec.structs.replace(im, path=local[os.path.basename(im.path)]) for im in msg.images]
    controls = [local[os.path.basename(p)] for p in msg.control_images]
    return msgspec.structs.replace(msg, images=images, control_images=controls)


def reachable(address: str) -> None:
    """Raises OSError when nothing listens at the address: ray.init would wait minutes."""
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise OSError(f"{address!r} is not HOST:PORT (or ray://HOST:PORT)")
    socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()


def connect(address: str):
    reachable(address)
    import ray

    # The worker's own package travels with the actor, so that the cluster runs exactly the
    # code of this client (its Python dependencies are the cluster's: docs/scaling.md).
    import atelier_worker

    pkg = os.path.dirname(os.path.abspath(atelier_worker.__file__))
    ray.init(address=address, namespace=NAMESPACE, log_to_driver=True,
             logging_level=logging.WARNING,
             runtime_env={"py_modules": [pkg], "excludes": ["__pycache__"]})
    return ray


def slots(ray) -> dict:
    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), int(res.get("CPU", 0))
    return {"slots": gpus or cpus, "gpus": gpus, "cpus": cpus}


def start_actor(ray, out: worker.Output, args) -> tuple[object, dict]:
    """Creates this process's actor and waits until it is ready, with a loading line every
    LOADING_EVERY_S so that the bridge's stall deadline does not fire."""
    gpus = int(ray.cluster_resources().get("GPU", 0))
    name = f"atelier-{socket.gethostname()}-{os.getpid()}"
    opts = {"name": name, "max_concurrency": 4, "max_restarts": 0, "num_cpus": 1}
    # The speed mode the app chose (set in this proxy's environment by the bridge) holds on
    # the actor too; Ray merges these variables into the job's runtime_env.
    env = accel.speed_env()
    if env:
        opts["runtime_env"] = {"env_vars": env}
    device = args.device
    if gpus:
        opts["num_gpus"] = 1
    else:
        device = device or "cpu"
    actor = ray.remote(ActorCore).options(**opts).remote(device, args.dtype)
    ref = actor.hello.remote()
    what = "a GPU" if gpus else "a CPU"
    t0 = time.monotonic()
    while True:
        ready, _ = ray.wait([ref], timeout=LOADING_EVERY_S)
        if ready:
            break
        waited = time.monotonic() - t0
        if waited > START_TIMEOUT_S:
            ray.kill(actor)
            raise ActorLost(f"the Ray actor {name} did not start within {START_TIMEOUT_S:.0f}s: "
                            f"the cluster may have no free {what[2:]} (each actor takes one)")
        out.send(Loading(message=f"waiting for the Ray actor {name} ({what}): {waited:.0f}s"))
    try:
        info = ray.get(ref)
    except ray.exceptions.RayError as e:
        raise ActorLost(f"the Ray actor {name} could not start: {e}") from e
    return actor, info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m atelier_worker.ray_proxy",
                                 description="Atelier's worker protocol on stdin/stdout, with "
                                             "the jobs run by an actor on a Ray cluster.")
    ap.add_argument("--address", required=True,
                    help="the cluster: HOST:PORT of its head (this machine a node of it), "
                         "or ray://HOST:10001 (Ray Client)")
    ap.add_argument("--slots", action="store_true",
                    help="print how many actors the cluster holds, as JSON, and exit")
    ap.add_argument("--device", default=os.environ.get("ATELIER_DEVICE") or None,
                    help="the actor's device (default: a GPU of the cluster, else cpu)")
    ap.add_argument("--dtype", default=os.environ.get("ATELIER_DTYPE") or None,
                    help="float16, bfloat16 or float32 (default: by device)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Plain lines in the bridge's stderr ring (Ray colours the actors' log prefixes).
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    worker.setup_logging()
    out = worker.Output(worker.take_stdout())
    try:
        import ray  # noqa: F401
    except ImportError:
        log.error("Ray is not installed in this Python: run `make venv-ray` (it installs "
                  "python/requirements-ray.txt), or pip install the version that file pins")
        return 2
    if args.slots:
        try:
            info = slots(connect(args.address))
        except Exception as e:  # noqa: BLE001 - every way of failing is said the same way
            log.error("cannot reach the Ray cluster at %s: %s", args.address, e)
            return 1
        out._stream.write((json.dumps(info) + "\n").encode())
        return 0
    worker.watch_parent()
    out.send(Loading(message=f"connecting to the Ray cluster at {args.address}"))
    try:
        ray = connect(args.address)
    except Exception as e:  # noqa: BLE001
        log.error("cannot reach the Ray cluster at %s: %s", args.address, e)
        return 1
    out.send(Loading(message="starting a Ray actor (the first start on a node imports torch)"))
    try:
        actor, info = start_actor(ray, out, args)
    except ActorLost as e:
        log.error("%s", e)
        return 1
    hello = decode(info["hello"])
    assert isinstance(hello, Hello)
    where = f"pid {info['pid']} on {info['host']}"
    log.info("Ray actor ready: %s, %s, %s", where, hello.device, hello.dtype)
    out.send(hello)

    w = worker.Worker(RemoteEngine(ray, actor, where), out, sys.stdin.buffer)
    threading.Thread(target=w.read_commands, name="stdin-reader", daemon=True).start()
    try:
        w.run_jobs()
    except KeyboardInterrupt:
        os._exit(130)
    log.info("exiting")
    try:
        ray.kill(actor)  # it would die with this driver anyway; now is sooner
    except Exception:  # noqa: BLE001 - already gone
        pass
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
