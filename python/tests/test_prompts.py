"""A1111 prompt emphasis and prompts past 75 tokens: the parser, the chunks, the embeddings
against diffusers' own encode_prompt, and the effect on images through the real worker."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from atelier_worker import prompts


def _close(runs, want):
    assert [t for t, _ in runs] == [t for t, _ in want]
    assert [w for _, w in runs] == pytest.approx([w for _, w in want])


@pytest.mark.parametrize("text, want", [
    ("a cat", [("a cat", 1.0)]),
    ("a (cat)", [("a ", 1.0), ("cat", 1.1)]),
    ("a ((cat))", [("a ", 1.0), ("cat", 1.21)]),
    ("a [cat]", [("a ", 1.0), ("cat", 1 / 1.1)]),
    ("a (cat:1.5) on a mat", [("a ", 1.0), ("cat", 1.5), (" on a mat", 1.0)]),
    ("(a (cat:2) b:0.5)", [("a ", 0.5), ("cat", 1.0), (" b", 0.5)]),
    ("(cat: .5 )", [("cat", 0.5)]),
    (r"a \(cat\) \[x\]", [("a (cat) [x]", 1.0)]),
    ("a (cat", [("a ", 1.0), ("cat", 1.1)]),           # unclosed: to the end
    ("a cat) b]", [("a cat) b]", 1.0)]),              # stray closers are text
    ("(time: noon)", [("time: noon", 1.1)]),          # a colon without a number is text
    ("a cat BREAK a dog", [("a cat", 1.0), ("BREAK", -1.0), ("a dog", 1.0)]),
    ("BREAKFAST", [("BREAKFAST", 1.0)]),
    ("a BREAK (b:-1)", [("a", 1.0), ("BREAK", -1.0), ("b", -1.0)]),  # not merged into the break
    ("", [("", 1.0)]),
])
def test_parse_follows_a1111(text, want):
    _close(prompts.parse(text), want)


@pytest.fixture(scope="module")
def pipe(tiny_model):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(tiny_model)


def _words(n: int) -> str:
    return ", ".join(f"word{i}" for i in range(n))


def test_chunks_hold_75_tokens_and_break_after_a_comma(pipe):
    tok = pipe.tokenizer
    short = prompts.chunk(tok, prompts.parse("a lighthouse"))
    assert len(short.ids) == 1 and len(short.ids[0]) == tok.model_max_length
    assert short.ids[0][0] == tok.bos_token_id
    assert short.ids[0][:short.ids[0].index(tok.eos_token_id) + 1] == \
        tok("a lighthouse").input_ids

    long = prompts.chunk(tok, prompts.parse(_words(60)))
    n = len(tok(_words(60), add_special_tokens=False).input_ids)
    assert n > 75 and len(long.ids) in (-(-n // 75), -(-n // 75) + 1)
    for ids in long.ids:
        assert len(ids) == tok.model_max_length and ids[0] == tok.bos_token_id
        body = ids[1:ids.index(tok.eos_token_id)]
        # Every full chunk but the last ends on a comma: no word is split across two.
        if ids is not long.ids[-1]:
            assert tok.convert_ids_to_tokens(body[-1]) == ",</w>"
    # Nothing is lost: the chunks hold every token of the prompt, in order.
    got = [t for ids in long.ids for t in ids[1:ids.index(tok.eos_token_id)]]
    assert got == tok(_words(60), add_special_tokens=False).input_ids

    broken = prompts.chunk(tok, prompts.parse("a cat BREAK a dog"))
    assert len(broken.ids) == 2
    weighted = prompts.chunk(tok, prompts.parse("a (cat:1.5)"))
    cat = tok("cat", add_special_tokens=False).input_ids
    i = weighted.ids[0].index(cat[0])
    assert weighted.weights[0][i] == 1.5 and weighted.weights[0][1] == 1.0


@pytest.mark.parametrize("negative, guidance", [("", True), ("blurry", True), ("", False)])
def test_a_plain_prompt_encodes_as_diffusers_does(pipe, negative, guidance):
    with torch.inference_mode():
        want = pipe.encode_prompt(prompt="a lighthouse at dusk", device="cpu",
                                  num_images_per_prompt=1, do_classifier_free_guidance=guidance,
                                  negative_prompt=negative or None)
        got = prompts.encode(pipe, "a lighthouse at dusk", negative, guidance)
    for g, w in zip(got, want):
        if w is None:
            assert g is None
        else:
            assert g.shape == w.shape and g.dtype == w.dtype
            torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_long_and_weighted_prompts_change_the_embeddings(pipe):
    with torch.inference_mode():
        long_pe, long_npe, _, _ = prompts.encode(pipe, _words(60), "blurry", True)
        plain = prompts.encode(pipe, "a (cat) on a mat", "", True)[0]
        literal = prompts.encode(pipe, r"a \(cat\) on a mat", "", True)[0]
        same_tokens = prompts.encode(pipe, "a cat on a mat", "", True)[0]
    # Both chunks of the long prompt, and a negative padded to the same length.
    assert long_pe.shape[1] > 77 and long_pe.shape[1] % 77 == 0
    assert long_npe.shape == long_pe.shape
    # Emphasis changes the embeddings of the same tokens; escaped brackets are text.
    assert not torch.equal(plain, same_tokens)
    assert not torch.equal(literal, same_tokens)


def _pixels(msgs) -> np.ndarray:
    with Image.open(msgs[-1].images[0].path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def test_the_words_past_75_tokens_reach_the_image(worker, tmp_path, tiny_model):
    base = _words(40)
    assert len(prompts.chunk(worker_tokenizer(tiny_model), prompts.parse(base)).ids) >= 2
    images = []
    for tail in ("red lighthouse", "blue forest"):
        _, msgs = worker.generate(tmp_path, prompt=f"{base}, {tail}")
        assert msgs[-1].type == "result", msgs[-1]
        images.append(_pixels(msgs))
        with Image.open(msgs[-1].images[0].path) as im:
            assert im.info["parameters"].startswith(f"{base}, {tail}\n")
    assert np.abs(images[0] - images[1]).max() > 0


def test_emphasis_changes_the_image_and_weight_one_does_not(worker, tmp_path):
    got = {}
    for p in ("a lighthouse", "a (lighthouse:1.0)", "a (lighthouse:1.6)"):
        _, msgs = worker.generate(tmp_path, prompt=p)
        assert msgs[-1].type == "result", msgs[-1]
        got[p] = _pixels(msgs)
    assert np.array_equal(got["a lighthouse"], got["a (lighthouse:1.0)"])
    assert not np.array_equal(got["a lighthouse"], got["a (lighthouse:1.6)"])


def worker_tokenizer(tiny_model):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(tiny_model, subfolder="tokenizer")
