"""The hand-written FP8 linear layer (ATELIER_FP8): the UNet's attention and MLP matmuls in
float8 through torch._scaled_mm, on Hopper and newer GPUs."""

from __future__ import annotations

import torch


class FP8Linear(torch.nn.Module):
    """y = x W^T + b with x and W in float8_e4m3fn (row-wise scales), out in x's dtype."""

    def __init__(self, lin):
        super().__init__()
        w = lin.weight.detach().float()
        sw = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 448.0
        self.register_buffer("w8", (w / sw).to(torch.float8_e4m3fn).contiguous())
        self.register_buffer("sw", sw.t().contiguous())  # (1, N)
        self.bias = lin.bias
        self.in_features, self.out_features = lin.in_features, lin.out_features

    def forward(self, x):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        sx = x2.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-12) / 448.0
        x8 = (x2.float() / sx).to(torch.float8_e4m3fn)
        y = torch._scaled_mm(x8, self.w8.t(), scale_a=sx, scale_b=self.sw,
                             out_dtype=torch.bfloat16)
        y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)


def swap_linears(unet) -> int:
    """Swaps the linear layers of the UNet's transformer blocks (attention projections, the
    GEGLU MLP, proj_in/out) for FP8 ones: weights in e4m3 with a scale per output channel,
    activations quantized per row at run time, products through torch._scaled_mm (Hopper
    and newer). Returns how many were swapped. Opt-in: it trades a little precision."""
    count = 0
    for block_list in (unet.down_blocks, [unet.mid_block], unet.up_blocks):
        for block in block_list:
            for attn in getattr(block, "attentions", None) or []:
                for _name, mod in list(attn.named_modules()):
                    for cname, child in list(mod.named_children()):
                        if (isinstance(child, torch.nn.Linear) and child.in_features % 16 == 0
                                and child.out_features % 16 == 0):
                            setattr(mod, cname, FP8Linear(child))
                            count += 1
    return count
