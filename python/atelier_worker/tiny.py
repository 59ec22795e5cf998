"""Generates an SDXL-architecture model with random weights, in diffusers folder format.

The `tiny` preset is small enough for tests and a newcomer's first run on a CPU; the `full`
preset has the real SDXL-base sizes, for timing on a GPU where real weights cannot be
downloaded. Both load through the same `from_pretrained` path as a real model.

Beside the model, `create_extra` makes its tiny companions, each loaded through the same
code as a real one: a LoRA (`tiny-lora`, PEFT/diffusers format), a ControlNet
(`tiny-controlnet`), a refiner (`tiny-refiner`, SDXL-refiner architecture), a VAE
(`tiny-vae`), an ESRGAN-family upscaler (`tiny-upscaler`, a 2x SRVGGNetCompact) and a
single-file checkpoint of the tiny model (`tiny-single-file`). Every one is deterministic.

    python -m atelier_worker.tiny --out DIR [--preset tiny|full] [--dtype float32|float16]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

from .spec import (
    TINY_CONTROLNET,
    TINY_LORA,
    TINY_REFINER,
    TINY_SINGLE_FILE,
    TINY_UPSCALER,
    TINY_VAE,
)

# The tiny model's folder name in the cache (spec.TINY_MODEL is its name in a request). Bump
# the version when the generated files change, so that existing caches are not reused.
TINY_NAME = "tiny-sdxl-v2"

# Request names of the tiny companions -> their file or folder name in the cache's models/.
EXTRAS = {
    TINY_LORA: "tiny-lora-v2.safetensors",
    TINY_CONTROLNET: "tiny-controlnet-v2",
    TINY_REFINER: "tiny-refiner-v2",
    TINY_VAE: "tiny-vae-v2",
    TINY_UPSCALER: "tiny-upscaler-v2.safetensors",
    TINY_SINGLE_FILE: "tiny-single-file-v2.safetensors",
}

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_TOKENS = 77

# Words whose BPE merges the tokenizer learns, so that common prompt words become single
# tokens; anything else still encodes byte by byte.
_WORDS = (
    "a an the of and in on with at by for from to is it this that photo photograph portrait "
    "painting oil watercolor drawing sketch illustration render art style detailed high quality "
    "lighthouse dusk night day sunset sunrise sky sea ocean river lake mountain forest tree "
    "flower city street house castle cat dog bird horse person woman man face eyes red blue "
    "green yellow black white light dark fog blur cinematic"
).split()

_SDXL_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    steps_offset=1, timestep_spacing="leading", prediction_type="epsilon",
    interpolation_type="linear", use_karras_sigmas=False, sample_max_value=1.0,
    set_alpha_to_one=False, skip_prk_steps=True, clip_sample=False, trained_betas=None,
)


def _byte_unicode() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable character table, in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return [chars[b] for b in range(256)]


def tokenizer_files() -> tuple[dict[str, int], list[str]]:
    """A small byte-level BPE vocabulary in CLIP's layout: every byte alone and as a word end
    (`</w>`), then merges learnt from _WORDS by plain BPE training, then BOS and EOS."""
    base = _byte_unicode()
    tokens = base + [c + "</w>" for c in base]
    words = [list(w[:-1]) + [w[-1] + "</w>"] for w in _WORDS]
    merges: list[str] = []
    while True:
        counts: dict[tuple[str, str], int] = {}
        for w in words:
            for pair in zip(w, w[1:]):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            break
        # Most frequent first; ties by the pair itself, so the result never varies.
        best = min(counts, key=lambda p: (-counts[p], p))
        merges.append(f"{best[0]} {best[1]}")
        tokens.append(best[0] + best[1])
        for w in words:
            i = 0
            while i < len(w) - 1:
                if (w[i], w[i + 1]) == best:
                    w[i:i + 2] = [w[i] + w[i + 1]]
                i += 1
    tokens += [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}, merges


def configs(preset: str, vocab_size: int, bos_id: int, eos_id: int) -> dict[str, dict]:
    """Component configs. The tiny UNet follows diffusers' own SDXL pipeline tests
    (get_dummy_components); its VAE keeps SDXL's 4 blocks so the scale factor is 8."""
    if preset == "full":
        te1 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                   num_attention_heads=12, projection_dim=768, hidden_act="quick_gelu", vocab_size=49408)
        te2 = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                   num_attention_heads=20, projection_dim=1280, hidden_act="gelu", vocab_size=49408)
        time_dim = 256
        unet = dict(
            sample_size=128, block_out_channels=[320, 640, 1280], layers_per_block=2,
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            attention_head_dim=[5, 10, 20], transformer_layers_per_block=[1, 2, 10],
            addition_embed_type_num_heads=64, norm_num_groups=32,
        )
        vae = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32,
                   sample_size=1024, mid_block_add_attention=True)
    elif preset == "tiny":
        te1 = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                   projection_dim=32, hidden_act="gelu", vocab_size=vocab_size)
        # The encoders differ in width, as SDXL's do (768, 1280): single-file loading tells
        # them apart by it.
        te2 = dict(te1, hidden_size=40, projection_dim=40)
        time_dim = 8
        unet = dict(
            sample_size=8, block_out_channels=[32, 64], layers_per_block=1,
            down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
            up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
            attention_head_dim=[2, 4], transformer_layers_per_block=[1, 1], norm_num_groups=8,
        )
        # No attention in the VAE's middle block: at 1024 px it would attend over 16k tokens,
        # which a CPU first run should not pay for random pixels.
        vae = dict(block_out_channels=[8, 16, 32, 32], layers_per_block=1, norm_num_groups=8,
                   sample_size=64, mid_block_add_attention=False)
    else:
        raise ValueError(f"unknown preset {preset!r}: use tiny or full")
    for te in (te1, te2):
        te.update(max_position_embeddings=MAX_TOKENS, bos_token_id=bos_id, eos_token_id=eos_id,
                  pad_token_id=eos_id, layer_norm_eps=1e-5)
    unet.update(
        in_channels=4, out_channels=4, act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
        use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=time_dim, mid_block_type="UNetMidBlock2DCrossAttn", norm_eps=1e-5,
        # SDXL conditions on both encoders' hidden states, and on the pooled text plus six time ids.
        cross_attention_dim=te1["hidden_size"] + te2["hidden_size"],
        projection_class_embeddings_input_dim=6 * time_dim + te2["projection_dim"],
    )
    n = len(vae["block_out_channels"])
    vae.update(in_channels=3, out_channels=3, latent_channels=4, act_fn="silu",
               down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
               scaling_factor=0.13025, force_upcast=True)
    return {"unet": unet, "vae": vae, "text_encoder": te1, "text_encoder_2": te2,
            "scheduler": dict(_SDXL_SCHEDULER)}


