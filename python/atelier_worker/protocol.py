"""Wire protocol v1 (docs/protocol.md): dataclasses at the edge, strict decode, encode.

This module must not import torch: the worker uses it before the slow imports.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field as _field
from typing import Any, Callable, Union

PROTOCOL_VERSION = 1
MAX_LINE_BYTES = 1 << 20

SCHEDULERS = ("euler", "euler_a", "ddim", "dpmpp_2m", "dpmpp_sde", "heun", "dpm2", "dpm2_a",
              "lms", "unipc")
# The sigma schedules a scheduler may be asked for; "" is the scheduler's own.
SCHEDULES = ("", "karras", "exponential", "beta")
CONTROLNET_TYPES = ("canny", "depth", "pose", "lineart", "scribble", "tile", "softedge", "other")
DEVICES = ("cuda", "mps", "cpu")
STAGES = ("loading_model", "creating_tiny_model", "preprocessing", "encoding", "denoising",
          "refining", "decoding", "hires", "upscaling", "saving")
ERROR_CODES = (
    "invalid_request",
    "model_not_found",
    "unsupported",
    "out_of_memory",
    "cancelled",
    "worker_crashed",
    "internal",
)

MIN_STEPS, MAX_STEPS = 1, 150
MIN_CFG, MAX_CFG = 0.0, 30.0
MIN_SIZE, MAX_SIZE, SIZE_MULTIPLE = 64, 4096, 8
MIN_BATCH, MAX_BATCH = 1, 8
MAX_SEED = (1 << 53) - 1
MAX_LORAS, MIN_LORA_WEIGHT, MAX_LORA_WEIGHT = 16, -5.0, 5.0
MAX_CONTROLNETS = 4
MAX_MASK_BLUR, MAX_MASK_PADDING = 64, 1024
MIN_UPSCALE, MAX_UPSCALE = 1.0, 4.0
MIN_HIRES, MAX_HIRES = 1.0, 4.0

_ID_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


class ProtocolError(ValueError):
    """A line that breaks the protocol. `field` names the offending field ("" when the line
    is not a JSON object at all); `id` is the message's id when it could be read, so that
    the worker can address its error reply."""

    def __init__(self, message: str, field: str = "", id: str = ""):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.id = id
        self.reason = message


# Go -> worker -------------------------------------------------------------


@dataclass
class Lora:
    path: str
    weight: float = 1.0


@dataclass
class ControlNet:
    type: str
    model: str
    image: str
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    canny_low: int = 100
    canny_high: int = 200


@dataclass
class Request:
    prompt: str
    model: str
    steps: int
    cfg: float
    width: int
    height: int
    seed: int
    output_dir: str
    negative_prompt: str = ""
    scheduler: str = "euler"
    batch_size: int = 1
    preview_every: int = 0
    schedule: str = ""
    loras: list[Lora] = _field(default_factory=list)
    controlnets: list[ControlNet] = _field(default_factory=list)
    refiner: str = ""
    refiner_switch: float = 0.8
    vae: str = ""
    init_image: str = ""
    strength: float = 0.75
    mask_image: str = ""
    mask_blur: int = 4
    mask_padding: int = 0
    upscaler: str = ""
    upscale: float = 2.0
    hires_scale: float = 0.0     # 0: no hires pass
    hires_steps: int = 0         # 0: the job's steps
    hires_strength: float = 0.5
    upscale_only: bool = False   # enlarge init_image with the upscaler; nothing is generated


def hires_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The size of the hires pass: the first pass's, scaled and rounded to a multiple of 8."""
    def one(v: int) -> int:
        return max(SIZE_MULTIPLE, int(round(v * scale / SIZE_MULTIPLE)) * SIZE_MULTIPLE)
    return one(width), one(height)


@dataclass
class Generate:
    id: str
    request: Request
    type: str = _field(default="generate", init=False)


@dataclass
class Cancel:
    id: str
    type: str = _field(default="cancel", init=False)


