"""The original (Stability) layout of single-file SDXL checkpoints: the key prefixes of its
parts, and the conversion of a diffusers folder's weights into it (the inverse of diffusers'
single-file conversion), which makes the tiny single-file checkpoint."""

from __future__ import annotations

import json
import os

# A key every SD checkpoint in the original layout has, and the one only SDXL base has.
UNET_PREFIX = "model.diffusion_model."
UNET_KEY = UNET_PREFIX + "input_blocks.0.0.weight"
TE1_PREFIX = "conditioner.embedders.0.transformer."
TE2_PREFIX = "conditioner.embedders.1.model."
VAE_PREFIX = "first_stage_model."


class SingleFileError(ValueError):
    """A single-file checkpoint this worker cannot read or convert."""


_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
           ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"),
           ("conv_shortcut", "skip_connection"))


def _unet_to_original(sd: dict, cfg: dict) -> dict:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed = {**DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"],
             **DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"]}
    lpb = cfg["layers_per_block"]
    levels = len(cfg["block_out_channels"])
    prefixes: list[tuple[str, str]] = []
    for i in range(levels):
        for j in range(lpb):
            prefixes.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{1 + i * (lpb + 1) + j}.0."))
            prefixes.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{1 + i * (lpb + 1) + j}.1."))
        prefixes.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * (lpb + 1)}.0.op."))
        has_attn = "CrossAttn" in cfg["up_block_types"][i]
        for j in range(lpb + 1):
            prefixes.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{i * (lpb + 1) + j}.0."))
            prefixes.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{i * (lpb + 1) + j}.1."))
        prefixes.append((f"up_blocks.{i}.upsamplers.0.",
                         f"output_blocks.{i * (lpb + 1) + lpb}.{2 if has_attn else 1}."))
    prefixes += [("mid_block.resnets.0.", "middle_block.0."), ("mid_block.attentions.0.", "middle_block.1."),
                 ("mid_block.resnets.1.", "middle_block.2.")]
    out = {}
    for k, v in sd.items():
        if k in fixed:
            out[UNET_PREFIX + fixed[k]] = v
            continue
        for hf, ldm in prefixes:
            if k.startswith(hf):
                rest = k[len(hf):]
                if ".resnets." in hf:
                    for a, b in _RESNET:
                        if rest.startswith(a + "."):
                            rest = b + rest[len(a):]
                out[UNET_PREFIX + ldm + rest] = v
                break
        else:
            raise SingleFileError(f"no original-layout name for UNet weight {k}")
    return out


def vae_to_original(sd: dict, cfg: dict, prefix: str = VAE_PREFIX) -> dict:
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    n = len(cfg["block_out_channels"])
    prefixes = []
    for i in range(n):
        prefixes += [(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block."),
                     (f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."),
                     (f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{n - 1 - i}.block."),
                     (f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample.")]
    for part in ("encoder", "decoder"):
        prefixes += [(f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1."),
                     (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2."),
                     (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.")]
    attn = (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
            ("to_out.0.", "proj_out."))
    out = {}
    for k, v in sd.items():
        if k in fixed:
            out[prefix + fixed[k]] = v
            continue
        for hf, ldm in prefixes:
            if k.startswith(hf):
                rest = k[len(hf):].replace("conv_shortcut", "nin_shortcut")
                if ".attentions." in hf:
                    for a, b in attn:
                        if rest.startswith(a):
                            rest = b + rest[len(a):]
                    if v.dim() == 2:
                        v = v[:, :, None, None]  # linear -> 1x1 convolution
                out[prefix + ldm + rest] = v
                break
        else:
            raise SingleFileError(f"no original-layout name for VAE weight {k}")
    return out


def _te2_to_original(sd: dict, layers: int) -> dict:
    import torch

    p = TE2_PREFIX
    out = {
        p + "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        p + "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        p + "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        p + "ln_final.bias": sd["text_model.final_layer_norm.bias"],
        p + "text_projection": sd["text_projection.weight"].T.contiguous(),
    }
    names = (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
             ("mlp.fc2", "mlp.c_proj"), ("self_attn.out_proj", "attn.out_proj"))
    for i in range(layers):
        src, dst = f"text_model.encoder.layers.{i}.", f"{p}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [sd[f"{src}self_attn.{q}_proj.{kind}"] for q in ("q", "k", "v")])
            for a, b in names:
                out[f"{dst}{b}.{kind}"] = sd[f"{src}{a}.{kind}"]
    return out


def to_original(folder: str) -> dict:
    """The weights of a diffusers SDXL folder, named as an original single-file checkpoint."""
    from safetensors.torch import load_file

    def part(name: str) -> tuple[dict, dict]:
        d = os.path.join(folder, name)
        weights = [f for f in os.listdir(d) if f.endswith(".safetensors")]
        with open(os.path.join(d, "config.json"), encoding="utf-8") as f:
            return load_file(os.path.join(d, weights[0])), json.load(f)

    unet, unet_cfg = part("unet")
    vae, vae_cfg = part("vae")
    te1, _ = part("text_encoder")
    te2, te2_cfg = part("text_encoder_2")
    out = _unet_to_original(unet, unet_cfg)
    out.update(vae_to_original(vae, vae_cfg))
    for k, v in te1.items():
        if not k.endswith("position_ids"):
            out[TE1_PREFIX + (k if k.startswith("text_model.") else "text_model." + k)] = v
    out.update(_te2_to_original(te2, te2_cfg["num_hidden_layers"]))
    return {k: v.contiguous() for k, v in out.items()}
