"""Wire protocol v1 (docs/protocol.md): the messages as msgspec structs, strict decode, encode.

msgspec checks each line's types as Go's decoder does (a boolean is no number, 4.0 is no
integer); the rules on values follow, written per message (ranges, names, rules between
fields). Every error names its field. Unknown fields are ignored, so that a newer peer can
add fields; a null field is an absent one. The shared constants come from spec.py.

This module must not import torch: the worker uses it before the slow imports.
"""

from __future__ import annotations

import functools
import json
import math
import re
import typing
import unicodedata
from collections.abc import Callable
from typing import Any, ClassVar, Union

import msgspec
from msgspec import field as _field

from . import spec

_ID_RE = re.compile(f"[{spec.ID_CHARS}]{{{spec.MIN_ID_LEN},{spec.MAX_ID_LEN}}}")


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


class Lora(msgspec.Struct):
    path: str
    weight: float = spec.DEFAULT_LORA_WEIGHT


class ControlNet(msgspec.Struct):
    type: str
    model: str
    image: str
    scale: float = spec.DEFAULT_CONTROL_SCALE
    start: float = spec.DEFAULT_CONTROL_START
    end: float = spec.DEFAULT_CONTROL_END
    canny_low: int = spec.DEFAULT_CANNY_LOW
    canny_high: int = spec.DEFAULT_CANNY_HIGH


class Request(msgspec.Struct):
    prompt: str
    model: str
    steps: int
    cfg: float
    width: int
    height: int
    seed: int
    output_dir: str
    negative_prompt: str = ""
    scheduler: str = spec.DEFAULT_SCHEDULER
    batch_size: int = spec.DEFAULT_BATCH_SIZE
    preview_every: int = spec.DEFAULT_PREVIEW_EVERY
    schedule: str = spec.DEFAULT_SCHEDULE
    loras: list[Lora] = _field(default_factory=list)
    controlnets: list[ControlNet] = _field(default_factory=list)
    refiner: str = ""
    refiner_switch: float = spec.DEFAULT_REFINER_SWITCH
    vae: str = ""
    init_image: str = ""
    strength: float = spec.DEFAULT_STRENGTH
    mask_image: str = ""
    mask_blur: int = spec.DEFAULT_MASK_BLUR
    mask_padding: int = spec.DEFAULT_MASK_PADDING
    upscaler: str = ""
    upscale: float = spec.DEFAULT_UPSCALE
    hires_scale: float = 0.0     # 0: no hires pass
    hires_steps: int = spec.DEFAULT_HIRES_STEPS  # 0: the job's steps
    hires_strength: float = spec.DEFAULT_HIRES_STRENGTH
    upscale_only: bool = False   # enlarge init_image with the upscaler; nothing is generated


def hires_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The size of the hires pass: the first pass's, scaled and rounded to a multiple of 8."""
    m = spec.SIZE_MULTIPLE
    return max(m, int(round(width * scale / m)) * m), max(m, int(round(height * scale / m)) * m)


class Generate(msgspec.Struct):
    type: ClassVar[str] = spec.MSG_GENERATE
    id: str
    request: Request


class Cancel(msgspec.Struct):
    type: ClassVar[str] = spec.MSG_CANCEL
    id: str


class Ping(msgspec.Struct):
    type: ClassVar[str] = spec.MSG_PING
    id: str


class Unload(msgspec.Struct):
    type: ClassVar[str] = spec.MSG_UNLOAD


class Shutdown(msgspec.Struct):
    type: ClassVar[str] = spec.MSG_SHUTDOWN


# worker -> Go -------------------------------------------------------------


class Loading(msgspec.Struct):
    type: ClassVar[str] = spec.MSG_LOADING
    message: str


class Device(msgspec.Struct):
    name: str
    kind: str
    memory_bytes: int


class Capabilities(msgspec.Struct):
    schedulers: list[str]
    controlnet_types: list[str]
    features: list[str]
    # Scheduler -> the non-default schedules it supports (an addition: optional on decode).
    schedules: dict[str, list[str]] = _field(default_factory=dict)


class Hello(msgspec.Struct):
    type: ClassVar[str] = spec.MSG_HELLO
    protocol: int
    worker_version: str
    device: str
    dtype: str
    devices: list[Device]
    capabilities: Capabilities
    versions: dict[str, str]
    # Where the engine runs (an addition): this worker's host and pid, or the Ray actor's.
    host: str = ""
    pid: int = 0


class Accepted(msgspec.Struct):
    type: ClassVar[str] = spec.MSG_ACCEPTED
    id: str