@dataclass
class Ping:
    id: str
    type: str = _field(default="ping", init=False)


@dataclass
class Unload:
    type: str = _field(default="unload", init=False)


@dataclass
class Shutdown:
    type: str = _field(default="shutdown", init=False)


# worker -> Go -------------------------------------------------------------


@dataclass
class Loading:
    message: str
    type: str = _field(default="loading", init=False)


@dataclass
class Device:
    name: str
    kind: str
    memory_bytes: int


@dataclass
class Capabilities:
    schedulers: list[str]
    controlnet_types: list[str]
    features: list[str]
    # Scheduler -> the non-default schedules it supports (an addition: optional on decode).
    schedules: dict[str, list[str]] = _field(default_factory=dict)


@dataclass
class Hello:
    protocol: int
    worker_version: str
    device: str
    dtype: str
    devices: list[Device]
    capabilities: Capabilities
    versions: dict[str, str]
    type: str = _field(default="hello", init=False)


@dataclass
class Accepted:
    id: str
    type: str = _field(default="accepted", init=False)


@dataclass
class Progress:
    id: str
    stage: str
    step: int
    total: int
    elapsed_s: float
    type: str = _field(default="progress", init=False)


@dataclass
class Preview:
    id: str
    step: int
    path: str
    type: str = _field(default="preview", init=False)


@dataclass
class Image:
    path: str
    seed: int
    width: int
    height: int


@dataclass
class Metrics:
    total_s: float
    load_s: float
    denoise_s: float
    its: float
    device: str
    dtype: str
    peak_mem_bytes: int
    # Additions, absent from older workers: the VAE decode produced NaN/inf and was redone
    # in float32; the batch ran in this many chunks after running out of memory.
    vae_fallback: bool = False
    batch_chunks: int = 1


@dataclass
class Result:
    id: str
    images: list[Image]
    metrics: Metrics
    # The preprocessed control images (one per request controlnet), when there were any.
    control_images: list[str] = _field(default_factory=list)
    type: str = _field(default="result", init=False)


@dataclass
class Error:
    id: str
    code: str
    message: str
    detail: str = ""
    field: str = ""
    type: str = _field(default="error", init=False)


@dataclass
class Pong:
    id: str
    type: str = _field(default="pong", init=False)


Message = Union[
    Generate, Cancel, Ping, Unload, Shutdown,
    Loading, Hello, Accepted, Progress, Preview, Result, Error, Pong,
]

GO_TO_WORKER = ("generate", "cancel", "ping", "unload", "shutdown")
WORKER_TO_GO = ("loading", "hello", "accepted", "progress", "preview", "result", "error", "pong")


# Field readers. Each takes the containing object and the key, and names the field
# by `path` in its error. Booleans are rejected wherever a number is expected,
# because Go's decoder refuses them too.

_MISSING = object()


def _get(obj: dict, key: str, path: str, default: Any = _MISSING) -> Any:
    if key in obj and obj[key] is not None:
        return obj[key]
    if default is _MISSING:
        raise ProtocolError("is required", path)
    return default


def _str(obj: dict, key: str, path: str = "", default: Any = _MISSING, nonblank: bool = False) -> str:
    path = path or key
    v = _get(obj, key, path, default)
    if not isinstance(v, str):
        raise ProtocolError(f"must be a string, got {_kind(v)}", path)
    if nonblank and not v.strip():
        raise ProtocolError("must not be empty", path)
    return v


def _int(obj: dict, key: str, path: str = "", default: Any = _MISSING,
         lo: int | None = None, hi: int | None = None) -> int:
    path = path or key
    v = _get(obj, key, path, default)
    # A float with an integral value (4.0) is still refused: Go will not decode it into an int.
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProtocolError(f"must be an integer, got {_kind(v)}", path)
    _range(v, lo, hi, path)
    return v


