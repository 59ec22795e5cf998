"""The generated SDXL-architecture model."""

import hashlib
import json
import os

import pytest

from atelier_worker import tiny


def _hashes(folder: str) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            p = os.path.join(root, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_creation_is_deterministic(tmp_path, tiny_model):
    again = tiny.main(["--out", str(tmp_path / "again")])
    assert again == 0
    first, second = _hashes(tiny_model), _hashes(str(tmp_path / "again"))
    assert "unet/diffusion_pytorch_model.safetensors" in first
    assert first == second


def test_only_safetensors_weights_and_sdxl_layout(tiny_model):
    files = _hashes(tiny_model)
    assert not [f for f in files if f.endswith((".bin", ".ckpt", ".pt", ".pth"))]
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert any(f.startswith(part + "/") and f.endswith(".safetensors") for f in files), part
    for part in ("tokenizer", "tokenizer_2"):
        assert f"{part}/vocab.json" in files and f"{part}/merges.txt" in files
    vae = json.load(open(os.path.join(tiny_model, "vae", "config.json")))
    assert 2 ** (len(vae["block_out_channels"]) - 1) == 8
    unet = json.load(open(os.path.join(tiny_model, "unet", "config.json")))
    assert unet["addition_embed_type"] == "text_time"


def test_tokenizer_encodes_words_and_fits_the_text_encoder(tiny_model):
    from transformers import CLIPTextConfig, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(os.path.join(tiny_model, "tokenizer"))
    ids = tok("a lighthouse at dusk, zebra!").input_ids
    assert tok.convert_ids_to_tokens(ids)[:4] == ["<|startoftext|>", "a</w>", "lighthouse</w>", "at</w>"]
    cfg = CLIPTextConfig.from_pretrained(os.path.join(tiny_model, "text_encoder"))
    assert max(ids) < cfg.vocab_size
    assert (cfg.bos_token_id, cfg.eos_token_id) == (tok.bos_token_id, tok.eos_token_id)
    assert tok.model_max_length == 77


def test_a_concurrent_creator_winning_the_race_is_used(tmp_path, monkeypatch):
    target = tmp_path / "m"
    real_build = tiny.build

    def build_after_a_rival(folder, preset="tiny", dtype="float32"):
        os.makedirs(target)
        (target / "model_index.json").write_text("{}")
        (target / "rival").write_text("")
        real_build(folder, preset, dtype)

    monkeypatch.setattr(tiny, "build", build_after_a_rival)
    assert tiny.create(str(target)) == str(target)
    assert (target / "rival").exists()
    assert os.listdir(tmp_path) == ["m"]  # no temporary folder left behind


def test_existing_model_is_left_alone(tmp_path, monkeypatch):
    (tmp_path / "model_index.json").write_text("{}")
    monkeypatch.setattr(tiny, "build", lambda *a: pytest.fail("rebuilt an existing model"))
    assert tiny.create(str(tmp_path)) == str(tmp_path)


def test_full_preset_has_sdxl_base_dimensions():
    import torch
    from diffusers import UNet2DConditionModel

    vocab, _ = tiny.tokenizer_files()
    cfg = tiny.configs("full", len(vocab), 0, 1)
    te1, te2, unet = cfg["text_encoder"], cfg["text_encoder_2"], cfg["unet"]
    assert unet["cross_attention_dim"] == te1["hidden_size"] + te2["hidden_size"] == 2048
    assert unet["projection_class_embeddings_input_dim"] == 2816
    assert cfg["vae"]["block_out_channels"] == [128, 256, 512, 512]
    assert (te1["num_hidden_layers"], te2["num_hidden_layers"]) == (12, 32)
    # On the meta device: the shapes without 10 GB of weights.
    with torch.device("meta"):
        model = UNet2DConditionModel(**unet)
    params = sum(p.numel() for p in model.parameters())
    assert round(params / 1e6, 1) == 2567.5
