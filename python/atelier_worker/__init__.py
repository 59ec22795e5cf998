"""Atelier's Stable Diffusion XL worker: speaks docs/protocol.md over stdin/stdout."""

__version__ = "0.1.0"
