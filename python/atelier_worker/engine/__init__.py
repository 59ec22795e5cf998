"""The worker's engine: runs generate jobs on diffusers' SDXL pipelines. engine.py keeps a
job's numbered steps; each step's work lives in the module named for it (checks, model_cache
and loaders, prepare, denoise, decode, output, preview)."""

from .engine import Engine
from .errors import Cancelled, JobFailed

__all__ = ["Cancelled", "Engine", "JobFailed"]
