"""A local Ray head for the tests of `queue run --ray`, and a way to kill an actor mid-job.

pytest imports it (head()); the Go end-to-end test runs it as a script:

    python tests/raykit.py head             prints the address, runs the head until stdin closes
    python tests/raykit.py kill-busy ADDR   kills an Atelier actor that has a job in hand and
                                            prints that job's id (waits for one)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

# Ray's own services, off for a test: no usage report, no dashboard, colourless logs.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_COLOR_PREFIX", "0")

NAMESPACE = "atelier"  # ray_proxy.NAMESPACE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Head:
    """`ray start --head --block` in a process group of its own, so that stop() ends every
    process of this cluster (and no other cluster on the machine, as `ray stop` would)."""

    def __init__(self, num_cpus: int = 2):
        ray = os.path.join(os.path.dirname(sys.executable), "ray")
        port = _free_port()
        # A short folder: Ray's unix sockets live under it (at most 107 characters).
        self.temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
        self.address = f"127.0.0.1:{port}"
        self.log = open(os.path.join(self.temp, "head.log"), "wb")
        self.proc = subprocess.Popen(
            [ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
             "--num-cpus", str(num_cpus), "--num-gpus", "0", "--include-dashboard=false",
             "--disable-usage-stats", "--object-store-memory", str(100 * 1024 * 1024),
             "--dashboard-agent-listen-port", str(_free_port()),
             "--temp-dir", self.temp],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def wait_ready(self, timeout: float = 300) -> None:
        """Waits until a driver can connect (the bound only catches a hang)."""
        deadline = time.monotonic() + timeout
        host, port = self.address.split(":")
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited {self.proc.returncode}:\n{self.log_text()}")
            try:
                socket.create_connection((host, int(port)), timeout=5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the Ray head did not listen within {timeout}s:\n"
                                       f"{self.log_text()}") from None
                time.sleep(0.5)
        r = subprocess.run([sys.executable, "-c", "import ray, sys; ray.init(address=sys.argv[1])",
                            self.address], capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"no driver could connect to the Ray head:\n{r.stderr}\n{self.log_text()}")

    def log_text(self) -> str:
        with open(os.path.join(self.temp, "head.log"), "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(60)
                break
            except subprocess.TimeoutExpired:
                continue
        # Ray's processes outlive their parent for a moment: the group goes at the last.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()
        subprocess.run(["rm", "-rf", self.temp], check=False)


def kill_busy(address: str, timeout: float = 600) -> str:
    """Kills an Atelier actor of the cluster that has a job in hand; returns the job's id."""
    import ray

    ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for a in ray.util.list_named_actors():
            try:
                actor = ray.get_actor(a, namespace=NAMESPACE)
                busy = ray.get(actor.busy.remote(), timeout=60)
            except ray.exceptions.RayError:
                continue  # an actor that died meanwhile
            if busy:
                ray.kill(actor, no_restart=True)
                return busy
        time.sleep(0.2)
    raise TimeoutError(f"no Atelier actor had a job within {timeout}s")


def main(argv: list[str]) -> int:
    if argv[:1] == ["head"]:
        head = Head()
        try:
            head.wait_ready()
            print(head.address, flush=True)
            sys.stdin.read()  # until the test closes it (or dies)
        finally:
            head.stop()
        return 0
    if argv[:1] == ["kill-busy"] and len(argv) == 2:
        print(kill_busy(argv[1]), flush=True)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
