"""Downloads a model from the Hugging Face hub into a folder of the model library.

    python -m atelier_worker.download base|refiner|vae|REPO --dest DIR [--files PATTERN ...]

Prints one JSON object a line on stdout: "plan" (the files and their sizes, from the hub's
file metadata), "progress" (bytes done of the total, the current file), then "done" or
"error" (with a kind and a message that says what to do). The exit code tells the kinds
apart (EXIT_* below). SIGTERM or SIGINT stop it cleanly: the partial file stays in
DIR/.atelier-download and the next run resumes it with an HTTP Range request.

Only what the studio loads is fetched: a diffusers folder's configs, tokenizers and fp16
safetensors weights (never the single-file copy, ONNX, Flax or pickle files beside them).
huggingface_hub gives the endpoint (HF_ENDPOINT), token, proxy and user agent; the transfer
itself is ours, because the hub library deletes a partial file when it is interrupted.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import signal
import sys
from dataclasses import dataclass

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_OFFLINE = 3
EXIT_DISK = 4
EXIT_CANCELLED = 5
EXIT_HUB = 6

# Room left free after the download, so that the disk is not filled to the last byte.
# ATELIER_DOWNLOAD_RESERVE_BYTES changes it (tests use it to act out a full disk).
DEFAULT_RESERVE = 512 * 1024 * 1024
PARTIAL_DIR = ".atelier-download"
CHUNK = 1024 * 1024

_COMPONENTS_BASE = ("unet", "vae", "text_encoder", "text_encoder_2")


def _diffusers_patterns(components: tuple[str, ...], tokenizers: tuple[str, ...]) -> list[str]:
    pats = ["model_index.json", "scheduler/scheduler_config.json"]
    for c in components:
        pats += [f"{c}/config.json", f"{c}/*.fp16.safetensors"]
    for t in tokenizers:
        pats.append(f"{t}/*")
    return pats


@dataclass(frozen=True)
class Preset:
    repo: str
    folder: str  # the folder name inside the model folder
    patterns: tuple[str, ...]
    what: str


PRESETS = {
    "base": Preset("stabilityai/stable-diffusion-xl-base-1.0", "stable-diffusion-xl-base-1.0",
                   tuple(_diffusers_patterns(_COMPONENTS_BASE, ("tokenizer", "tokenizer_2"))),
                   "SDXL base 1.0 (diffusers, fp16)"),
    "refiner": Preset("stabilityai/stable-diffusion-xl-refiner-1.0", "stable-diffusion-xl-refiner-1.0",
                      tuple(_diffusers_patterns(("unet", "vae", "text_encoder_2"), ("tokenizer_2",))),
                      "SDXL refiner 1.0 (diffusers, fp16)"),
    "vae": Preset("madebyollin/sdxl-vae-fp16-fix", "sdxl-vae-fp16-fix",
                  ("config.json", "diffusion_pytorch_model.safetensors"),
                  "SDXL VAE fixed for fp16"),
}


class Failure(Exception):
    def __init__(self, kind: str, code: int, message: str):
        super().__init__(message)
        self.kind, self.code, self.message = kind, code, message


class Cancelled(BaseException):
    """Raised from the signal handler, so that even a blocking read stops at once."""


def emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def offline_failure(repo: str, cause: object) -> Failure:
    from huggingface_hub import constants

    endpoint = constants.ENDPOINT
    if constants.HF_HUB_OFFLINE:
        return Failure("offline", EXIT_OFFLINE,
                       f"Cannot download {repo}: HF_HUB_OFFLINE is set, so the Hugging Face hub is not contacted. "
                       "Unset it and try again, or copy the model onto this machine and add its folder to the library.")
    return Failure("offline", EXIT_OFFLINE,
                   f"Cannot reach the Hugging Face hub ({endpoint}) to download {repo}: {cause}. Check the network "
                   "connection (and HTTPS_PROXY if you use a proxy) and try again: what was downloaded is kept and "
                   "the download resumes. Without a network, copy the model from another machine and add its "
                   "folder to the library.")


def default_patterns(names: list[str]) -> list[str]:
    """For a repository without a preset: configs, tokenizers and safetensors weights,
    the fp16 variant where there is one, and no root checkpoint beside a diffusers folder."""
    keep = [n for n in names if n.endswith((".json", ".txt", ".safetensors")) and not n.startswith(".")]
    if "model_index.json" in keep:
        keep = [n for n in keep if "/" in n or not n.endswith(".safetensors")]
    fp16 = {n.replace(".fp16.safetensors", ".safetensors") for n in keep if n.endswith(".fp16.safetensors")}
    return [n for n in keep if n not in fp16]


def select(siblings: list[tuple[str, int]], patterns: list[str] | None) -> list[tuple[str, int]]:
    names = [n for n, _ in siblings]
    wanted = set(default_patterns(names)) if not patterns else {
        n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)}
    files = [(n, s) for n, s in siblings if n in wanted]
    # The files that mark a complete model are written last: a half-downloaded folder must
    # not look like a model to the library.
    marker = ("model_index.json", "config.json")
    return sorted(files, key=lambda f: (f[0] in marker, f[0]))


def plan(repo: str, revision: str, patterns: list[str] | None) -> tuple[str, list[tuple[str, int]]]:
    """Asks the hub for the repository's files and their sizes; returns the commit and the files."""
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    except GatedRepoError:
        raise Failure("hub", EXIT_HUB, f"{repo} asks you to accept its licence first: accept it on the hub's page "
                      "of the model, then log in with `hf auth login` (or set HF_TOKEN) and try again.") from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise Failure("hub", EXIT_HUB, f"The hub has no model {repo} (revision {revision}). Check the name "
                      "(owner/name, as on the model's page); a private model needs HF_TOKEN.") from None
    except (OfflineModeIsEnabled, httpx.TransportError) as e:
        raise offline_failure(repo, e) from None
    except HfHubHTTPError as e:
        raise Failure("hub", EXIT_HUB, f"The hub refused to list {repo}: {e}") from None
    siblings = [(s.rfilename, int(s.size or (s.lfs.size if s.lfs else 0) or 0)) for s in info.siblings or []]
    files = select(siblings, patterns)
    if not files:
        raise Failure("hub", EXIT_HUB, f"{repo} has no files Atelier can load (diffusers folders with "
                      "safetensors weights, or .safetensors files).")
    return info.sha or revision, files


