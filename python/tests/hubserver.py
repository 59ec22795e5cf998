"""A stand-in for the Hugging Face hub, for tests of the model download: it answers the two
endpoints huggingface_hub and atelier_worker.download use (the model info with file
metadata, and resolve with ETag, X-Repo-Commit, Content-Length and Range), serving the
tiny model in SDXL base's layout. Point HF_ENDPOINT at it.

    python hubserver.py --model TINY_DIR [--repo owner/name]   # prints its URL, serves until killed
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BASE_REPO = "stabilityai/stable-diffusion-xl-base-1.0"
COMMIT = "462165984030d82259a11f4367a4eed129e94a7b"


def hub_layout(model_dir: str) -> dict[str, bytes]:
    """The tiny model's files under the names the real SDXL base repository uses (fp16
    variant weights), plus files the download must leave alone: the single-file checkpoint,
    the fp32 weights beside the fp16 ones, and a component the pipeline does not use."""
    files: dict[str, bytes] = {}
    for folder, _, names in os.walk(model_dir):
        for n in names:
            path = os.path.join(folder, n)
            rel = os.path.relpath(path, model_dir).replace(os.sep, "/")
            with open(path, "rb") as f:
                data = f.read()
            if rel.endswith(".safetensors"):
                files[rel] = data  # the fp32 copy, which the download must skip
                rel = rel.replace(".safetensors", ".fp16.safetensors")
            files[rel] = data
    files["sd_xl_base_1.0.safetensors"] = b"\0" * 4096
    files["vae_1_0/config.json"] = b'{"_class_name": "AutoencoderKL"}'
    files["README.md"] = b"# tiny\n"
    return files


class Hub:
    """Serves repos (name -> {file: bytes}) on 127.0.0.1. drop[file] = n ends the first
    transfer of file after n bytes by closing the connection; hold[file] = (n, event) sends
    n bytes, then waits for the event before the rest. requests records (path, Range)."""

    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos = repos
        self.drop: dict[str, int] = {}
        self.hold: dict[str, tuple[int, threading.Event]] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.holding = threading.Event()  # set once a held transfer has sent its first part
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub.serve(self, body=False)

            def do_GET(self):
                hub.serve(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Hub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        for _, ev in self.hold.values():
            ev.set()
        self.server.shutdown()
        self.server.server_close()

    def _send(self, h, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        if body:
            h.wfile.write(body)

    def serve(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = h.path.split("?", 1)[0]
        self.requests.append((path, h.headers.get("Range")))
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        if m:
            return self.info(h, m.group(1))
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m and m.group(1) in self.repos and m.group(3) in self.repos[m.group(1)]:
            return self.file(h, m.group(3), self.repos[m.group(1)][m.group(3)], body)
        self._send(h, 404, {"X-Error-Code": "EntryNotFound", "Content-Length": "0"})

    def info(self, h, repo: str) -> None:
        if repo not in self.repos:
            return self._send(h, 404, {"X-Error-Code": "RepoNotFound", "Content-Length": "0"})
        siblings = []
        for name, data in sorted(self.repos[repo].items()):
            s = {"rfilename": name, "size": len(data), "blobId": hashlib.sha1(data).hexdigest()}
            if name.endswith(".safetensors"):
                s["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
            siblings.append(s)
        out = json.dumps({"id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                          "siblings": siblings}).encode()
        self._send(h, 200, {"Content-Type": "application/json", "Content-Length": str(len(out))}, out)

    def file(self, h, name: str, data: bytes, body: bool) -> None:
        start = 0
        rng = h.headers.get("Range")
        headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": COMMIT,
                   "Accept-Ranges": "bytes"}
        if rng:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                return self._send(h, 416, {**headers, "Content-Length": "0"})
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        part = data[start:]
        headers["Content-Length"] = str(len(part))
        self._send(h, 206 if rng else 200, headers)
        if not body:
            return
        if name in self.drop:
            n = self.drop.pop(name)
            h.wfile.write(part[:n])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
            return
        if name in self.hold:
            n, ev = self.hold.pop(name)
            h.wfile.write(part[:n])
            h.wfile.flush()
            self.holding.set()
            ev.wait()
            part = part[n:]
        try:
            h.wfile.write(part)
        except OSError:
            pass  # the client went away (a cancelled download)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="a tiny model folder to serve")
    ap.add_argument("--repo", default=BASE_REPO)
    args = ap.parse_args()
    with Hub({args.repo: hub_layout(args.model)}) as hub:
        print(hub.url, flush=True)
        sys.stdin.read()  # serves until stdin closes (the test ends)
    return 0


if __name__ == "__main__":
    sys.exit(main())