class Progress(msgspec.Struct, omit_defaults=True):
    type: ClassVar[str] = spec.MSG_PROGRESS
    id: str
    stage: str
    step: int
    total: int
    elapsed_s: float
    note: str = ""  # an addition: optimizing's reason when the fast path is off (said once)


class Preview(msgspec.Struct):
    type: ClassVar[str] = spec.MSG_PREVIEW
    id: str
    step: int
    path: str


class Image(msgspec.Struct):
    path: str
    seed: int
    width: int
    height: int


class Metrics(msgspec.Struct):
    total_s: float
    load_s: float
    denoise_s: float
    its: float
    device: str
    dtype: str
    peak_mem_bytes: int
    # Additions, absent from older workers: the VAE decode produced NaN/inf and was redone
    # in float32; the batch ran in this many chunks after running out of memory; the torch
    # and diffusers versions and the speed settings the job ran with (`history verify`).
    vae_fallback: bool = False
    batch_chunks: int = 1
    versions: dict[str, str] = _field(default_factory=dict)
    speed: dict[str, str] = _field(default_factory=dict)


class Result(msgspec.Struct):
    type: ClassVar[str] = spec.MSG_RESULT
    id: str
    images: list[Image]
    metrics: Metrics
    # The preprocessed control images (one per request controlnet), when there were any.
    control_images: list[str] = _field(default_factory=list)


class Error(msgspec.Struct):
    type: ClassVar[str] = spec.MSG_ERROR
    id: str
    code: str
    message: str
    detail: str = ""
    field: str = ""


class Pong(msgspec.Struct):
    type: ClassVar[str] = spec.MSG_PONG
    id: str


class Heartbeat(msgspec.Struct):
    type: ClassVar[str] = spec.MSG_HEARTBEAT
    id: str


Message = Union[Generate, Cancel, Ping, Unload, Shutdown,
                Loading, Hello, Accepted, Progress, Preview, Result, Error, Pong, Heartbeat]

_TYPES: dict[str, type] = {cls.type: cls for cls in typing.get_args(Message)}


# Types: msgspec, its errors said as the rules below say theirs -----------------------------

# What each type a field expects is called in an error.
_EXPECTED = {"int": "an integer", "float": "a finite number", "str": "a string",
             "array": "a list", "object": "an object", "bool": "a boolean"}
# Boolean fields whose error says it otherwise.
_BOOL_WORDS = {"upscale_only": "true or false"}
_MSGSPEC_ERROR = re.compile(r"(?P<what>.*?)(?: - at `\$(?P<at>[^`]*)`)?")
_PATH_PART = re.compile(r"\.(\w+)|\[(\d+)\]")


@functools.cache
def _struct_fields(cls) -> dict[str, Any]:
    return {f.name: f.type for f in msgspec.structs.fields(cls)}


def _nulls_absent(value: Any, typ: Any) -> Any:
    """value with the null fields of its objects left out (a null boolean stays, and is
    refused), for a value of type typ."""
    if isinstance(typ, type) and issubclass(typ, msgspec.Struct) and isinstance(value, dict):
        fields = _struct_fields(typ)
        return {k: _nulls_absent(v, fields[k]) for k, v in value.items()
                if k in fields and (v is not None or fields[k] is bool)}
    if typing.get_origin(typ) is list and isinstance(value, list):
        (item,) = typing.get_args(typ)
        return [_nulls_absent(v, item) for v in value]
    return value


def _at(obj: Any, path: str) -> Any:
    for key, index in _PATH_PART.findall(path):
        obj = obj.get(key) if key and isinstance(obj, dict) else \
            obj[int(index)] if index and isinstance(obj, list) else None
    return obj


def _convert(obj: Any, cls):
    """obj (a decoded JSON value) as an instance of struct cls."""
    try:
        return msgspec.convert(_nulls_absent(obj, cls), cls, strict=True)
    except msgspec.ValidationError as e:
        m = _MSGSPEC_ERROR.fullmatch(str(e))
        what, at = m["what"], m["at"] or ""
        missing = re.fullmatch(r"Object missing required field `(\w+)`", what)
        if missing:
            raise ProtocolError("is required", _field_name(f"{at}.{missing[1]}")) from None
        wrong = re.fullmatch(r"Expected `(\w+)`, got `\w+`", what)
        name = _field_name(at)
        if wrong:
            want = _BOOL_WORDS.get(name, _EXPECTED.get(wrong[1], wrong[1]))
            raise ProtocolError(f"must be {want}, got {_kind(_at(obj, at))}", name) from None
        raise ProtocolError(what, name) from None


