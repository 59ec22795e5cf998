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

from . import tiny
from .checkpoint_layout import TE2_PREFIX, UNET_KEY, SingleFileError

CLIP_BPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs",
                        "bpe_simple_vocab_16e6.txt.gz")
SDXL_CONFIG_NAME = "sdxl-base-config-v1"


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
    return tiny._atomic(os.path.join(cache_dir, "configs", SDXL_CONFIG_NAME), write_sdxl_config)


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
