"""FP8 (fp8.py, torchao): what can be checked without a GPU with FP8 tensor cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from test_fastpath import StandInLauncher, tiny_unet

from atelier_worker import fastpath, fastrun, fp8
from atelier_worker.fastpath import Builds, Store

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_fp8_says_why_it_cannot_run_on_the_cpu():
    assert fp8.unsupported("cpu") == "FP8 needs a CUDA GPU"


def test_only_the_transformer_blocks_linears_are_quantized():
    unet = tiny_unet()
    chosen = [n for n, m in unet.named_modules() if fp8.block_linear(m, n)]
    linears = [n for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear)]
    assert chosen, "the tiny UNet has attention blocks"
    assert all(".attentions." in f".{n}" for n in chosen)
    assert any(n.endswith("attn1.to_q") for n in chosen) and any(n.endswith("ff.net.2") for n in chosen)
    left = set(linears) - set(chosen)
    # The time and class embeddings' (one row per image: nothing for FP8 to gain).
    assert left and all(n.startswith(("time_embedding", "add_embedding")) or n.endswith("time_emb_proj")
                        for n in left), left


def test_the_build_spec_says_whether_the_unet_is_in_fp8(tmp_path):
    # The builder quantizes its random-weight UNet as the worker's is, so that the artefact
    # takes the worker's float8 weights by their names.
    launcher = StandInLauncher()
    fast = fastrun.FastUNets("cpu", str(tmp_path), Builds(Store(str(tmp_path)), launcher), gpu="stand-in")
    unet = tiny_unet()
    assert fast.prepare(unet, 2, 64, 64, 77, torch.float32)[0] == "building"
    fast.job_ended(0)  # the build starts when the first job of the size ends
    assert launcher.started[0].spec["fp8"] is False
    assert not fp8.is_quantized(unet)
    unet._atelier_fp8 = 3  # what fp8.quantize leaves; float8 weights also change the signature
    assert fp8.is_quantized(unet) and fast._spec(unet, fast.key(unet, 2, 64, 64, 77, torch.float32))["fp8"]


def test_float8_weights_are_another_architecture():
    unet = tiny_unet()
    named = list(unet.named_parameters())
    before = fastpath.signature(named)
    name, w = next((n, p) for n, p in named if n.endswith("attn1.to_q.weight"))
    swapped = [(n, w.to(torch.float8_e4m3fn) if n == name else p) for n, p in named]
    assert fastpath.signature(swapped) != before


def test_fp8check_says_why_it_was_skipped_on_the_cpu(tmp_path):
    out = subprocess.run([sys.executable, "-m", "atelier_worker.bench", "fp8check", "--model",
                          str(tmp_path), "--device", "cpu"], capture_output=True, text=True,
                         cwd=PYTHON_DIR, timeout=600)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"skipped": "FP8 needs a CUDA GPU"}