def _field_name(at: str) -> str:
    # A request's fields go by their bare name, anything else by its path in the message.
    return at.removeprefix(".").removeprefix("request.")


# Rules on values ------------------------------------------------------------------------


def _nonblank(v: str, path: str) -> None:
    if not v.strip():
        raise ProtocolError("must not be empty", path)


def _no_controls(v: str, path: str, text: bool) -> None:
    # A PNG's tEXt chunk may not carry control characters (a NUL ends its text): the
    # prompts may hold newlines and tabs, file names nothing of the kind.
    for at, c in enumerate(v, 1):
        if unicodedata.category(c) == "Cc" and not (text and c in "\n\t"):
            allowed = " other than newline and tab" if text else ""
            raise ProtocolError(f"must not hold control characters{allowed}: U+{ord(c):04X} at "
                                f"character {at}", path)


def _range(v: float, lo: float | None, hi: float | None, path: str) -> None:
    if isinstance(v, float) and not math.isfinite(v):
        raise ProtocolError(f"must be a finite number, got {_kind(v)}", path)
    if lo is not None and hi is not None and not lo <= v <= hi:
        raise ProtocolError(f"must be between {_fmt(lo)} and {_fmt(hi)}, got {_fmt(v)}", path)
    if lo is not None and v < lo:
        raise ProtocolError(f"must be at least {_fmt(lo)}, got {_fmt(v)}", path)


def _one_of(value: str, allowed: tuple[str, ...], path: str) -> None:
    if value not in allowed:
        raise ProtocolError(f"unknown value {value!r} (known: {', '.join(allowed)})", path)


def _str_list(items: Any, path: str) -> None:
    if items is None:
        raise ProtocolError("is required", path)
    if not isinstance(items, list):
        raise ProtocolError(f"must be a list, got {_kind(items)}", path)
    for i, s in enumerate(items):
        if not isinstance(s, str):
            raise ProtocolError(f"must be a string, got {_kind(s)}", f"{path}[{i}]")


def _id(m: dict, allow_empty: bool = False) -> str:
    v = m.get("id")
    if v in (None, "") and allow_empty:
        return ""
    if v is None:
        raise ProtocolError("is required", "id")
    if not isinstance(v, str):
        raise ProtocolError(f"must be a string, got {_kind(v)}", "id")
    if not _ID_RE.fullmatch(v):
        raise ProtocolError(f"must be {spec.MIN_ID_LEN}-{spec.MAX_ID_LEN} characters of A-Z a-z 0-9 _ . -",
                            "id")
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


