"""atelier_worker/spec.py is what docs/protocol/spec.json generates, the worker types none of
its constants by hand, and the worker's decoder keeps the spec's defaults and bounds."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import itertools
import json
import os
import re

import pytest

from atelier_worker import infotext, protocol, schedulers, spec, tiny, worker

from conftest import PYTHON_DIR

PACKAGE = os.path.join(PYTHON_DIR, "atelier_worker")


def _gen_spec():
    path = os.path.join(PYTHON_DIR, "scripts", "gen_spec.py")
    mod_spec = importlib.util.spec_from_file_location("gen_spec", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def test_generated_spec_is_fresh():
    gen = _gen_spec()
    with open(spec.__file__, encoding="utf-8") as f:
        have = f.read()
    want = gen.render(gen.load())
    if have != want:
        diff = next((i + 1, h, w) for i, (h, w) in enumerate(
            itertools.zip_longest(have.splitlines(), want.splitlines(), fillvalue="")) if h != w)
        pytest.fail(f"python/atelier_worker/spec.py is stale: run {gen.COMMAND}\n"
                    f"first difference, line {diff[0]}:\n  spec.py has:        {diff[1]}\n"
                    f"  the spec generates: {diff[2]}", pytrace=False)


# The worker takes these constants from atelier_worker.spec: no module of it may type one
# again by hand (a module-level literal of a spec constant's name). Modules that import
# torch are read, not imported.
SPEC_NAMES = {n for n in vars(spec) if n.isupper()}


def _worker_files() -> list[str]:
    out = []
    for folder, dirs, files in os.walk(PACKAGE):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        out += [os.path.relpath(os.path.join(folder, f), PACKAGE) for f in files
                if f.endswith(".py") and f != "spec.py"]
    return sorted(out)


_OPS = {ast.Add: int.__add__, ast.Sub: int.__sub__, ast.Mult: int.__mul__,
        ast.LShift: int.__lshift__, ast.Pow: int.__pow__}


def _value(node: ast.expr):
    """A literal's value, integer arithmetic ((1 << 53) - 1) included."""
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        a, b = _value(node.left), _value(node.right)
        if isinstance(a, int) and isinstance(b, int):
            return _OPS[type(node.op)](a, b)
        raise ValueError("not integer arithmetic")
    return ast.literal_eval(node)


def _literals(filename: str) -> dict:
    """The module-level constants of a worker module that are literals, by name."""
    with open(os.path.join(PACKAGE, filename), encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename)
    out = {}
    for node in tree.body:
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        target, value = node.targets[0], node.value
        pairs = [(target, value)]
        if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
            pairs = list(zip(target.elts, value.elts))
        for t, v in pairs:
            if isinstance(t, ast.Name):
                try:
                    out[t.id] = _value(v)
                except ValueError:
                    pass  # not a literal: computed, or taken from elsewhere
    return out


@pytest.mark.parametrize("filename", _worker_files())
def test_no_spec_constant_is_typed_by_hand(filename):
    typed = sorted(SPEC_NAMES & set(_literals(filename)))
    assert not typed, (f"atelier_worker/{filename} types {', '.join(typed)} by hand: take "
                       "them from atelier_worker.spec (docs/protocol/spec.json)")


def test_tiny_names_match_spec():
    assert list(tiny.EXTRAS) == [spec.TINY_LORA, spec.TINY_CONTROLNET, spec.TINY_REFINER,
                                 spec.TINY_VAE, spec.TINY_UPSCALER, spec.TINY_SINGLE_FILE]


def test_request_id_rule_matches_spec():
    id_re = protocol._ID_RE
    one = re.compile(f"[{spec.ID_CHARS}]")
    for c in map(chr, range(32, 127)):
        assert bool(id_re.fullmatch(c)) == bool(one.fullmatch(c)), repr(c)
    assert id_re.fullmatch("a" * spec.MAX_ID_LEN) and not id_re.fullmatch("a" * (spec.MAX_ID_LEN + 1))
    assert not id_re.fullmatch("a" * (spec.MIN_ID_LEN - 1))


def test_features_match_spec(monkeypatch):
    # Without diffusers: the schedules come from a cache or an import, and are not checked here.
    monkeypatch.setattr(schedulers, "cached_capabilities", lambda cache_dir: {})
    features = worker.capabilities().features
    assert set(features) | {"upscale_model"} == set(spec.FEATURES)
    assert [f for f in spec.FEATURES if f in features] == features


def test_schedule_name_matches_spec():
    assert infotext.SCHEDULE_NAMES == dict(spec.SCHEDULE_NAMES)


# The decoder's own defaults and bounds (some typed as literals in decode_request).