def _num(obj: dict, key: str, path: str = "", default: Any = _MISSING,
         lo: float | None = None, hi: float | None = None) -> float:
    path = path or key
    v = _get(obj, key, path, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ProtocolError(f"must be a finite number, got {_kind(v)}", path)
    _range(v, lo, hi, path)
    return float(v)


def _range(v: float, lo: float | None, hi: float | None, path: str) -> None:
    if lo is not None and hi is not None and not lo <= v <= hi:
        raise ProtocolError(f"must be between {_fmt(lo)} and {_fmt(hi)}, got {_fmt(v)}", path)
    if lo is not None and v < lo:
        raise ProtocolError(f"must be at least {_fmt(lo)}, got {_fmt(v)}", path)


def _obj(obj: dict, key: str, path: str = "") -> dict:
    path = path or key
    v = _get(obj, key, path)
    if not isinstance(v, dict):
        raise ProtocolError(f"must be an object, got {_kind(v)}", path)
    return v


def _list(obj: dict, key: str, path: str = "", default: Any = _MISSING) -> list:
    path = path or key
    v = _get(obj, key, path, default)
    if not isinstance(v, list):
        raise ProtocolError(f"must be a list, got {_kind(v)}", path)
    return v


def _str_list(obj: dict, key: str, path: str) -> list[str]:
    items = _list(obj, key, path)
    for i, s in enumerate(items):
        if not isinstance(s, str):
            raise ProtocolError(f"must be a string, got {_kind(s)}", f"{path}[{i}]")
    return list(items)


def _one_of(value: str, allowed: tuple[str, ...], path: str) -> str:
    if value not in allowed:
        raise ProtocolError(f"unknown value {value!r} (known: {', '.join(allowed)})", path)
    return value


def _id(obj: dict, allow_empty: bool = False) -> str:
    v = _str(obj, "id", default="" if allow_empty else _MISSING)
    if v == "" and allow_empty:
        return v
    if not _ID_RE.fullmatch(v):
        raise ProtocolError("must be 1-64 characters of A-Z a-z 0-9 _ . -", "id")
    return v


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return _fmt(v)
    if isinstance(v, str):
        return "a string"
    return "a list" if isinstance(v, list) else "an object"


def _fmt(v: float) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


# Per-type decoders ---------------------------------------------------------


def decode_request(r: dict) -> Request:
    """Validates a generate request by the rules of docs/protocol.md; errors name the field."""
    prompt = _str(r, "prompt", nonblank=True)
    model = _str(r, "model", nonblank=True)
    scheduler = _one_of(_str(r, "scheduler", default="euler") or "euler", SCHEDULERS, "scheduler")
    steps = _int(r, "steps", lo=MIN_STEPS, hi=MAX_STEPS)
    cfg = _num(r, "cfg", lo=MIN_CFG, hi=MAX_CFG)
    size = {}
    for key in ("width", "height"):
        v = _int(r, key, lo=MIN_SIZE, hi=MAX_SIZE)
        if v % SIZE_MULTIPLE:
            raise ProtocolError(f"must be a multiple of {SIZE_MULTIPLE}, got {v}", key)
        size[key] = v
    seed = _int(r, "seed", lo=0, hi=MAX_SEED)
    # Go omits a zero batch_size and preview_every (omitempty), so absent means the default.
    batch = _int(r, "batch_size", default=1, lo=MIN_BATCH, hi=MAX_BATCH)
    preview = _int(r, "preview_every", default=0, lo=0)
    output_dir = _str(r, "output_dir", nonblank=True)
    if not output_dir.startswith("/") and not re.match(r"^[A-Za-z]:[\\/]", output_dir):
        raise ProtocolError(f"must be an absolute path, got {output_dir!r}", "output_dir")
    schedule = _one_of(_str(r, "schedule", default=""), SCHEDULES, "schedule")

    loras = []
    for i, item in enumerate(_list(r, "loras", default=[])):
        p = f"loras[{i}]"
        if not isinstance(item, dict):
            raise ProtocolError(f"must be an object, got {_kind(item)}", p)
        loras.append(Lora(path=_str(item, "path", p + ".path", nonblank=True),
                          weight=_num(item, "weight", p + ".weight", default=1.0,
                                      lo=MIN_LORA_WEIGHT, hi=MAX_LORA_WEIGHT)))
    if len(loras) > MAX_LORAS:
        raise ProtocolError(f"must hold at most {MAX_LORAS} LoRAs, got {len(loras)}", "loras")

    controlnets = []
    for i, item in enumerate(_list(r, "controlnets", default=[])):
        p = f"controlnets[{i}]"
        if not isinstance(item, dict):
            raise ProtocolError(f"must be an object, got {_kind(item)}", p)
        cn = ControlNet(
            type=_one_of(_str(item, "type", p + ".type"), CONTROLNET_TYPES, p + ".type"),
            model=_str(item, "model", p + ".model", nonblank=True),
            image=_str(item, "image", p + ".image", nonblank=True),
            scale=_num(item, "scale", p + ".scale", default=1.0, lo=0, hi=2),
            start=_num(item, "start", p + ".start", default=0.0, lo=0, hi=1),
            end=_num(item, "end", p + ".end", default=1.0, lo=0, hi=1),
            canny_low=_int(item, "canny_low", p + ".canny_low", default=100, lo=0, hi=255),
            canny_high=_int(item, "canny_high", p + ".canny_high", default=200, lo=0, hi=255),
        )
        if cn.start >= cn.end:
            raise ProtocolError(f"must be greater than start ({_fmt(cn.start)}), got {_fmt(cn.end)}",
                                p + ".end")
        if cn.canny_low > cn.canny_high:
            raise ProtocolError(f"must not be below canny_low ({cn.canny_low}), got {cn.canny_high}",
                                p + ".canny_high")
        controlnets.append(cn)
    if len(controlnets) > MAX_CONTROLNETS:
        raise ProtocolError(f"must hold at most {MAX_CONTROLNETS} ControlNets, got {len(controlnets)}",
                            "controlnets")

    refiner = _str(r, "refiner", default="")
    switch = _num(r, "refiner_switch", default=0.8, lo=0, hi=1)
    if refiner and (switch <= 0 or switch >= 1):
        raise ProtocolError(f"must be above 0 and below 1, got {_fmt(switch)}", "refiner_switch")
    init_image = _str(r, "init_image", default="")
    mask_image = _str(r, "mask_image", default="")
    if mask_image and not init_image:
        raise ProtocolError("needs init_image: a mask marks the part of an image to repaint",
                            "mask_image")
    upscaler = _str(r, "upscaler", default="")
    hires = _num(r, "hires_scale", default=0.0, lo=0, hi=MAX_HIRES)
    if hires:
        if hires < MIN_HIRES:
            raise ProtocolError(f"must be 0 (off) or between {_fmt(MIN_HIRES)} and "
                                f"{_fmt(MAX_HIRES)}, got {_fmt(hires)}", "hires_scale")
        if init_image:
            raise ProtocolError("is for text-to-image: with an init image, ask for the larger "
                                "size directly", "hires_scale")
        big = hires_size(size["width"], size["height"], hires)
        if max(big) > MAX_SIZE:
            raise ProtocolError(f"makes the image {big[0]}x{big[1]}, past the largest size "
                                f"({MAX_SIZE})", "hires_scale")
    upscale_only = r.get("upscale_only", False)
    if not isinstance(upscale_only, bool):
        raise ProtocolError(f"must be true or false, got {_kind(upscale_only)}", "upscale_only")
    if upscale_only and not init_image:
        raise ProtocolError("needs init_image: the picture to enlarge", "upscale_only")
    if upscale_only and not upscaler:
        raise ProtocolError("needs an upscaler: lanczos or an upscaler model", "upscale_only")
    hires_strength = _num(r, "hires_strength", default=0.5, lo=0, hi=1)
    if hires and hires_strength <= 0:
        raise ProtocolError(f"must be above 0 and at most 1, got {_fmt(hires_strength)}",
                            "hires_strength")
    return Request(
        prompt=prompt, model=model, steps=steps, cfg=cfg, width=size["width"],
        height=size["height"], seed=seed, output_dir=output_dir,
        negative_prompt=_str(r, "negative_prompt", default=""), scheduler=scheduler,
        batch_size=batch, preview_every=preview, schedule=schedule, loras=loras,
        controlnets=controlnets, refiner=refiner, refiner_switch=switch,
        vae=_str(r, "vae", default=""), init_image=init_image,
        strength=_num(r, "strength", default=0.75, lo=0, hi=1), mask_image=mask_image,
        mask_blur=_int(r, "mask_blur", default=4, lo=0, hi=MAX_MASK_BLUR),
        mask_padding=_int(r, "mask_padding", default=0, lo=0, hi=MAX_MASK_PADDING),
        upscaler=upscaler,
        upscale=_num(r, "upscale", default=2.0, lo=MIN_UPSCALE, hi=MAX_UPSCALE),
        hires_scale=hires, hires_steps=_int(r, "hires_steps", default=0, lo=0, hi=MAX_STEPS),
        hires_strength=hires_strength, upscale_only=upscale_only,
    )


def _generate(m: dict) -> Generate:
    id = _id(m)
    try:
        return Generate(id=id, request=decode_request(_obj(m, "request")))
    except ProtocolError as e:
        e.id = id
        raise


def _hello(m: dict) -> Hello:
    devices = []
    for i, d in enumerate(_list(m, "devices")):
        p = f"devices[{i}]"
        if not isinstance(d, dict):
            raise ProtocolError(f"must be an object, got {_kind(d)}", p)
        devices.append(Device(name=_str(d, "name", p + ".name"), kind=_str(d, "kind", p + ".kind"),
                              memory_bytes=_int(d, "memory_bytes", p + ".memory_bytes", lo=0)))
    c = _obj(m, "capabilities")
    caps = Capabilities(
        schedulers=_str_list(c, "schedulers", "capabilities.schedulers"),
        controlnet_types=_str_list(c, "controlnet_types", "capabilities.controlnet_types"),
        features=_str_list(c, "features", "capabilities.features"),
    )
    schedules = c.get("schedules")
    if schedules is not None:
        if not isinstance(schedules, dict):
            raise ProtocolError(f"must be an object, got {_kind(schedules)}", "capabilities.schedules")
        caps.schedules = {k: _str_list(schedules, k, f"capabilities.schedules.{k}") for k in schedules}
    versions = _obj(m, "versions")
    for k, v in versions.items():
        if not isinstance(v, str):
            raise ProtocolError(f"must be a string, got {_kind(v)}", f"versions.{k}")
    # Any positive version decodes: refusing a different one is the bridge's decision,
    # and it needs the number to say so clearly.
    return Hello(
        protocol=_int(m, "protocol", lo=1),
        worker_version=_str(m, "worker_version", nonblank=True),
        device=_one_of(_str(m, "device"), DEVICES, "device"),
        dtype=_str(m, "dtype", nonblank=True),
        devices=devices, capabilities=caps, versions=dict(versions),
    )


def _progress(m: dict) -> Progress:
    id = _id(m)
    stage = _one_of(_str(m, "stage"), STAGES, "stage")
    total = _int(m, "total", lo=0)
    step = _int(m, "step", lo=0)
    if step > total:
        raise ProtocolError(f"must not exceed total ({total}), got {step}", "step")
    return Progress(id=id, stage=stage, step=step, total=total, elapsed_s=_num(m, "elapsed_s", lo=0))


def _result(m: dict) -> Result:
    id = _id(m)
    images = []
    for i, im in enumerate(_list(m, "images")):
        p = f"images[{i}]"
        if not isinstance(im, dict):
            raise ProtocolError(f"must be an object, got {_kind(im)}", p)
        images.append(Image(
            path=_str(im, "path", p + ".path", nonblank=True),
            seed=_int(im, "seed", p + ".seed", lo=0, hi=MAX_SEED),
            width=_int(im, "width", p + ".width", lo=1),
            height=_int(im, "height", p + ".height", lo=1),
        ))
    if not images:
        raise ProtocolError("must hold at least one image", "images")
    x = _obj(m, "metrics")
    metrics = Metrics(
        total_s=_num(x, "total_s", "metrics.total_s", lo=0),
        load_s=_num(x, "load_s", "metrics.load_s", lo=0),
        denoise_s=_num(x, "denoise_s", "metrics.denoise_s", lo=0),
        its=_num(x, "its", "metrics.its", lo=0),
        device=_str(x, "device", "metrics.device"),
        dtype=_str(x, "dtype", "metrics.dtype"),
        peak_mem_bytes=_int(x, "peak_mem_bytes", "metrics.peak_mem_bytes", lo=0),
    )
    fallback = x.get("vae_fallback", False)
    if not isinstance(fallback, bool):
        raise ProtocolError(f"must be a boolean, got {_kind(fallback)}", "metrics.vae_fallback")
    metrics.vae_fallback = fallback
    metrics.batch_chunks = _int(x, "batch_chunks", "metrics.batch_chunks", default=1, lo=1)
    controls = _str_list(m, "control_images", "control_images") if m.get("control_images") is not None else []
    return Result(id=id, images=images, metrics=metrics, control_images=controls)


def _error(m: dict) -> Error:
    return Error(
        id=_id(m, allow_empty=True),
        code=_one_of(_str(m, "code"), ERROR_CODES, "code"),
        message=_str(m, "message", nonblank=True),
        detail=_str(m, "detail", default=""),
        field=_str(m, "field", default=""),
    )


_DECODERS: dict[str, Callable[[dict], Message]] = {
    "generate": _generate,
    "cancel": lambda m: Cancel(id=_id(m)),
    "ping": lambda m: Ping(id=_id(m)),
    "unload": lambda m: Unload(),
    "shutdown": lambda m: Shutdown(),
    "loading": lambda m: Loading(message=_str(m, "message")),
    "hello": _hello,
    "accepted": lambda m: Accepted(id=_id(m)),
    "progress": _progress,
    "preview": lambda m: Preview(id=_id(m), step=_int(m, "step", lo=0),
                                 path=_str(m, "path", nonblank=True)),
    "result": _result,
    "error": _error,
    "pong": lambda m: Pong(id=_id(m)),
}


def _reject_constant(name: str) -> None:
    # Python's json accepts NaN and Infinity; JSON and Go's decoder do not.
    raise ValueError(f"{name} is not valid JSON")


def decode(line: str | bytes) -> Message:
    """Decodes and validates one protocol line of either direction.

    Raises ProtocolError naming the field; unknown fields are ignored."""
    if isinstance(line, str):
        try:
            line = line.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ProtocolError(f"line is not UTF-8: {e}") from None
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError(f"line is longer than {MAX_LINE_BYTES} bytes")
    try:
        line = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(f"line is not UTF-8: {e}") from None
    try:
        m = json.loads(line, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"line is not JSON: {e}") from None
    if not isinstance(m, dict):
        raise ProtocolError(f"line must be a JSON object, got {_kind(m)}")
    t = _str(m, "type")
    dec = _DECODERS.get(t)
    if dec is None:
        raise ProtocolError(f"unknown message type {t!r}", "type",
                            id=m["id"] if isinstance(m.get("id"), str) and _ID_RE.fullmatch(m["id"]) else "")
    return dec(m)


def encode(msg: Message) -> str:
    """One protocol line for msg, without the trailing newline."""
    d = dataclasses.asdict(msg)
    t = d.pop("type")
    # ASCII escapes keep a line valid UTF-8 even when a string holds a lone surrogate.
    return json.dumps({"type": t, **d}, allow_nan=False, separators=(",", ":"))
