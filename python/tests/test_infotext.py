"""AUTOMATIC1111 `parameters` text."""

from atelier_worker import spec
from atelier_worker.infotext import SAMPLER_NAMES, format_parameters

BASE = dict(prompt="a lighthouse", negative_prompt="", steps=4, scheduler="euler", cfg=5.0,
            seed=7, width=64, height=64, model="tiny", version="0.1.0")


def test_matches_the_documented_example():
    text = format_parameters(**{**BASE, "negative_prompt": "fog"})
    assert text == ("a lighthouse\nNegative prompt: fog\nSteps: 4, Sampler: Euler, Schedule type: "
                    "Automatic, CFG scale: 5, Seed: 7, Size: 64x64, Model: tiny, Version: Atelier 0.1.0")


def test_no_negative_line_when_empty_and_fractional_cfg():
    text = format_parameters(**{**BASE, "cfg": 7.5, "scheduler": "dpmpp_2m"})
    assert "Negative prompt" not in text
    assert "CFG scale: 7.5, " in text and "Sampler: DPM++ 2M, " in text


def test_values_with_separators_are_quoted():
    text = format_parameters(**{**BASE, "model": "sdxl, v1: final"})
    assert 'Model: "sdxl, v1: final", ' in text


def test_every_protocol_scheduler_has_an_a1111_name():
    assert set(SAMPLER_NAMES) == set(spec.SCHEDULERS)
    assert SAMPLER_NAMES["euler_a"] == "Euler a" and SAMPLER_NAMES["ddim"] == "DDIM"


def test_model_hash_goes_before_model_as_a1111_writes_it():
    text = format_parameters(**{**BASE, "model": "sd_xl_base_1.0", "model_hash": "31e35c80fc"})
    assert "Size: 64x64, Model hash: 31e35c80fc, Model: sd_xl_base_1.0, " in text
    assert "Model hash" not in format_parameters(**BASE), "a model folder has no file to hash"


def test_loras_are_tagged_in_the_prompt_once():
    text = format_parameters(**{**BASE, "loras": [("detail", 0.5), ("tiny-lora", 1.0)]})
    assert text.split("\n")[0] == "a lighthouse <lora:detail:0.5> <lora:tiny-lora:1>"
    text = format_parameters(**{**BASE, "prompt": "a <lora:detail:0.5> lighthouse",
                                "loras": [("detail", 0.5), ("x", -1.25)]})
    assert text.split("\n")[0] == "a <lora:detail:0.5> lighthouse <lora:x:-1.25>"
    text = format_parameters(**{**BASE, "prompt": "", "loras": [("detail", 2)]})
    assert text.split("\n")[0] == "<lora:detail:2>"


def test_short_hash_is_a1111s_and_remembered(tmp_path):
    import hashlib
    import os

    from atelier_worker import hashes

    f = tmp_path / "m.safetensors"
    f.write_bytes(b"weights")
    assert hashes.short_hash(str(f)) == hashlib.sha256(b"weights").hexdigest()[:10]
    st = os.stat(f)
    f.write_bytes(b"WEIGHTS")  # same size and mtime: the remembered hash stands
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert hashes.short_hash(str(f)) == hashlib.sha256(b"weights").hexdigest()[:10]
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: hashed again
    assert hashes.short_hash(str(f)) == hashlib.sha256(b"WEIGHTS").hexdigest()[:10]
