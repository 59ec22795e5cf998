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
