"""Single-file SDXL checkpoints (.safetensors in the original Stability layout): checked by
their header, loaded with diffusers' from_single_file against configs kept on disk, so that
nothing is downloaded.

The configs of SDXL base are written once into the cache (from tiny.configs("full"), which
has SDXL base's exact sizes). Its two CLIP tokenizers need CLIP's BPE merges: the file
configs/bpe_simple_vocab_16e6.txt.gz is OpenAI CLIP's (as open_clip ships it, MIT licence);
vocab.json and merges.txt are derived from it exactly as CLIP's own tokenizer does.
"""

from __future__ import annotations

import gzip
import json
import os
import struct

# A key every SD checkpoint in the original layout has, and the one only SDXL base has.
UNET_PREFIX = "model.diffusion_model."
UNET_KEY = UNET_PREFIX + "input_blocks.0.0.weight"
TE1_PREFIX = "conditioner.embedders.0.transformer."
TE2_PREFIX = "conditioner.embedders.1.model."
VAE_PREFIX = "first_stage_model."

CLIP_BPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs",
                        "bpe_simple_vocab_16e6.txt.gz")
SDXL_CONFIG_NAME = "sdxl-base-config-v1"


class SingleFileError(ValueError):
    pass


def header(path: str) -> dict:
    """The safetensors header (tensor names to dtype/shape), without reading the weights."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError("too short")
            (n,) = struct.unpack("<Q", raw)
            if n > 100 << 20:
                raise ValueError("header too large")
            meta = json.loads(f.read(n))
        if not isinstance(meta, dict):
            raise ValueError("header is not an object")
        return meta
    except (OSError, ValueError, struct.error) as e:
        raise SingleFileError(f"{path} is not a readable .safetensors file ({e})") from None


def check(path: str) -> dict:
    """Refuses a file that is no SDXL base checkpoint; returns its header."""
    meta = header(path)
    if UNET_KEY not in meta:
        raise SingleFileError(f"{path} is not a single-file Stable Diffusion checkpoint (no "
                              "model.diffusion_model weights): a LoRA, VAE or ControlNet goes in "
                              "its own field")
    if not any(k.startswith(TE2_PREFIX) for k in meta):
        raise SingleFileError(f"{path} is not an SDXL base checkpoint (it has no second text "
                              "encoder): an SD 1.5/2.x model, or an SDXL refiner (give a refiner "
                              "as its diffusers folder)")
    return meta


def config_for(path: str, cache_dir: str) -> str:
    """The diffusers folder whose configs and tokenizers describe this checkpoint: the tiny
    model's for the tiny single file, SDXL base's for a real one."""
    from . import tiny

    meta = check(path)
    channels = meta[UNET_KEY]["shape"][0]
    if channels == tiny.configs("tiny", 1, 0, 0)["unet"]["block_out_channels"][0]:
        return tiny.create(os.path.join(cache_dir, "models", tiny.TINY_NAME))
    if channels == 320:
        return sdxl_config(cache_dir)
    raise SingleFileError(f"{path} has a UNet of {channels} base channels: not an SDXL base "
                          "model (SDXL has 320)")


# Offline SDXL configs --------------------------------------------------------------------


def _bytes_to_unicode() -> list[str]:
    """CLIP's byte -> character table in CLIP's order (printable bytes first)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def clip_tokenizer_files() -> tuple[dict[str, int], list[str]]:
    """CLIP's vocab.json and merges as Hugging Face's CLIPTokenizer reads them (49408 tokens)."""
    with gzip.open(CLIP_BPE, "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1:49152 - 256 - 2 + 1]
    chars = _bytes_to_unicode()
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def write_sdxl_config(folder: str) -> None:
    """A diffusers SDXL-base folder without weights: every config and both tokenizers."""
    from transformers import CLIPTextConfig

    from . import tiny

    vocab, merges = clip_tokenizer_files()
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    cfg = tiny.configs("full", len(vocab), bos, eos)
    os.makedirs(folder)
    for name, cls in (("unet", "UNet2DConditionModel"), ("vae", "AutoencoderKL")):
        os.makedirs(os.path.join(folder, name))
        _write_json(os.path.join(folder, name, "config.json"), {"_class_name": cls, **cfg[name]})
    for name, arch in (("text_encoder", "CLIPTextModel"),
                       ("text_encoder_2", "CLIPTextModelWithProjection")):
        c = CLIPTextConfig(**cfg[name])
        c.architectures = [arch]
        c.save_pretrained(os.path.join(folder, name))
    os.makedirs(os.path.join(folder, "scheduler"))
    _write_json(os.path.join(folder, "scheduler", "scheduler_config.json"),
                {"_class_name": "EulerDiscreteScheduler", **cfg["scheduler"]})
    # SDXL's second tokenizer pads with "!" (id 0), its first with the end token.
    for name, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        d = os.path.join(folder, name)
        os.makedirs(d)
        _write_json(os.path.join(d, "vocab.json"), vocab)
        with open(os.path.join(d, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "".join(m + "\n" for m in merges))
        special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                   "unk_token": "<|endoftext|>", "pad_token": pad}
        _write_json(os.path.join(d, "tokenizer_config.json"), {
            "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
            "clean_up_tokenization_spaces": True, **special})
        _write_json(os.path.join(d, "special_tokens_map.json"), special)
    _write_json(os.path.join(folder, "model_index.json"), tiny.MODEL_INDEX)


def sdxl_config(cache_dir: str) -> str:
    from . import tiny

    return tiny._atomic(os.path.join(cache_dir, "configs", SDXL_CONFIG_NAME), write_sdxl_config)


# Diffusers -> original layout (the inverse of diffusers' single-file conversion) ---------


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
        prefixes.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{i * (lpb + 1) + lpb}.{2 if has_attn else 1}."))
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


# Single-file VAEs ------------------------------------------------------------------------


def load_vae(path: str, base_config, cache_dir: str):
    """A VAE from one .safetensors file, in diffusers' or the original layout, with the
    base model's VAE config (an SDXL VAE has SDXL's architecture)."""
    from diffusers import AutoencoderKL

    meta = header(path)
    keys = [k for k in meta if k != "__metadata__"]
    cfg = {k: v for k, v in dict(base_config).items() if not k.startswith("_")}
    if any(k.startswith("encoder.down_blocks.") for k in keys):
        from safetensors.torch import load_file

        vae = AutoencoderKL(**cfg)
        try:
            vae.load_state_dict(load_file(path), strict=True)
        except RuntimeError as e:
            raise SingleFileError(f"{path} is not a VAE of this model's architecture: "
                                  f"{str(e)[:300]}") from None
        return vae.eval()
    if not any(".down.0.block." in k or k.startswith("encoder.down.") for k in keys):
        raise SingleFileError(f"{path} holds no VAE weights (no encoder/decoder blocks)")
    import hashlib

    from . import tiny

    # from_single_file reads the config from a folder: the base VAE's, written once.
    digest = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
    folder = tiny._atomic(os.path.join(cache_dir, "configs", f"vae-{digest}"),
                          lambda out: (os.makedirs(out), _write_json(
                              os.path.join(out, "config.json"), {"_class_name": "AutoencoderKL", **cfg})))
    try:
        vae = AutoencoderKL.from_single_file(path, config=folder, local_files_only=True)
    except (ValueError, KeyError, RuntimeError) as e:
        raise SingleFileError(f"{path} is not a VAE of this model's architecture: "
                              f"{type(e).__name__}: {str(e)[:300]}") from None
    return vae.eval()
