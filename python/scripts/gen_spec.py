"""Writes atelier_worker/spec.py from docs/protocol/spec.json (make generate).

Standard library only. tests/test_spec.py calls render() to find a stale spec.py.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
SPEC = os.path.join(HERE, os.pardir, os.pardir, "docs", "protocol", "spec.json")
OUT = os.path.join(HERE, os.pardir, "atelier_worker", "spec.py")
COMMAND = "python3 python/scripts/gen_spec.py (or make generate)"

DIRECTIONS = {"go_to_worker": "that Go sends the worker", "worker_to_go": "that the worker sends Go"}


class SpecError(ValueError):
    pass


def load(path: str = SPEC) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f, object_pairs_hook=_no_duplicates)


def _no_duplicates(pairs: list) -> dict:
    out = {}
    for k, v in pairs:
        if k in out:
            raise SpecError(f"key {k!r} given twice")
        out[k] = v
    return out


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def comment(self, text: str, indent: str = "") -> None:
        self.lines += textwrap.wrap(text, 92 - len(indent), initial_indent=indent + "# ",
                                    subsequent_indent=indent + "# ")

    def assign(self, name: str, value: str) -> None:
        self.lines.append(f"{name} = {value}")

    def blank(self) -> None:
        self.lines.append("")


def _q(s: str) -> str:
    # A JSON string is a Python literal too, in the double quotes the worker's code uses.
    return json.dumps(s)


def _literal(v) -> str:
    if isinstance(v, bool) or v is None or not isinstance(v, (str, int, float)):
        raise SpecError(f"expected a string or number, got {v!r}")
    return _q(v) if isinstance(v, str) else repr(v)


def _tuple(items: list[str], indent: int) -> str:
    """A tuple literal: one line while it fits, else filled lines of at most 96 characters."""
    parts = [_q(s) for s in items]
    one = "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"
    if indent + len(one) <= 96:
        return one
    lines, line = [], "   "
    for p in parts:
        if len(line) + 1 + len(p) + 1 > 96:
            lines.append(line)
            line = "   "
        line += f" {p},"
    return "(\n" + "\n".join(lines + [line]) + "\n)"


def _mapping(keys: list[str], values: dict) -> str:
    body = "".join(f"    {_q(k)}: {_q(values[k])},\n" for k in keys)
    return "MappingProxyType({\n" + body + "})"


def _strings(v, at: str) -> tuple[str, list[str]]:
    """A list of strings, given plain or as {description, values}."""
    desc = ""
    if isinstance(v, dict):
        desc = v.get("description", "")
        if "values" not in v:
            raise SpecError(f"{at}: a list given as an object needs values")
        v = v["values"]
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise SpecError(f"{at} must be a list of strings")
    return desc, v


def _objects(v, at: str) -> list[dict]:
    if not isinstance(v, list) or not all(isinstance(o, dict) for o in v):
        raise SpecError(f"{at} must be a list of objects")
    return v


def _scalars(w: _Writer, group: dict, prefix: str) -> None:
    """A group of named values; an entry is a plain value or {value, description}."""
    if "description" in group:
        w.comment(group["description"])
    for key, v in group.items():
        if key == "description":
            continue
        name = prefix + key.upper()
        if isinstance(v, dict):
            if "value" not in v:
                raise SpecError(f"{key}: an entry given as an object needs a value")
            if v.get("description"):
                w.comment(f"{name}: {v['description']}.")
            v = v["value"]
        w.assign(name, _literal(v))


def _list(w: _Writer, name: str, doc: str, v, at: str) -> None:
    desc, items = _strings(v, at)
    w.comment(doc)
    if desc:
        w.comment(desc)
    w.assign(name, _tuple(items, len(name) + 3))


def _protocol_version(w, v):
    w.comment("The worker protocol version that hello carries.")
    w.assign("PROTOCOL_VERSION", _literal(v))


def _line(w, v):
    _scalars(w, v, "")


def _message_types(w, v):
    for direction, names in v.items():
        if direction not in DIRECTIONS:
            raise SpecError(f"message_types.{direction}: unknown direction")
        _, names = _strings(names, f"message_types.{direction}")
        w.comment(f"Message types {DIRECTIONS[direction]}.")
        for n in names:
            w.assign("MSG_" + n.upper(), _q(n))
        w.assign(direction.upper(), _tuple(names, len(direction) + 3))
        w.blank()
    w.lines.pop()


def _error_codes(w, v):
    codes = []
    w.comment("Error codes, the closed set of an error message's code.")
    for i, o in enumerate(_objects(v, "error_codes")):
        if not isinstance(o.get("code"), str):
            raise SpecError(f"error_codes[{i}].code must be a string")
        codes.append(o["code"])
        if o.get("description"):
            w.comment(f"ERR_{o['code'].upper()}: {o['description']}.")
        w.assign("ERR_" + o["code"].upper(), _q(o["code"]))
    w.comment("Every error code, in documentation order.")
    w.assign("ERROR_CODES", _tuple(codes, 14))


def _stages(w, v):
    names = []
    w.comment("Progress stages, in the order a job meets them.")
    for i, o in enumerate(_objects(v, "stages")):
        if not isinstance(o.get("name"), str):
            raise SpecError(f"stages[{i}].name must be a string")
        names.append(o["name"])
        if o.get("description"):
            w.comment(f"STAGE_{o['name'].upper()}: {o['description']}.")
        w.assign("STAGE_" + o["name"].upper(), _q(o["name"]))
    w.comment("The values of a progress message's stage, in the order a job meets them.")
    w.assign("STAGES", _tuple(names, 9))


def _named(v, at: str, fields: tuple[str, ...], optional: tuple[str, ...] = ()) -> list[dict]:
    items = _objects(v, at)
    for i, o in enumerate(items):
        for f in fields:
            if not isinstance(o.get(f), str):
                raise SpecError(f"{at}[{i}].{f} must be a string")
        for f in optional:
            if f in o and not isinstance(o[f], str):
                raise SpecError(f"{at}[{i}].{f} must be a string")
    return items


def _schedulers(w, v):
    items = _named(v, "schedulers", ("name", "a1111", "diffusers"))
    names = [o["name"] for o in items]
    w.comment("The request's scheduler names, in menu order.")
    w.assign("SCHEDULERS", _tuple(names, 13))
    w.comment("A scheduler's AUTOMATIC1111 sampler name.")
    w.assign("SAMPLER_NAMES", _mapping(names, {o["name"]: o["a1111"] for o in items}))
    w.comment("The diffusers class the worker builds for a scheduler.")
    w.assign("SCHEDULER_CLASSES", _mapping(names, {o["name"]: o["diffusers"] for o in items}))


def _schedules(w, v):
    items = _named(v, "schedules", ("name", "a1111"), ("config_flag", "description"))
    names = [o["name"] for o in items]
    flagged = [o["name"] for o in items if o.get("config_flag")]
    w.comment('The sigma schedules a request may ask for; "" is the scheduler\'s own.')
    w.assign("SCHEDULES", _tuple(names, 12))
    w.comment("A schedule's AUTOMATIC1111 \"Schedule type\" name.")
    w.assign("SCHEDULE_NAMES", _mapping(names, {o["name"]: o["a1111"] for o in items}))
    w.comment("The scheduler config flag that turns a schedule on.")
    w.assign("SCHEDULE_CONFIG_FLAGS",
             _mapping(flagged, {o["name"]: o["config_flag"] for o in items if o.get("config_flag")}))


def _limits(w, v):
    w.comment(v.get("description", "Limits of a request, inclusive."))
    for key, lim in v.items():
        if key == "description":
            continue
        if not isinstance(lim, dict):
            raise SpecError(f"limits.{key} must be an object")
        if lim.get("description"):
            w.comment(f"{key}: {lim['description']}.")
        for k, x in lim.items():
            names = {"min": f"MIN_{key.upper()}", "max": f"MAX_{key.upper()}",
                     "multiple": f"{key.upper()}_MULTIPLE"}
            if k == "description":
                continue
            if k not in names:
                raise SpecError(f"limits.{key}: unknown key {k!r} (min, max, multiple, description)")
            w.assign(names[k], _literal(x))


GROUPS = {
    "protocol_version": _protocol_version,
    "line": _line,
    "message_types": _message_types,
    "error_codes": _error_codes,
    "stages": _stages,
    "device_kinds": lambda w, v: _list(w, "DEVICE_KINDS", "The values of hello's device.", v,
                                       "device_kinds"),
    "schedulers": _schedulers,
    "schedules": _schedules,
    "controlnet_types": lambda w, v: _list(w, "CONTROLNET_TYPES",
                                           "The ControlNet kinds a request may name.", v,
                                           "controlnet_types"),
    "features": lambda w, v: _list(w, "FEATURES", "What hello's capabilities.features may list.",
                                   v, "features"),
    "heartbeat": lambda w, v: _scalars(w, v, "HEARTBEAT_"),
    "limits": _limits,
    "defaults": lambda w, v: _scalars(w, v, "DEFAULT_"),
    "form": lambda w, v: _scalars(w, v, "FORM_"),
    "names": lambda w, v: _scalars(w, v, ""),
    "infotext_keys": lambda w, v: _scalars(w, v, "INFOTEXT_"),
    "infotext_unit_keys": lambda w, v: _scalars(w, v, "INFOTEXT_UNIT_"),
    "infotext_values": lambda w, v: _scalars(w, v, "INFOTEXT_"),
    "pickle_exts": lambda w, v: _list(w, "PICKLE_EXTS", "The extensions of pickle formats.", v,
                                      "pickle_exts"),
}


def render(spec: dict) -> str:
    """The text of spec.py for the parsed spec."""
    w = _Writer()
    w.lines += [
        "# Code generated by python/scripts/gen_spec.py from docs/protocol/spec.json; DO NOT EDIT.",
        '"""The worker protocol\'s shared constants (docs/protocol/spec.json), which Go\'s',
        "core/spec is generated from too. Edit the JSON, then run make generate.\"\"\"",
        "",
        "from types import MappingProxyType",
    ]
    for key, v in spec.items():
        if key == "description":
            continue
        if key not in GROUPS:
            raise SpecError(f"no Python generator for the top-level key {key!r}: "
                            "add one to python/scripts/gen_spec.py")
        w.blank()
        GROUPS[key](w, v)
    return "\n".join(w.lines) + "\n"


def main() -> int:
    try:
        text = render(load())
    except (OSError, ValueError) as e:
        print(f"gen_spec: {e}", file=sys.stderr)
        return 1
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
