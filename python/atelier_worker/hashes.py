"""AUTOMATIC1111's file hashes, which its `parameters` text ("Model hash", "Lora hashes")
and Civitai use to tell a model file apart from others of the same name."""

from __future__ import annotations

import hashlib
import os

_HASHES: dict[tuple, str] = {}


def file_sha256(path: str) -> str:
    """The file's SHA-256 in hex, remembered by (path, size, mtime): a checkpoint of 7 GB
    is read once per worker, not once per job."""
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def short_hash(path: str) -> str:
    """AUTOMATIC1111's short hash: the first 10 hex digits of the file's SHA-256."""
    return file_sha256(path)[:10]
