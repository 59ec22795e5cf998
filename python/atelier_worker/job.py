"""One accepted generate job (no torch or diffusers here: the stdin reader makes these while
the heavy imports may still run)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from .protocol import Request


@dataclass
class Job:
    id: str
    request: Request
    cancel: threading.Event = field(default_factory=threading.Event)