MODEL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "force_zeros_for_empty_prompt": True,
    "add_watermarker": False,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

# A fixed torch seed per component, so that each one's weights do not depend on the others.
_SEEDS = {"unet": 0, "vae": 1, "text_encoder": 2, "text_encoder_2": 3}


def _write_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")


def _write_tokenizer(folder: str, vocab: dict[str, int], merges: list[str]) -> None:
    os.makedirs(folder)
    _write_json(os.path.join(folder, "vocab.json"), vocab)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(m + "\n" for m in merges))
    _write_json(os.path.join(folder, "tokenizer_config.json"), {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_TOKENS,
        "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS,
        "clean_up_tokenization_spaces": True, "do_lower_case": True,
    })
    _write_json(os.path.join(folder, "special_tokens_map.json"),
                {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS})


def build(folder: str, preset: str = "tiny", dtype: str = "float32") -> None:
    """Writes every component into folder (which must not exist yet)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    vocab, merges = tokenizer_files()
    cfg = configs(preset, len(vocab), vocab[BOS], vocab[EOS])
    os.makedirs(folder)
    makers = {
        "unet": lambda: UNet2DConditionModel(**cfg["unet"]),
        "vae": lambda: AutoencoderKL(**cfg["vae"]),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])),
        "text_encoder_2": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_encoder_2"])),
    }
    # One component at a time, so that the full preset never holds all 3.5 B parameters at once.
    for name, make in makers.items():
        torch.manual_seed(_SEEDS[name])
        model = make().eval()
        if torch_dtype != torch.float32:
            model = model.to(torch_dtype)
        model.save_pretrained(os.path.join(folder, name), safe_serialization=True)
        del model
    # Written as a real SDXL scheduler_config.json is, keys of other schedulers included:
    # from_config carries them over, so that DDIM does not fall back to clip_sample=True.
    os.makedirs(os.path.join(folder, "scheduler"))
    _write_json(os.path.join(folder, "scheduler", "scheduler_config.json"),
                {"_class_name": "EulerDiscreteScheduler", **cfg["scheduler"]})
    _write_tokenizer(os.path.join(folder, "tokenizer"), vocab, merges)
    _write_tokenizer(os.path.join(folder, "tokenizer_2"), vocab, merges)
    # Written last: its presence marks a complete folder.
    _write_json(os.path.join(folder, "model_index.json"), MODEL_INDEX)


def create(target: str, preset: str = "tiny", dtype: str = "float32") -> str:
    """Builds the model at target unless it is there already. The folder appears complete or
    not at all: it is built beside the target and renamed into place, and a concurrent
    creator that wins the race is simply used."""
    target = os.path.abspath(target)
    if os.path.isfile(os.path.join(target, "model_index.json")):
        return target
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.tmp-", dir=parent)
    try:
        build(os.path.join(tmp, "m"), preset, dtype)
        try:
            os.rename(os.path.join(tmp, "m"), target)
        except OSError:
            if not os.path.isfile(os.path.join(target, "model_index.json")):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# The companions ----------------------------------------------------------------------


def _atomic(target: str, make) -> str:
    """Runs make(tmp_path) and renames its result into place, so that the file or folder
    appears complete or not at all (a concurrent creator that wins the race is used)."""
    target = os.path.abspath(target)
    if os.path.exists(target):
        return target
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.tmp-", dir=parent)
    try:
        out = os.path.join(tmp, os.path.basename(target))
        make(out)
        try:
            os.rename(out, target)
        except OSError:
            if not os.path.exists(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _load_unet(base: str):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(os.path.join(base, "unet")).eval()


def _make_lora(base: str, out: str) -> None:
    """A rank-4 LoRA on every attention projection of the tiny UNet, in the layout that
    diffusers' save_lora_weights writes (`unet.` keys, PEFT A/B names)."""
    import torch
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = _load_unet(base)
    torch.manual_seed(10)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    os.makedirs(out + ".d")
    StableDiffusionXLPipeline.save_lora_weights(out + ".d", unet_lora_layers=layers,
                                               weight_name="lora.safetensors",
                                               safe_serialization=True)
    os.rename(os.path.join(out + ".d", "lora.safetensors"), out)


