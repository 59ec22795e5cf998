"""AUTOMATIC1111-compatible `parameters` text, so other tools can read our PNGs' settings."""

from __future__ import annotations

import json

from .spec import SAMPLER_NAMES, SCHEDULE_NAMES


def _quote(value: str) -> str:
    # A1111 splits the settings line on ", " and ": ", so such values travel as JSON strings.
    if any(c in value for c in ",:\n"):
        return json.dumps(value, ensure_ascii=False)
    return value


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def number(v: float) -> str:
    """A number as the settings line writes it: 1 not 1.0, 0.75, -1.5."""
    return _num(round(float(v), 6))


def quote(value: str) -> str:
    return _quote(value)


def format_parameters(*, prompt: str, negative_prompt: str, steps: int, scheduler: str,
                      cfg: float, seed: int, width: int, height: int, model: str,
                      version: str, schedule: str = "",
                      extra: list[tuple[str, str]] | None = None) -> str:
    """`extra` holds further (key, value) settings, written between Model and Version;
    their values must already be quoted where they need it (see quote)."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    settings = [
        ("Steps", str(steps)),
        ("Sampler", SAMPLER_NAMES[scheduler]),
        ("Schedule type", SCHEDULE_NAMES[schedule]),
        ("CFG scale", _num(cfg)),
        ("Seed", str(seed)),
        ("Size", f"{width}x{height}"),
        ("Model", _quote(model)),
        *(extra or []),
        ("Version", _quote(f"Atelier {version}")),
    ]
    lines.append(", ".join(f"{k}: {v}" for k, v in settings))
    return "\n".join(lines)