def check_request(r: Request) -> Request:
    """Checks a generate request's values by the rules of docs/protocol.md, naming the
    field; fills in what an empty value means."""
    _nonblank(r.prompt, "prompt")
    _nonblank(r.model, "model")
    _no_controls(r.prompt, "prompt", text=True)
    _no_controls(r.negative_prompt, "negative_prompt", text=True)
    for key in ("model", "refiner", "vae", "init_image", "mask_image", "upscaler"):
        _no_controls(getattr(r, key), key, text=False)
    for i, lora in enumerate(r.loras):
        _no_controls(lora.path, f"loras[{i}].path", text=False)
    for i, cn in enumerate(r.controlnets):
        _no_controls(cn.model, f"controlnets[{i}].model", text=False)
        _no_controls(cn.image, f"controlnets[{i}].image", text=False)
    r.scheduler = r.scheduler or spec.DEFAULT_SCHEDULER
    _one_of(r.scheduler, spec.SCHEDULERS, "scheduler")
    _range(r.steps, spec.MIN_STEPS, spec.MAX_STEPS, "steps")
    _range(r.cfg, spec.MIN_CFG, spec.MAX_CFG, "cfg")
    for key in ("width", "height"):
        v = getattr(r, key)
        _range(v, spec.MIN_SIZE, spec.MAX_SIZE, key)
        if v % spec.SIZE_MULTIPLE:
            raise ProtocolError(f"must be a multiple of {spec.SIZE_MULTIPLE}, got {v}", key)
    _range(r.seed, spec.MIN_SEED, spec.MAX_SEED, "seed")
    # Go omits a zero batch_size and preview_every (omitempty), so absent means the default.
    _range(r.batch_size, spec.MIN_BATCH, spec.MAX_BATCH, "batch_size")
    _range(r.preview_every, 0, None, "preview_every")
    _nonblank(r.output_dir, "output_dir")
    if not r.output_dir.startswith("/") and not re.match(r"^[A-Za-z]:[\\/]", r.output_dir):
        raise ProtocolError(f"must be an absolute path, got {r.output_dir!r}", "output_dir")
    _one_of(r.schedule, spec.SCHEDULES, "schedule")

    for i, lora in enumerate(r.loras):
        _nonblank(lora.path, f"loras[{i}].path")
        _range(lora.weight, spec.MIN_LORA_WEIGHT, spec.MAX_LORA_WEIGHT, f"loras[{i}].weight")
    if len(r.loras) > spec.MAX_LORAS:
        raise ProtocolError(f"must hold at most {spec.MAX_LORAS} LoRAs, got {len(r.loras)}", "loras")

    for i, cn in enumerate(r.controlnets):
        p = f"controlnets[{i}]"
        _one_of(cn.type, spec.CONTROLNET_TYPES, p + ".type")
        _nonblank(cn.model, p + ".model")
        _nonblank(cn.image, p + ".image")
        _range(cn.scale, spec.MIN_CONTROL_SCALE, spec.MAX_CONTROL_SCALE, p + ".scale")
        _range(cn.start, spec.MIN_FRACTION, spec.MAX_FRACTION, p + ".start")
        _range(cn.end, spec.MIN_FRACTION, spec.MAX_FRACTION, p + ".end")
        _range(cn.canny_low, spec.MIN_CANNY, spec.MAX_CANNY, p + ".canny_low")
        _range(cn.canny_high, spec.MIN_CANNY, spec.MAX_CANNY, p + ".canny_high")
        if cn.start >= cn.end:
            raise ProtocolError(f"must be greater than start ({_fmt(cn.start)}), got {_fmt(cn.end)}",
                                p + ".end")
        if cn.canny_low > cn.canny_high:
            raise ProtocolError(f"must not be below canny_low ({cn.canny_low}), got {cn.canny_high}",
                                p + ".canny_high")
    if len(r.controlnets) > spec.MAX_CONTROLNETS:
        raise ProtocolError(f"must hold at most {spec.MAX_CONTROLNETS} ControlNets, got "
                            f"{len(r.controlnets)}", "controlnets")

    switch = r.refiner_switch
    _range(switch, spec.MIN_FRACTION, spec.MAX_FRACTION, "refiner_switch")
    if r.refiner and (switch <= 0 or switch >= 1):
        raise ProtocolError(f"must be above 0 and below 1, got {_fmt(switch)}", "refiner_switch")
    if r.mask_image and not r.init_image:
        raise ProtocolError("needs init_image: a mask marks the part of an image to repaint",
                            "mask_image")
    hires = r.hires_scale
    _range(hires, 0, spec.MAX_HIRES, "hires_scale")
    if hires:
        if hires < spec.MIN_HIRES:
            raise ProtocolError(f"must be 0 (off) or between {_fmt(spec.MIN_HIRES)} and "
                                f"{_fmt(spec.MAX_HIRES)}, got {_fmt(hires)}", "hires_scale")
        if r.init_image:
            raise ProtocolError("is for text-to-image: with an init image, ask for the larger "
                                "size directly", "hires_scale")
        big = hires_size(r.width, r.height, hires)
        if max(big) > spec.MAX_SIZE:
            raise ProtocolError(f"makes the image {big[0]}x{big[1]}, past the largest size "
                                f"({spec.MAX_SIZE})", "hires_scale")
    if r.upscale_only and not r.init_image:
        raise ProtocolError("needs init_image: the picture to enlarge", "upscale_only")
    if r.upscale_only and not r.upscaler:
        raise ProtocolError("needs an upscaler: lanczos or an upscaler model", "upscale_only")
    _range(r.hires_strength, spec.MIN_FRACTION, spec.MAX_FRACTION, "hires_strength")
    if hires and r.hires_strength <= 0:
        raise ProtocolError(f"must be above 0 and at most 1, got {_fmt(r.hires_strength)}",
                            "hires_strength")
    _range(r.strength, spec.MIN_FRACTION, spec.MAX_FRACTION, "strength")
    _range(r.mask_blur, spec.MIN_MASK_BLUR, spec.MAX_MASK_BLUR, "mask_blur")
    _range(r.mask_padding, spec.MIN_MASK_PADDING, spec.MAX_MASK_PADDING, "mask_padding")
    _range(r.upscale, spec.MIN_UPSCALE, spec.MAX_UPSCALE, "upscale")
    _range(r.hires_steps, 0, spec.MAX_STEPS, "hires_steps")
    return r