def _request(**fields) -> dict:
    r = {"prompt": "p", "model": "tiny", "steps": 4, "cfg": 5, "width": 64, "height": 64,
         "seed": 1, "output_dir": "/tmp/out"}
    r.update(fields)
    return r


def _decodes(r: dict) -> bool:
    try:
        protocol.decode(json.dumps({"type": "generate", "id": "a", "request": r}))
    except protocol.ProtocolError:
        return False
    return True


def test_decoder_defaults_match_spec():
    m = protocol.decode(json.dumps({"type": "generate", "id": "a", "request": _request(
        loras=[{"path": "tiny-lora"}],
        controlnets=[{"type": "canny", "model": "tiny-controlnet", "image": "/tmp/e.png"}])}))
    r, lora, cn = m.request, m.request.loras[0], m.request.controlnets[0]
    want = {
        "scheduler": spec.DEFAULT_SCHEDULER, "schedule": spec.DEFAULT_SCHEDULE,
        "batch_size": spec.DEFAULT_BATCH_SIZE, "preview_every": spec.DEFAULT_PREVIEW_EVERY,
        "refiner_switch": spec.DEFAULT_REFINER_SWITCH, "strength": spec.DEFAULT_STRENGTH,
        "mask_blur": spec.DEFAULT_MASK_BLUR, "mask_padding": spec.DEFAULT_MASK_PADDING,
        "upscale": spec.DEFAULT_UPSCALE, "hires_steps": spec.DEFAULT_HIRES_STEPS,
        "hires_strength": spec.DEFAULT_HIRES_STRENGTH,
    }
    assert {k: getattr(r, k) for k in want} == want
    assert lora.weight == spec.DEFAULT_LORA_WEIGHT
    assert (cn.scale, cn.start, cn.end, cn.canny_low, cn.canny_high) == (
        spec.DEFAULT_CONTROL_SCALE, spec.DEFAULT_CONTROL_START, spec.DEFAULT_CONTROL_END,
        spec.DEFAULT_CANNY_LOW, spec.DEFAULT_CANNY_HIGH)


def test_message_class_defaults_match_spec():
    """The protocol classes' own defaults, apart from the decoder's."""
    def defaults(cls) -> dict:
        return {k: p.default for k, p in inspect.signature(cls).parameters.items()
                if p.default is not inspect.Parameter.empty}
    r = defaults(protocol.Request)
    assert (r["scheduler"], r["schedule"], r["batch_size"], r["preview_every"]) == (
        spec.DEFAULT_SCHEDULER, spec.DEFAULT_SCHEDULE, spec.DEFAULT_BATCH_SIZE,
        spec.DEFAULT_PREVIEW_EVERY)
    assert (r["refiner_switch"], r["strength"], r["mask_blur"], r["mask_padding"]) == (
        spec.DEFAULT_REFINER_SWITCH, spec.DEFAULT_STRENGTH, spec.DEFAULT_MASK_BLUR,
        spec.DEFAULT_MASK_PADDING)
    assert (r["upscale"], r["hires_steps"], r["hires_strength"]) == (
        spec.DEFAULT_UPSCALE, spec.DEFAULT_HIRES_STEPS, spec.DEFAULT_HIRES_STRENGTH)
    assert defaults(protocol.Lora)["weight"] == spec.DEFAULT_LORA_WEIGHT
    c = defaults(protocol.ControlNet)
    assert (c["scale"], c["start"], c["end"], c["canny_low"], c["canny_high"]) == (
        spec.DEFAULT_CONTROL_SCALE, spec.DEFAULT_CONTROL_START, spec.DEFAULT_CONTROL_END,
        spec.DEFAULT_CANNY_LOW, spec.DEFAULT_CANNY_HIGH)


def _cn(**fields) -> dict:
    return {"type": "canny", "model": "tiny-controlnet", "image": "/tmp/e.png", **fields}


