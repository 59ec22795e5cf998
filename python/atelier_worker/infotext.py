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


def lora_tag(name: str, weight: float) -> str:
    return f"<lora:{name}:{number(weight)}>"


def with_lora_tags(prompt: str, loras: list[tuple[str, float]]) -> str:
    """The prompt with a `<lora:name:weight>` tag for each LoRA it does not tag already."""
    tags = [t for t in (lora_tag(n, w) for n, w in loras) if t not in prompt]
    return " ".join([prompt.rstrip(), *tags]) if prompt.strip() else " ".join(tags)


def format_parameters(*, prompt: str, negative_prompt: str, steps: int, scheduler: str,
                      cfg: float, seed: int, width: int, height: int, model: str,
                      version: str, schedule: str = "", model_hash: str = "",
                      loras: list[tuple[str, float]] | None = None,
                      extra: list[tuple[str, str]] | None = None) -> str:
    """`extra` holds further (key, value) settings, written between Model and Version;
    their values must already be quoted where they need it (see quote). `model_hash` is
    the checkpoint's short hash (hashes.short_hash), written before Model as A1111 does.
    `loras` are (name, weight): A1111 and Civitai read LoRAs from `<lora:name:weight>` tags
    in the prompt, so each goes at the prompt's end unless the prompt has its tag already."""
    prompt = with_lora_tags(prompt, loras or [])
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
        *([("Model hash", model_hash)] if model_hash else []),
        ("Model", _quote(model)),
        *(extra or []),
        ("Version", _quote(f"Atelier {version}")),
    ]
    lines.append(", ".join(f"{k}: {v}" for k, v in settings))
    return "\n".join(lines)
