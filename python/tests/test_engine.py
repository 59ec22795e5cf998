"""Pieces of the engine that need no worker process."""

import os
import shutil

import pytest
import torch

from atelier_worker import device as devices
from atelier_worker.engine import Engine, JobFailed
from atelier_worker.engine.checks import check_model_folder
from atelier_worker.engine.output import write_png
from atelier_worker.job import Job


def _fails(path) -> JobFailed:
    with pytest.raises(JobFailed) as e:
        check_model_folder(str(path))
    return e.value


def test_model_folder_checks(tmp_path, tiny_model):
    check_model_folder(tiny_model)

    e = _fails(tmp_path / "nope")
    assert e.code == "model_not_found" and "does not exist" in e.message and e.field == "model"

    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"\x80\x02")
    e = _fails(ckpt)
    assert e.code == "unsupported" and "pickle" in e.message

    single = tmp_path / "model.safetensors"
    single.write_bytes(b"")
    assert _fails(single).code == "unsupported"

    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    for f in os.listdir(copy / "vae"):
        if f.endswith(".safetensors"):
            os.rename(copy / "vae" / f, copy / "vae" / "diffusion_pytorch_model.bin")
    e = _fails(copy)
    assert e.code == "unsupported" and "vae/" in e.message

    shutil.rmtree(copy / "text_encoder_2")
    e = _fails(copy)
    assert e.code == "model_not_found" and "text_encoder_2/" in e.message


def test_device_choice_and_overrides():
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert devices.pick() == ("cpu", torch.float32)
    assert devices.pick("cpu", "bf16") == ("cpu", torch.bfloat16)
    with pytest.raises(devices.DeviceError, match="unknown dtype"):
        devices.pick("cpu", "int8")
    with pytest.raises(devices.DeviceError, match="unknown device"):
        devices.pick("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(devices.DeviceError, match="no CUDA GPU"):
            devices.pick("cuda")
    assert devices.describe()[-1]["kind"] == "cpu"


def test_write_png_replaces_whole_files(tmp_path):
    from PIL import Image

    target = tmp_path / "a.png"
    write_png(Image.new("RGB", (8, 8), "red"), str(target), "params one")
    write_png(Image.new("RGB", (8, 8), "blue"), str(target), "params two", sync=False)
    assert os.listdir(tmp_path) == ["a.png"]
    with Image.open(target) as im:
        assert im.info["parameters"] == "params two" and im.getpixel((0, 0)) == (0, 0, 255)


def _run(engine, tmp_path, **overrides):
    from atelier_worker.protocol import decode_request

    from conftest import request

    msgs = []
    job = Job(id="unit-1", request=decode_request(request(tmp_path, **overrides)))
    return engine.run(job, msgs.append), msgs


def test_engine_maps_oom_and_internal_errors_and_keeps_going(tmp_path, tiny_model, monkeypatch):
    engine = Engine("cpu", torch.float32)
    real_decode = Engine._decode

    def oom(self, latents):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Engine, "_decode", oom)
    err, msgs = _run(engine, tmp_path, width=128, batch_size=2)
    assert msgs[0].type == "accepted"
    assert err.code == "out_of_memory" and "128x64, batch 2" in err.message and "lower" in err.message

    monkeypatch.setattr(Engine, "_decode", lambda self, latents: 1 / 0)
    err, _ = _run(engine, tmp_path)
    assert err.code == "internal" and "ZeroDivisionError" in err.message
    assert "Traceback" in err.detail and "_generate" in err.detail

    monkeypatch.setattr(Engine, "_decode", real_decode)
    result, _ = _run(engine, tmp_path)
    assert result.type == "result"


def test_half_precision_decodes_the_vae_in_fp32(tmp_path, tiny_model):
    engine = Engine("cpu", torch.float16)
    result, _ = _run(engine, tmp_path)
    assert result.type == "result", result
    assert result.metrics.dtype == "float16"
    assert engine.pipe.unet.dtype == torch.float16 and engine.pipe.vae.dtype == torch.float32


def test_model_with_only_fp16_variant_files_loads(tmp_path, tiny_model):
    copy = tmp_path / "variant-model"
    shutil.copytree(tiny_model, copy)
    for root, _, files in os.walk(copy):
        for f in files:
            if f.endswith(".safetensors"):
                os.rename(os.path.join(root, f), os.path.join(root, f.replace(".safetensors", ".fp16.safetensors")))
    result, _ = _run(Engine("cpu", torch.float32), tmp_path, model=str(copy))
    assert result.type == "result", result


def test_cuda_index_is_nvidia_smis_number(monkeypatch):
    # cuda:N names the GPU nvidia-smi numbers N; torch counts the visible ones from 0.
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert devices.cuda_index("cuda:1", 2) == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert devices.cuda_index("cuda:5", 2) == 1
    with pytest.raises(devices.DeviceError, match=r"it sees cuda:2, cuda:5 \(numbered as nvidia-smi"):
        devices.cuda_index("cuda:0", 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f2a,GPU-77c1")
    assert devices.cuda_index("cuda:1", 2) == 1
    with pytest.raises(devices.DeviceError, match="unknown device"):
        devices.cuda_index("cuda:01", 2)
