"""Prompts as AUTOMATIC1111 reads them, for prompts copied from it or from its PNGs.

Emphasis: (words) is 1.1 times stronger, [words] 1.1 times weaker, (words:1.4) sets the
weight, brackets nest and multiply, and \\( \\) \\[ \\] are literal brackets. Length: CLIP reads
75 tokens at a time, so a longer prompt is encoded 75 tokens at a time and the chunks are
joined (diffusers alone would cut it at 77 tokens and read the brackets as text); BREAK
starts a new chunk. The weights scale each token's hidden state, and the chunk keeps its mean.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import optimize

UP = 1.1
# A1111 breaks a full chunk after the last comma when one is this close to its end, so that
# a phrase is not split across chunks.
COMMA_BACKTRACK = 20

# Marks a forced chunk break in parse's output, told apart by identity: a text run of
# weight -1 next to it is not merged into it.
BREAK = ("BREAK", -1.0)

_WEIGHT = re.compile(r":\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*\)")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


def parse(text: str) -> list[tuple[str, float]]:
    """Splits a prompt into (text, weight) runs; the BREAK object marks a forced chunk break.
    Unbalanced brackets behave as in A1111: an unclosed one lasts to the end of the prompt,
    a stray closing one is text."""
    runs: list[list] = []
    open_: list[tuple[int, str]] = []  # (index of the first run inside, bracket)
    buf: list[str] = []

    def flush() -> None:
        if buf:
            runs.append(["".join(buf), 1.0])
            buf.clear()

    def scale(start: int, by: float) -> None:
        for run in runs[start:]:
            run[1] *= by

    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            buf.append(text[i + 1])
            i += 2
            continue
        if c in "([":
            flush()
            open_.append((len(runs), c))
        elif c == ":" and open_ and open_[-1][1] == "(" and (m := _WEIGHT.match(text, i)):
            flush()
            scale(open_.pop()[0], float(m.group(1)))
            i = m.end()
            continue
        elif c == ")" and open_ and open_[-1][1] == "(":
            flush()
            scale(open_.pop()[0], UP)
        elif c == "]" and open_ and open_[-1][1] == "[":
            flush()
            scale(open_.pop()[0], 1 / UP)
        else:
            buf.append(c)
        i += 1
    flush()
    for start, bracket in open_:
        scale(start, UP if bracket == "(" else 1 / UP)

    out: list[tuple[str, float]] = []
    for text_, weight in runs:
        for j, part in enumerate(_BREAK.split(text_)):
            if j:
                out.append(BREAK)
            if part:
                if out and out[-1] is not BREAK and out[-1][1] == weight:
                    out[-1] = (out[-1][0] + part, weight)
                else:
                    out.append((part, weight))
    return out or [("", 1.0)]


def is_plain(runs: list[tuple[str, float]]) -> bool:
    return all(w == 1.0 for _, w in runs)


@dataclass
class Chunks:
    """One tokenizer's token ids and weights, in chunks of model_max_length with the start,
    end and padding tokens in place."""

    ids: list[list[int]]
    weights: list[list[float]]


def chunk(tokenizer, runs: list[tuple[str, float]]) -> Chunks:
    size = tokenizer.model_max_length - 2
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    if comma == tokenizer.unk_token_id:
        comma = None
    out = Chunks([], [])
    ids: list[int] = []
    ws: list[float] = []

    def close() -> None:
        out.ids.append([bos] + ids + [eos] + [pad] * (size - len(ids)))
        out.weights.append([1.0] + ws + [1.0] * (size - len(ws) + 1))
        ids.clear()
        ws.clear()

    for run in runs:
        if run is BREAK:
            close()
            continue
        text, weight = run
        for t in tokenizer(text, add_special_tokens=False, truncation=False).input_ids:
            if len(ids) == size:
                cut = _last_comma(ids, comma)
                if cut is not None and size - cut <= COMMA_BACKTRACK:
                    rest_ids, rest_ws = ids[cut:], ws[cut:]
                    del ids[cut:], ws[cut:]
                    close()
                    ids.extend(rest_ids)
                    ws.extend(rest_ws)
                else:
                    close()
            ids.append(t)
            ws.append(weight)
    if ids or not out.ids:
        close()
    return out


def _last_comma(ids: list[int], comma) -> int | None:
    """The index just after the chunk's last comma."""
    if comma is None:
        return None
    for i in range(len(ids) - 1, -1, -1):
        if ids[i] == comma:
            return i + 1
    return None


def _pad_to(c: Chunks, n: int, tokenizer) -> None:
    """Adds empty chunks, so that the prompt and the negative prompt line up."""
    empty = chunk(tokenizer, [("", 1.0)])
    while len(c.ids) < n:
        c.ids.append(list(empty.ids[0]))
        c.weights.append(list(empty.weights[0]))


def _encode(encoder, chunks: Chunks, weighted: bool):
    """Hidden states of the penultimate layer, chunk by chunk (each call the shape CLIP was
    made for, so that a compiled encoder is not compiled again), and the pooled output of
    the first chunk."""
    import torch

    device = optimize.module_device(encoder)
    states, pooled = [], None
    for ids, weights in zip(chunks.ids, chunks.weights):
        out = encoder(torch.tensor([ids], device=device), output_hidden_states=True)
        if pooled is None and out[0].ndim == 2:
            pooled = out[0]
        z = out.hidden_states[-2]
        if weighted:
            mean = z.float().mean()
            z = z * torch.tensor(weights, device=z.device, dtype=z.dtype)[None, :, None]
            z = z * (mean / z.float().mean()).to(z.dtype)
        states.append(z)
    return torch.cat(states, dim=1), pooled


def encode(pipe, prompt: str, negative: str, guidance: bool):
    """The pipeline's (prompt_embeds, negative_prompt_embeds, pooled, negative_pooled), as
    its own encode_prompt makes them, with emphasis and without the 77-token limit. For a
    plain prompt that fits, the result is the same as encode_prompt's."""
    import torch

    pairs = [(t, e) for t, e in ((pipe.tokenizer, pipe.text_encoder),
                                 (pipe.tokenizer_2, pipe.text_encoder_2)) if t is not None]
    pos_runs = parse(prompt)
    zeros = guidance and not negative and pipe.config.force_zeros_for_empty_prompt
    neg_runs = parse(negative) if guidance and not zeros else None
    pos = [chunk(t, pos_runs) for t, _ in pairs]
    neg = [chunk(t, neg_runs) for t, _ in pairs] if neg_runs is not None else None
    n = max(len(c.ids) for c in pos + (neg or []))
    for i, (t, _) in enumerate(pairs):
        _pad_to(pos[i], n, t)
        if neg is not None:
            _pad_to(neg[i], n, t)

    def embeds(chunks_per_encoder, runs):
        weighted = not is_plain(runs)
        states, pooled = [], None
        for (_, enc), c in zip(pairs, chunks_per_encoder):
            z, p = _encode(enc, c, weighted)
            states.append(z)
            pooled = p if pooled is None else pooled
        return torch.cat(states, dim=-1), pooled

    dtype = pipe.text_encoder_2.dtype if pipe.text_encoder_2 is not None else pipe.unet.dtype
    device = pipe._execution_device
    pe, ppe = embeds(pos, pos_runs)
    pe, ppe = pe.to(dtype=dtype, device=device), ppe.to(device=device)
    if not guidance:
        return pe, None, ppe, None
    if zeros:
        return pe, torch.zeros_like(pe), ppe, torch.zeros_like(ppe)
    npe, nppe = embeds(neg, neg_runs)
    return pe, npe.to(dtype=dtype, device=device), ppe, nppe.to(device=device)