def decode_request(r: dict) -> Request:
    """Validates a generate request by the rules of docs/protocol.md; errors name the field."""
    return check_request(_convert(r, Request))


# Per-type rules ---------------------------------------------------------------------------


def _generate(m: Generate) -> None:
    check_request(m.request)


def _hello(m: Hello) -> None:
    for i, d in enumerate(m.devices):
        _range(d.memory_bytes, 0, None, f"devices[{i}].memory_bytes")
    # Any positive version decodes: refusing a different one is the bridge's decision,
    # and it needs the number to say so clearly.
    _range(m.protocol, 1, None, "protocol")
    _nonblank(m.worker_version, "worker_version")
    _one_of(m.device, spec.DEVICE_KINDS, "device")
    _nonblank(m.dtype, "dtype")
    _range(m.pid, 0, None, "pid")


def _hello_maps(m: dict) -> None:
    # msgspec names no key of a map in its errors: its two maps are read here first.
    c = m.get("capabilities")
    schedules = c.get("schedules") if isinstance(c, dict) else None
    if isinstance(schedules, dict):
        for k, v in schedules.items():
            _str_list(v, f"capabilities.schedules.{k}")
    versions = m.get("versions")
    for k, v in (versions.items() if isinstance(versions, dict) else ()):
        if not isinstance(v, str):
            raise ProtocolError(f"must be a string, got {_kind(v)}", f"versions.{k}")


def _progress(m: Progress) -> None:
    _one_of(m.stage, spec.STAGES, "stage")
    _range(m.total, 0, None, "total")
    _range(m.step, 0, None, "step")
    if m.step > m.total:
        raise ProtocolError(f"must not exceed total ({m.total}), got {m.step}", "step")
    _range(m.elapsed_s, 0, None, "elapsed_s")


def _preview(m: Preview) -> None:
    _range(m.step, 0, None, "step")
    _nonblank(m.path, "path")


def _result(m: Result) -> None:
    for i, im in enumerate(m.images):
        p = f"images[{i}]"
        _nonblank(im.path, p + ".path")
        _range(im.seed, spec.MIN_SEED, spec.MAX_SEED, p + ".seed")
        _range(im.width, 1, None, p + ".width")
        _range(im.height, 1, None, p + ".height")
    if not m.images:
        raise ProtocolError("must hold at least one image", "images")
    x = m.metrics
    for key in ("total_s", "load_s", "denoise_s", "its", "peak_mem_bytes"):
        _range(getattr(x, key), 0, None, f"metrics.{key}")
    _range(x.batch_chunks, 1, None, "metrics.batch_chunks")


def _error(m: Error) -> None:
    _one_of(m.code, spec.ERROR_CODES, "code")
    _nonblank(m.message, "message")


_RULES: dict[type, Callable[[Any], None]] = {Generate: _generate, Hello: _hello, Progress: _progress,
                                              Preview: _preview, Result: _result, Error: _error}


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
    if len(line) > spec.MAX_LINE_BYTES:
        raise ProtocolError(f"line is longer than {spec.MAX_LINE_BYTES} bytes")
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
    t = m.get("type")
    if t is None:
        raise ProtocolError("is required", "type")
    if not isinstance(t, str):
        raise ProtocolError(f"must be a string, got {_kind(t)}", "type")
    cls = _TYPES.get(t)
    if cls is None:
        raise ProtocolError(f"unknown message type {t!r}", "type",
                            id=m["id"] if isinstance(m.get("id"), str) and _ID_RE.fullmatch(m["id"]) else "")
    if "id" in cls.__struct_fields__:
        m = {**m, "id": _id(m, allow_empty=cls is Error)}
    if cls is Hello:
        _hello_maps(m)
    try:
        msg = _convert(m, cls)
        _RULES.get(cls, lambda _: None)(msg)
    except ProtocolError as e:
        if cls is Generate:
            e.id = m["id"]  # the worker answers a bad request under its id
        raise
    return msg


def _builtin(value: Any) -> Any:
    # Subclasses of str, int and float (torch.__version__, numpy's float64) are written as their base type.
    for base in (str, int, float):
        if isinstance(value, base):
            return base(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def encode(msg: Message) -> str:
    """One protocol line for msg, without the trailing newline."""
    fields = msgspec.to_builtins(msg, enc_hook=_builtin)
    # ASCII escapes keep a line valid UTF-8 even when a string holds a lone surrogate.
    return json.dumps({"type": msg.type, **fields}, allow_nan=False, separators=(",", ":"))
