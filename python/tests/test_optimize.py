"""Applying the speed settings: what can be checked on the CPU."""

from __future__ import annotations

import torch

from atelier_worker import optimize


def test_module_device_follows_an_offload_hook():
    m = torch.nn.Linear(2, 2)
    assert optimize.module_device(m) == torch.device("cpu")

    class Hook:
        execution_device = "cuda:0"

    m._hf_hook = Hook()
    assert optimize.module_device(m) == "cuda:0"
