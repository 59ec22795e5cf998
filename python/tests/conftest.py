"""Shared fixtures: a private cache with the tiny model built once, and the real worker
as a subprocess that speaks the protocol."""

from __future__ import annotations

import itertools
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import pytest

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PYTHON_DIR)

from atelier_worker import protocol, tiny  # noqa: E402

# Set before any worker starts, so that every subprocess shares the session's cache and
# none touches the user's.
_CACHE = tempfile.mkdtemp(prefix="atelier-test-cache-")
os.environ["ATELIER_CACHE_DIR"] = _CACHE
# As the worker does, so that the in-process tests keep their speed on a busy machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model() -> str:
    """The tiny model, where `model: "tiny"` resolves, built once for the session."""
    return tiny.create(os.path.join(_CACHE, "models", tiny.TINY_NAME))


_ids = itertools.count(1)


def new_id(prefix: str = "job") -> str:
    return f"{prefix}-{next(_ids)}"


def request(output_dir, /, **overrides) -> dict:
    r = {"prompt": "a lighthouse", "model": "tiny", "steps": 4, "cfg": 5, "width": 64,
         "height": 64, "seed": 7, "output_dir": str(output_dir)}
    r.update(overrides)
    return r


class WorkerProcess:
    """The real worker. Every stdout line goes through protocol.decode, so a line that is
    not valid protocol fails the test that reads it."""

    def __init__(self, env: dict | None = None, args: tuple = (), module: str = "atelier_worker",
                 **popen):
        self.stderr = tempfile.TemporaryFile()
        full_env = dict(os.environ, PYTHONPATH=PYTHON_DIR, **(env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args], cwd=PYTHON_DIR, env=full_env,
            stdin=popen.pop("stdin", subprocess.PIPE), stdout=subprocess.PIPE,
            stderr=self.stderr, **popen)
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.startup: list = []
        self.hello = None
        # Heartbeats are the bridge's business: next() skips them into this list unless a
        # test asks to read them in line.
        self.heartbeats: list = []
        self.keep_heartbeats = False

    def _pump(self) -> None:
        for raw in self.proc.stdout:
            self._lines.put(raw)
        self._lines.put(None)

    # The timeouts only catch a hang: a first start or a first job on a loaded 2-core
    # machine imports torch, diffusers and friends, and loads models, which can take minutes.
    def wait_hello(self, timeout: float = 180):
        while self.hello is None:
            msg = self.next(timeout)
            self.startup.append(msg)
            if msg.type == "hello":
                self.hello = msg
        return self.hello

    def send(self, msg) -> None:
        line = msg if isinstance(msg, str) else json.dumps(msg)
        self.proc.stdin.write(line.encode("utf-8") + b"\n")
        self.proc.stdin.flush()

    def next(self, timeout: float = 120):
        while True:
            try:
                raw = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line from the worker within {timeout}s\n{self.stderr_text()}") from None
            if raw is None:
                raise AssertionError(f"the worker closed stdout (rc={self.proc.poll()})\n{self.stderr_text()}")
            assert raw.endswith(b"\n")
            msg = protocol.decode(raw.rstrip(b"\n"))
            if msg.type != "heartbeat" or self.keep_heartbeats:
                return msg
            self.heartbeats.append(msg)

    def until(self, done, timeout: float = 300) -> list:
        """Messages up to and including the first for which done(msg) holds."""
        deadline = time.monotonic() + timeout
        got = []
        while True:
            msg = self.next(max(0.1, deadline - time.monotonic()))
            got.append(msg)
            if done(msg):
                return got

    def finish(self, id: str, timeout: float = 300) -> list:
        """Messages of job id up to its result or error (the last one)."""
        return self.until(lambda m: m.type in ("result", "error") and m.id == id, timeout)

    def generate(self, output_dir, /, id: str | None = None, **overrides) -> tuple[str, list]:
        id = id or new_id()
        self.send({"type": "generate", "id": id, "request": request(output_dir, **overrides)})
        return id, self.finish(id)

    def ping(self, timeout: float = 60) -> None:
        id = new_id("ping")
        self.send({"type": "ping", "id": id})
        msgs = self.until(lambda m: m.type == "pong", timeout)
        assert msgs[-1].id == id

    def stderr_text(self) -> str:
        # pread: the file position is shared with the child, and a seek would move where
        # its next line is written.
        fd = self.stderr.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode("utf-8", "replace")

    def close(self, timeout: float = 15) -> int:
        try:
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@pytest.fixture(scope="session")
def worker(tiny_model):
    """One warm worker for the session: starting one costs seconds of imports. Tests leave
    it idle, with every line of their jobs read."""
    w = WorkerProcess()
    w.wait_hello()
    yield w
    w.close()
