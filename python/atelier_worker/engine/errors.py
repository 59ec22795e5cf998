"""How a job ends early: a protocol error of a given code, or a cancel."""

from __future__ import annotations


class JobFailed(Exception):
    """Ends a job with a protocol error of the given code."""

    def __init__(self, code: str, message: str, field: str = "", detail: str = ""):
        super().__init__(message)
        self.code, self.message, self.field, self.detail = code, message, field, detail


class Cancelled(Exception):
    """Raised out of the step callback, so the pipeline stops before the next step."""