# (what, a request with the value v, lowest, highest, step past each end)
BOUNDS = [
    ("steps", lambda v: _request(steps=v), spec.MIN_STEPS, spec.MAX_STEPS, 1),
    ("cfg", lambda v: _request(cfg=v), spec.MIN_CFG, spec.MAX_CFG, 0.5),
    ("width", lambda v: _request(width=v), spec.MIN_SIZE, spec.MAX_SIZE, spec.SIZE_MULTIPLE),
    ("batch_size", lambda v: _request(batch_size=v), spec.MIN_BATCH, spec.MAX_BATCH, 1),
    ("seed", lambda v: _request(seed=v), spec.MIN_SEED, spec.MAX_SEED, 1),
    ("loras", lambda v: _request(loras=[{"path": "tiny-lora"}] * v), 0, spec.MAX_LORAS, 1),
    ("lora weight", lambda v: _request(loras=[{"path": "tiny-lora", "weight": v}]),
     spec.MIN_LORA_WEIGHT, spec.MAX_LORA_WEIGHT, 0.5),
    ("controlnets", lambda v: _request(controlnets=[_cn()] * v), 0, spec.MAX_CONTROLNETS, 1),
    ("control scale", lambda v: _request(controlnets=[_cn(scale=v)]),
     spec.MIN_CONTROL_SCALE, spec.MAX_CONTROL_SCALE, 0.5),
    ("canny_low", lambda v: _request(controlnets=[_cn(canny_low=v, canny_high=spec.MAX_CANNY)]),
     spec.MIN_CANNY, spec.MAX_CANNY, 1),
    ("canny_high", lambda v: _request(controlnets=[_cn(canny_low=spec.MIN_CANNY, canny_high=v)]),
     spec.MIN_CANNY, spec.MAX_CANNY, 1),
    ("strength", lambda v: _request(strength=v), spec.MIN_FRACTION, spec.MAX_FRACTION, 0.5),
    ("hires_strength", lambda v: _request(hires_strength=v), spec.MIN_FRACTION,
     spec.MAX_FRACTION, 0.5),
    ("mask_blur", lambda v: _request(mask_blur=v), spec.MIN_MASK_BLUR, spec.MAX_MASK_BLUR, 1),
    ("mask_padding", lambda v: _request(mask_padding=v), spec.MIN_MASK_PADDING,
     spec.MAX_MASK_PADDING, 1),
    ("upscale", lambda v: _request(upscale=v), spec.MIN_UPSCALE, spec.MAX_UPSCALE, 0.5),
    ("hires_scale", lambda v: _request(hires_scale=v), spec.MIN_HIRES, spec.MAX_HIRES, 0.5),
    ("hires_steps", lambda v: _request(hires_steps=v), 0, spec.MAX_STEPS, 1),
]


@pytest.mark.parametrize("what,make,lo,hi,step", BOUNDS, ids=[b[0] for b in BOUNDS])
def test_decoder_bounds_match_spec(what, make, lo, hi, step):
    assert _decodes(make(lo)), f"{what} {lo} is refused"
    assert _decodes(make(hi)), f"{what} {hi} is refused"
    assert not _decodes(make(hi + step)), f"{what} {hi + step} is accepted"
    if what not in ("loras", "controlnets"):  # a list has no length below 0
        assert not _decodes(make(lo - step)), f"{what} {lo - step} is accepted"


# The parameters text: the worker writes these keys, Go's reader (core) reads them back.

def _string_constants() -> set[str]:
    out = set()
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py") and os.path.join(folder, name) != spec.__file__:
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    tree = ast.parse(f.read(), name)
                out |= {n.value for n in ast.walk(tree)
                        if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    return out


def test_infotext_words_are_the_specs():
    words = {k: v for k, v in vars(spec).items() if k.startswith("INFOTEXT_")}
    del words["INFOTEXT_HIRES_RESIZE"]  # A1111's, which the worker never writes
    consts = _string_constants()
    missing = [f"{k} = {v!r}" for k, v in words.items()
               if not any(c == v or c.startswith(v + " ") for c in consts)]
    assert not missing, "the worker's code no longer writes: " + ", ".join(missing)


def test_infotext_base_keys_are_the_specs():
    text = infotext.format_parameters(prompt="p", negative_prompt="n", steps=4, scheduler="euler",
                                      cfg=5, seed=1, width=64, height=64, model="tiny",
                                      version="9.9", schedule="karras")
    _, negative, settings = text.split("\n")
    assert negative == f"{spec.INFOTEXT_NEGATIVE_PROMPT} n"
    pairs = [kv.split(": ", 1) for kv in settings.split(", ")]
    assert [k for k, _ in pairs] == [
        spec.INFOTEXT_STEPS, spec.INFOTEXT_SAMPLER, spec.INFOTEXT_SCHEDULE_TYPE,
        spec.INFOTEXT_CFG_SCALE, spec.INFOTEXT_SEED, spec.INFOTEXT_SIZE, spec.INFOTEXT_MODEL,
        spec.INFOTEXT_VERSION]
    values = dict(pairs)
    assert values[spec.INFOTEXT_SAMPLER] == spec.SAMPLER_NAMES["euler"]
    assert values[spec.INFOTEXT_SCHEDULE_TYPE] == spec.SCHEDULE_NAMES["karras"]
    assert values[spec.INFOTEXT_VERSION] == spec.INFOTEXT_VERSION_PREFIX + "9.9"
