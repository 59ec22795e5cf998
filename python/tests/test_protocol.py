"""The shared vectors, and the decoder's rules beyond them."""

import json
import os

import pytest

from atelier_worker import protocol, spec
from atelier_worker.protocol import ProtocolError, decode, encode

VECTORS = os.path.join(
    os.path.dirname(__file__), os.pardir, os.pardir, "docs", "protocol", "vectors"
)


def _vectors(kind: str) -> list[str]:
    folder = os.path.join(VECTORS, kind)
    return sorted(n for n in os.listdir(folder) if n.endswith(".jsonl"))


def _line(kind: str, name: str) -> bytes:
    with open(os.path.join(VECTORS, kind, name), "rb") as f:
        data = f.read()
    # One line a file, as a peer writes it.
    assert data.endswith(b"\n") and data.count(b"\n") == 1, name
    return data[:-1]


EXPECTED_FIELDS = json.load(open(os.path.join(VECTORS, "expected_fields.json"), encoding="utf-8"))


@pytest.mark.parametrize("name", _vectors("valid"))
def test_valid_vector_decodes_and_round_trips(name):
    msg = decode(_line("valid", name))
    assert msg.type == name.split("_")[0].removesuffix(".jsonl")
    assert decode(encode(msg)) == msg


@pytest.mark.parametrize("name", _vectors("invalid"))
def test_invalid_vector_is_rejected_naming_the_field(name):
    with pytest.raises(ProtocolError) as e:
        decode(_line("invalid", name))
    assert e.value.field == EXPECTED_FIELDS[name.removesuffix(".jsonl")]


def test_vectors_cover_every_message_type_and_enough_faults():
    types = {decode(_line("valid", n)).type for n in _vectors("valid")}
    assert types == set(spec.GO_TO_WORKER) | set(spec.WORKER_TO_GO)
    assert len(_vectors("invalid")) >= 20
    assert set(EXPECTED_FIELDS) == {n.removesuffix(".jsonl") for n in _vectors("invalid")}


def test_generate_defaults_and_error_carries_the_id():
    msg = decode(_line("valid", "generate_minimal.jsonl"))
    r = msg.request
    assert (r.scheduler, r.batch_size, r.preview_every, r.negative_prompt) == ("euler", 1, 0, "")
    with pytest.raises(ProtocolError) as e:
        decode(_line("invalid", "generate_steps_zero.jsonl"))
    assert e.value.id == "job-1"
    assert "between 1 and 150" in str(e.value)


def test_bytes_that_are_not_utf8_or_too_long_are_rejected():
    with pytest.raises(ProtocolError, match="UTF-8"):
        decode(b'{"type":"ping","id":"\xff"}')
    big = '{"type":"loading","message":"' + "x" * spec.MAX_LINE_BYTES + '"}'
    with pytest.raises(ProtocolError, match="longer than"):
        decode(big)


def test_encode_is_one_compact_line_with_type_first():
    line = encode(protocol.Error(id="a", code="cancelled", message="stop\nnow"))
    assert "\n" not in line
    assert line.startswith('{"type":"error",')
    assert json.loads(line)["message"] == "stop\nnow"


def test_encode_refuses_nan():
    with pytest.raises(ValueError):
        encode(protocol.Progress(id="a", stage="denoising", step=1, total=2, elapsed_s=float("nan")))


def test_encode_writes_subclasses_of_str_and_float_as_their_base():
    class Version(str):
        pass

    class Seconds(float):
        pass

    progress = json.loads(encode(protocol.Progress(id="a", stage="denoising", step=1, total=2,
                                                   elapsed_s=Seconds(1.5))))
    assert progress["elapsed_s"] == 1.5
    assert "note" not in progress, "a progress line without a note is as before"
    noted = json.loads(encode(protocol.Progress(id="a", stage="optimizing", step=0, total=0,
                                                elapsed_s=1.0, note="no room")))
    assert noted["note"] == "no room"
    line = encode(protocol.Loading(message=Version("importing torch")))
    assert json.loads(line) == {"type": "loading", "message": "importing torch"}


@pytest.mark.parametrize("change, field, found", [
    ({"prompt": "a\u0085b"}, "prompt", "U+0085 at character 2"),
    ({"prompt": "a\x7f"}, "prompt", "U+007F"),
    ({"negative_prompt": "é\x1b[31m"}, "negative_prompt", "U+001B at character 2"),
    ({"model": "/models/a\tb"}, "model", "U+0009"),
    ({"vae": "v\x02ae.safetensors"}, "vae", "U+0002"),
    ({"init_image": "in\x00.png", "strength": 0.5}, "init_image", "U+0000 at character 3"),
    ({"controlnets": [{"type": "canny", "model": "tiny-controlnet", "image": "e\x01.png"}]},
     "controlnets[0].image", "U+0001"),
])
def test_control_characters_are_refused_naming_the_field(change, field, found):
    r = {"prompt": "p", "model": "tiny", "steps": 4, "cfg": 5, "width": 64, "height": 64,
         "seed": 7, "output_dir": "/o", **change}
    with pytest.raises(ProtocolError) as e:
        protocol.decode_request(r)
    assert e.value.field == field
    assert "control characters" in e.value.reason and found in e.value.reason


def test_prompts_keep_newlines_tabs_and_unicode():
    r = protocol.decode_request({"prompt": "un phare,\n\tété ☀", "negative_prompt": "fog\nrain",
                                 "model": "tiny", "steps": 4, "cfg": 5, "width": 64,
                                 "height": 64, "seed": 7, "output_dir": "/o"})
    assert r.prompt == "un phare,\n\tété ☀"