def _make_controlnet(base: str, out: str) -> None:
    """ControlNetModel.from_unet of the tiny UNet, its zero convolutions given small random
    weights (a trained ControlNet's are not zero either), so that it visibly steers."""
    import torch
    from diffusers import ControlNetModel

    cn = ControlNetModel.from_unet(_load_unet(base))
    torch.manual_seed(11)
    zero = list(cn.controlnet_down_blocks) + [cn.controlnet_mid_block,
                                              cn.controlnet_cond_embedding.conv_out]
    with torch.no_grad():
        for conv in zero:
            conv.weight.normal_(0, 0.2)
            conv.bias.normal_(0, 0.05)
    cn.save_pretrained(out, safe_serialization=True)


def _make_vae(base: str, out: str) -> None:
    """A VAE with the tiny model's architecture and other weights; its config says it needs
    no upcast, as the fp16-fix VAE's does."""
    import torch
    from diffusers import AutoencoderKL

    cfg = dict(AutoencoderKL.load_config(os.path.join(base, "vae")))
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    cfg["force_upcast"] = False
    torch.manual_seed(12)
    AutoencoderKL(**cfg).eval().save_pretrained(out, safe_serialization=True)


REFINER_INDEX = {
    "_class_name": "StableDiffusionXLImg2ImgPipeline",
    "force_zeros_for_empty_prompt": False,
    "requires_aesthetics_score": True,
    "add_watermarker": False,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": [None, None],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": [None, None],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def _make_refiner(base: str, out: str) -> None:
    """SDXL-refiner architecture: only the second text encoder (shared with the base, as the
    real refiner shares OpenCLIP bigG), and a UNet conditioned on an aesthetic score instead
    of the target size (5 time ids, not 6)."""
    import torch
    from diffusers import UNet2DConditionModel

    unet_cfg = dict(UNet2DConditionModel.load_config(os.path.join(base, "unet")))
    unet_cfg = {k: v for k, v in unet_cfg.items() if not k.startswith("_")}
    with open(os.path.join(base, "text_encoder_2", "config.json"), encoding="utf-8") as f:
        te2 = json.load(f)
    unet_cfg["cross_attention_dim"] = te2["hidden_size"]
    unet_cfg["projection_class_embeddings_input_dim"] = (
        5 * unet_cfg["addition_time_embed_dim"] + te2["projection_dim"])
    os.makedirs(out)
    torch.manual_seed(13)
    UNet2DConditionModel(**unet_cfg).eval().save_pretrained(os.path.join(out, "unet"),
                                                           safe_serialization=True)
    for part in ("vae", "text_encoder_2", "tokenizer_2", "scheduler"):
        shutil.copytree(os.path.join(base, part), os.path.join(out, part))
    _write_json(os.path.join(out, "model_index.json"), REFINER_INDEX)


def _make_upscaler(out: str) -> None:
    """A 2x SRVGGNetCompact (Real-ESRGAN's compact network: convolutions with PReLU, a pixel
    shuffle, plus the nearest-upscaled input) with 8 features and 2 inner convolutions, in the
    state-dict layout of the released models, which spandrel recognizes."""
    import torch
    from safetensors.torch import save_file

    feat, convs, scale = 8, 2, 2
    torch.manual_seed(14)
    state: dict[str, torch.Tensor] = {}
    chans = [3] + [feat] * (convs + 1)
    for i in range(convs + 1):
        state[f"body.{2 * i}.weight"] = torch.randn(feat, chans[i], 3, 3) * 0.1
        state[f"body.{2 * i}.bias"] = torch.zeros(feat)
        state[f"body.{2 * i + 1}.weight"] = torch.full((feat,), 0.25)  # PReLU
    last = 2 * convs + 2
    state[f"body.{last}.weight"] = torch.randn(3 * scale * scale, feat, 3, 3) * 0.02
    state[f"body.{last}.bias"] = torch.zeros(3 * scale * scale)
    save_file({k: v.contiguous() for k, v in state.items()}, out)


def _make_single_file(base: str, out: str) -> None:
    """The tiny model as one .safetensors file in the original (Stability) SDXL layout, the
    way single-file checkpoints are shared."""
    from safetensors.torch import save_file

    from . import checkpoint_layout

    save_file(checkpoint_layout.to_original(base), out)


def create_extra(name: str, cache_dir: str) -> str:
    """The path of tiny companion `name` (a key of EXTRAS) under cache_dir/models, made on
    first use (the tiny model too, which most of them derive from)."""
    models = os.path.join(cache_dir, "models")
    target = os.path.join(models, EXTRAS[name])
    if os.path.exists(target):
        return target
    base = create(os.path.join(models, TINY_NAME))
    makers = {
        TINY_LORA: lambda out: _make_lora(base, out),
        TINY_CONTROLNET: lambda out: _make_controlnet(base, out),
        TINY_REFINER: lambda out: _make_refiner(base, out),
        TINY_VAE: lambda out: _make_vae(base, out),
        TINY_UPSCALER: _make_upscaler,
        TINY_SINGLE_FILE: lambda out: _make_single_file(base, out),
    }
    return _atomic(target, makers[name])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m atelier_worker.tiny", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder to create (left alone if it holds a model)")
    ap.add_argument("--preset", choices=("tiny", "full"), default="tiny")
    ap.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    args = ap.parse_args(argv)
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    # The libraries' save progress bars and their warning about casting a freshly built
    # model with .to() say nothing useful here.
    dlog.set_verbosity_error()
    tlog.disable_progress_bar()
    print(create(args.out, args.preset, args.dtype))
    return 0


if __name__ == "__main__":
    sys.exit(main())