def free_bytes(path: str) -> int:
    while not os.path.exists(path):
        path = os.path.dirname(path) or "."
    return shutil.disk_usage(path).free


def have(dest: str, partial: str, name: str, size: int) -> int:
    """Bytes of name already on disk: all of them when the file is complete."""
    final = os.path.join(dest, name)
    if os.path.isfile(final) and os.path.getsize(final) == size:
        return size
    part = os.path.join(partial, name + ".part")
    return min(os.path.getsize(part), size) if os.path.isfile(part) else 0


def disk_full(dest: str, need: int, free: int) -> Failure:
    return Failure("disk", EXIT_DISK,
                   f"Not enough free disk space in {dest}: the download needs {need / 1e9:.1f} GB more and "
                   f"{free / 1e9:.1f} GB are free (keeping {reserve() / 1e9:.1f} GB spare). Free some space or "
                   "choose another folder (--dest, or put another model folder first in the library) and try again.")


def reserve() -> int:
    try:
        return int(os.environ.get("ATELIER_DOWNLOAD_RESERVE_BYTES", DEFAULT_RESERVE))
    except ValueError:
        return DEFAULT_RESERVE


class Progress:
    def __init__(self, total: int, done: int):
        self.total, self.done, self.last, self.file = total, done, -1, ""

    def add(self, name: str, file_done: int, file_size: int, n: int, final: bool = False) -> None:
        self.done += n
        # About two hundred lines for the whole download, plus one as each file starts and ends.
        if final or name != self.file or self.done - self.last >= max(self.total // 200, CHUNK):
            self.last, self.file = self.done, name
            emit("progress", file=name, file_done=file_done, file_size=file_size, done=self.done, total=self.total)


def fetch(repo: str, commit: str, name: str, size: int, dest: str, partial: str, prog: Progress) -> None:
    import httpx
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session

    final = os.path.join(dest, name)
    if os.path.isfile(final) and os.path.getsize(final) == size:
        return
    part = os.path.join(partial, name + ".part")
    os.makedirs(os.path.dirname(part), exist_ok=True)
    got = os.path.getsize(part) if os.path.isfile(part) else 0
    if got > size:
        os.remove(part)
        got = 0
    headers = build_hf_headers(library_name="atelier")
    if 0 < got < size:
        headers["Range"] = f"bytes={got}-"
    url = hf_hub_url(repo, name, revision=commit)
    timeout = httpx.Timeout(constants.HF_HUB_DOWNLOAD_TIMEOUT, connect=constants.HF_HUB_ETAG_TIMEOUT)
    try:
        if got < size or size == 0:
            with get_session().stream("GET", url, headers=headers, follow_redirects=True, timeout=timeout) as r:
                if r.status_code == 416:  # the part is stale: start the file again
                    os.remove(part)
                    return fetch(repo, commit, name, size, dest, partial, prog)
                if r.status_code >= 400:
                    raise Failure("hub", EXIT_HUB, f"The hub answered {r.status_code} for {name} of {repo}; "
                                  "try again later.")
                mode = "ab" if r.status_code == 206 and got else "wb"
                if mode == "wb" and got:
                    prog.done -= got  # the server ignored the range: the file starts over
                    got = 0
                with open(part, mode) as f:
                    for chunk in r.iter_bytes():  # as it comes: a dropped connection loses nothing
                        f.write(chunk)
                        got += len(chunk)
                        prog.add(name, got, size, len(chunk))
    except httpx.TransportError as e:
        raise offline_failure(repo, f"{type(e).__name__} while downloading {name}") from None
    except OSError as e:
        if e.errno == 28:  # ENOSPC
            raise disk_full(dest, size - got, free_bytes(dest)) from None
        raise
    if got != size and size:
        raise Failure("offline", EXIT_OFFLINE, f"The transfer of {name} ended early ({got} of {size} bytes). "
                      "Try again: the download resumes where it stopped.")
    os.makedirs(os.path.dirname(final), exist_ok=True)
    os.replace(part, final)
    prog.add(name, got, size, 0, final=True)


def download(repo: str, dest: str, patterns: list[str] | None, revision: str = "main") -> str:
    dest = os.path.abspath(dest)
    commit, files = plan(repo, revision, patterns)
    # Keyed by commit, so that parts of an older revision are never glued to a newer one.
    partial = os.path.join(dest, PARTIAL_DIR, commit)
    total = sum(s for _, s in files)
    done = sum(have(dest, partial, n, s) for n, s in files)
    free = free_bytes(dest)
    emit("plan", repo=repo, revision=commit, dest=dest, total=total, done=done, free=free,
         files=[{"name": n, "size": s} for n, s in files])
    if total - done + reserve() > free:
        raise disk_full(dest, total - done, free)
    prog = Progress(total, done)
    for name, size in files:
        fetch(repo, commit, name, size, dest, partial, prog)
    shutil.rmtree(os.path.join(dest, PARTIAL_DIR), ignore_errors=True)
    return dest


def _cancel(signum, _frame):
    # A Ctrl-C reaches both the app and this process, and the app then sends SIGTERM:
    # the second signal must not interrupt the clean stop of the first.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Cancelled(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m atelier_worker.download", description=__doc__.split("\n")[0])
    ap.add_argument("repo", help="base, refiner, vae, or a hub repository (owner/name)")
    ap.add_argument("--dest", required=True, help="the model's folder (created)")
    ap.add_argument("--files", nargs="*", help="glob patterns of the files to fetch (default: what Atelier loads)")
    ap.add_argument("--revision", default="main")
    args = ap.parse_args(argv)
    preset = PRESETS.get(args.repo)
    repo = preset.repo if preset else args.repo
    if "/" not in repo:
        emit("error", kind="usage",
             message=f"{repo!r} is neither base, refiner, vae nor a hub repository (owner/name).")
        return EXIT_USAGE
    patterns = args.files or (list(preset.patterns) if preset else None)
    signal.signal(signal.SIGTERM, _cancel)
    signal.signal(signal.SIGINT, _cancel)
    try:
        emit("done", repo=repo, dest=download(repo, args.dest, patterns, args.revision))
        return EXIT_OK
    except Cancelled:
        emit("error", kind="cancelled", message="The download was cancelled; what was downloaded is kept, and "
             "downloading again resumes it.")
        return EXIT_CANCELLED
    except Failure as f:
        emit("error", kind=f.kind, message=f.message)
        return f.code
    except OSError as e:
        emit("error", kind="failed", message=f"The download could not write to {args.dest}: {e}. Check the "
             "folder's permissions, or choose another with --dest.")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
