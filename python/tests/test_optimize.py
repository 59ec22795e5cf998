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


def test_a_chosen_attention_backend_falls_back_where_it_has_no_kernel():
    # cuDNN has no kernel for the VAE's attention (one head of 512; none at all on the CPU):
    # pinned alone, every job failed with "No available kernel" on an H200.
    import torch.nn.functional as F

    q = torch.randn(1, 1, 64, 512)
    for name in ("cudnn", "flash", "efficient", "math", "auto"):
        with optimize.attention(name):
            out = F.scaled_dot_product_attention(q, q, q)
        assert out.shape == q.shape and torch.isfinite(out).all(), name
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]), torch.inference_mode():
        try:
            F.scaled_dot_product_attention(q, q, q)
            pinned_fails = False
        except RuntimeError:
            pinned_fails = True
    assert pinned_fails, "the case the fallback exists for"
