"""FP8 for the UNet (ATELIER_FP8), through torchao: the transformer blocks' linear layers
(attention projections, the GEGLU MLP, proj_in/out) with float8 weights, activations
quantized to float8 at run time, on GPUs with FP8 tensor cores (compute capability 8.9:
Ada, Hopper and newer). torchao is imported only here, and only when FP8 is asked for."""

from __future__ import annotations

import torch

MIN_CAPABILITY = (8, 9)


def unsupported(device) -> str:
    """Why FP8 cannot run on device, or "" where it can."""
    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return "FP8 needs a CUDA GPU"
    cap = torch.cuda.get_device_capability(device)
    if cap < MIN_CAPABILITY:
        return (f"FP8 needs a GPU with FP8 tensor cores (compute capability 8.9 or newer; "
                f"this one has {cap[0]}.{cap[1]})")
    try:
        import torchao  # noqa: F401
    except ImportError:
        return "FP8 needs torchao (python/requirements.txt): reinstall the worker's venv"
    return ""


def block_linear(module, fqn: str) -> bool:
    """The linears of the transformer blocks, where most of SDXL's matmul time is; those of
    the time and class embeddings (one row per image) stay in the model's dtype."""
    return isinstance(module, torch.nn.Linear) and ".attentions." in f".{fqn}."


def is_quantized(unet) -> bool:
    return getattr(unet, "_atelier_fp8", 0) > 0


def quantize(unet, row_wise: bool = False) -> int:
    """Quantizes unet in place (torchao's float8 with dynamic activations, one scale per
    tensor, which the model's float16 allows; row_wise, one per row, wants a bfloat16 model)
    and returns how many linears now run in FP8. The float8 weights are then held as plain
    tensors (torchao's unwrap_tensor_subclass): torch.export takes them so, and the fast
    path's artefact, which takes its weights as inputs, reads them by name like any other."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor, quantize_
    from torchao.utils import unwrap_tensor_subclass

    if is_quantized(unet):
        return unet._atelier_fp8
    before = {n for n, m in unet.named_modules() if block_linear(m, n)}
    config = Float8DynamicActivationFloat8WeightConfig(
        granularity=PerRow() if row_wise else PerTensor(), set_inductor_config=False)
    quantize_(unet, config, filter_fn=block_linear)
    # torchao leaves a linear it cannot serve (a size not a multiple of 16) as it was.
    n = sum(1 for name, m in unet.named_modules()
            if name in before and type(m.weight) is not torch.nn.Parameter)
    unwrap_tensor_subclass(unet)
    unet._atelier_fp8 = n
    return n
