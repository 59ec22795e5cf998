"""Issue 3's features on the tiny models, in process: each one shows an effect, records
itself in the PNG metadata, and refuses bad input naming the field."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from atelier_worker import hashes, infotext, loras, schedulers, spec, tiny
from atelier_worker.engine import Engine, decode, denoise, output
from atelier_worker.job import Job
from atelier_worker.protocol import decode_request

from conftest import new_id, request


@pytest.fixture(scope="module")
def engine(tiny_model):
    return Engine("cpu", torch.float32)


@pytest.fixture(scope="module")
def pics(tmp_path_factory):
    """Input images: a noisy picture, a square mask on it, and a control picture of another
    size than the output."""
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(d / "init.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (20, 20, 44, 44))
    mask.save(d / "mask.png")
    mask.resize((32, 32)).save(d / "mask32.png")
    control = Image.new("RGB", (100, 60), "black")
    control.paste((255, 255, 255), (30, 10, 70, 50))
    control.save(d / "control.png")
    return d


def run(engine, out, **overrides):
    msgs: list = []
    job = Job(id=new_id("feat"), request=decode_request(request(out, **overrides)))
    res = engine.run(job, msgs.append)
    return res, msgs


def ok(engine, out, **overrides):
    res, msgs = run(engine, out, **overrides)
    assert res.type == "result", res
    return res, msgs


def px(res, i: int = 0) -> np.ndarray:
    with Image.open(res.images[i].path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


def params(res, i: int = 0) -> str:
    with Image.open(res.images[i].path) as im:
        return im.info["parameters"]


def progress(msgs, stage=None):
    return [(m.stage, m.step, m.total) for m in msgs if m.type == "progress"
            and (stage is None or m.stage == stage)]


def differ(a, b) -> float:
    return float(np.abs(a - b).mean())


def test_lora_weight_has_an_effect_and_zero_equals_none(engine, tmp_path):
    plain = px(ok(engine, tmp_path)[0])
    one, msgs = ok(engine, tmp_path, loras=[{"path": "tiny-lora", "weight": 1}])
    assert ("loading_model", 0, 0) in progress(msgs)
    zero, msgs = ok(engine, tmp_path, loras=[{"path": "tiny-lora", "weight": 0}])
    assert "loading_model" not in [s for s, *_ in progress(msgs)]  # kept from the last job
    neg = px(ok(engine, tmp_path, loras=[{"path": "tiny-lora", "weight": -2}])[0])
    assert differ(px(one), plain) > 0.5 and differ(neg, plain) > 0.5
    assert np.abs(px(zero) - plain).max() <= 1
    lora_file = tiny.create_extra("tiny-lora", engine.cache_dir)
    h = hashes.file_sha256(lora_file)[:10]
    text = params(one)
    assert f'Lora hashes: "tiny-lora: {h}"' in text and 'Loras: "<lora:tiny-lora:1>"' in text
    assert text.split("\n")[0].endswith(" <lora:tiny-lora:1>"), "A1111 reads the tags in the prompt"
    assert "Model hash" not in text, "the tiny model is a folder: no file to hash"
    # A job without LoRAs unloads them; the picture is the plain one again.
    again = px(ok(engine, tmp_path)[0])
    assert np.array_equal(again, plain)
    assert not loras.loaded(engine.pipe)


def test_kohya_format_lora_gives_the_same_image(engine, tmp_path):
    from safetensors.torch import load_file, save_file

    peft = tiny.create_extra("tiny-lora", engine.cache_dir)
    kohya = {}
    for k, v in load_file(peft).items():
        name, kind = k.removeprefix("unet.").rsplit(".lora.", 1)
        base = "lora_unet_" + name.replace(".", "_")
        kohya[f"{base}.lora_{kind}"] = v
        kohya[f"{base}.alpha"] = torch.tensor(4.0)  # rank 4: scale 1, as the PEFT file's
    save_file(kohya, str(tmp_path / "kohya-style.safetensors"))
    a = px(ok(engine, tmp_path, loras=[{"path": "tiny-lora", "weight": 0.7}])[0])
    b, _ = ok(engine, tmp_path, loras=[{"path": str(tmp_path / "kohya-style.safetensors"), "weight": 0.7}])
    assert np.abs(px(b) - a).max() <= 1
    assert 'Loras: "<lora:kohya-style:0.7>"' in params(b)


def test_every_scheduler_runs_and_gives_its_own_image(engine, tmp_path):
    images = {}
    for name in spec.SCHEDULERS:
        res, msgs = ok(engine, tmp_path, scheduler=name, steps=3)
        images[name] = px(res)
        total = progress(msgs, "denoising")[-1][2]
        assert progress(msgs, "denoising")[-1][1] == total
        assert total == (5 if name in ("heun", "dpm2", "dpm2_a") else 3), name
        assert f"Sampler: {schedulers.sampler_name(name)}, " in params(res)
    names = list(images)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not np.array_equal(images[a], images[b]), (a, b)


def test_schedules_change_the_sigmas_and_are_checked(engine, tmp_path):
    plain = px(ok(engine, tmp_path, scheduler="dpmpp_2m", steps=3)[0])
    for schedule in schedulers.supported_schedules("dpmpp_2m"):
        res, _ = ok(engine, tmp_path, scheduler="dpmpp_2m", schedule=schedule, steps=3)
        assert not np.array_equal(px(res), plain), schedule
        assert f"Schedule type: {infotext.SCHEDULE_NAMES[schedule]}, " in params(res)
    err, _ = run(engine, tmp_path, scheduler="ddim", schedule="karras")
    assert (err.code, err.field) == ("invalid_request", "schedule") and "DDIM" in err.message


def test_img2img_follows_the_init_image_by_strength(engine, tmp_path, pics):
    init = str(pics / "init.png")
    low, msgs = ok(engine, tmp_path, init_image=init, strength=0.25, steps=8)
    assert progress(msgs, "denoising")[-1] == ("denoising", 2, 2)
    high, _ = ok(engine, tmp_path, init_image=init, strength=1.0, steps=8)
    src = np.asarray(Image.open(init)).astype(np.int16)
    assert differ(px(low), src) < differ(px(high), src)
    assert "Denoising strength: 0.25, " in params(low)
    err, _ = run(engine, tmp_path, init_image=init, strength=0.1, steps=4)
    assert (err.code, err.field) == ("invalid_request", "strength")


@pytest.mark.parametrize("padding", [0, 8])
def test_inpaint_keeps_the_pixels_outside_the_blurred_mask(engine, tmp_path, pics, padding):
    res, _ = ok(engine, tmp_path, init_image=str(pics / "init.png"),
                mask_image=str(pics / "mask.png"), mask_blur=4, mask_padding=padding)
    src = np.asarray(Image.open(pics / "init.png")).astype(np.int16)
    blurred = np.asarray(Image.open(pics / "mask.png").filter(
        __import__("PIL.ImageFilter").ImageFilter.GaussianBlur(4)))
    out = px(res)
    outside = blurred == 0
    assert outside.sum() > 1000
    assert np.abs(out[outside] - src[outside]).max() <= 1
    inside = blurred == 255
    assert differ(out[inside], src[inside]) > 10
    text = params(res)
    assert "Mask blur: 4, " in text
    assert ("Inpaint area: Only masked, Masked area padding: 8, " in text) == (padding > 0)


def test_mask_of_another_size_is_refused(engine, tmp_path, pics):
    err, _ = run(engine, tmp_path, init_image=str(pics / "init.png"),
                 mask_image=str(pics / "mask32.png"))
    assert (err.code, err.field) == ("invalid_request", "mask_image")
    assert "32x32" in err.message and "64x64" in err.message


def test_controlnet_scale_zero_equals_none_and_canny_image_is_returned(engine, tmp_path, pics):
    plain = px(ok(engine, tmp_path)[0])
    cn = {"type": "canny", "model": "tiny-controlnet", "image": str(pics / "control.png")}
    zero, _ = ok(engine, tmp_path, controlnets=[{**cn, "scale": 0}])
    assert np.abs(px(zero) - plain).max() <= 1
    one, msgs = ok(engine, tmp_path, controlnets=[{**cn, "canny_low": 50, "canny_high": 150}])
    assert differ(px(one), plain) > 0.5
    assert "preprocessing" in [s for s, *_ in progress(msgs)]
    [control] = one.control_images
    with Image.open(control) as im:  # resized from 100x60, never refused for its size
        assert im.size == (64, 64)
        edges = np.asarray(im)
    assert set(np.unique(edges)) <= {0, 255} and (edges == 255).any()
    assert ('ControlNet 0: "Module: canny, Model: tiny-controlnet, Weight: 1, Guidance Start: 0, '
            'Guidance End: 1, Threshold A: 50, Threshold B: 150"') in params(one)
    # Two at once (MultiControlNet), one of them a prepared image with a guidance window.
    two, _ = ok(engine, tmp_path, controlnets=[
        cn, {"type": "depth", "model": "tiny-controlnet", "image": str(pics / "init.png"),
             "scale": 0.5, "start": 0.2, "end": 0.8}])
    assert len(two.control_images) == 2 and differ(px(two), px(one)) > 0.1
    assert 'ControlNet 1: "Module: none, Type: depth, ' in params(two)


def test_controlnet_for_another_architecture_is_refused(engine, tmp_path, pics):
    src = tiny.create_extra("tiny-controlnet", engine.cache_dir)
    other = tmp_path / "sd15-controlnet"
    shutil.copytree(src, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["cross_attention_dim"] = 768
    (other / "config.json").write_text(json.dumps(cfg))
    err, _ = run(engine, tmp_path, controlnets=[
        {"type": "canny", "model": "tiny-controlnet", "image": str(pics / "control.png")},
        {"type": "canny", "model": str(other), "image": str(pics / "control.png")}])
    assert (err.code, err.field) == ("invalid_request", "controlnets[1].model")
    assert "cross_attention_dim" in err.message and str(other) in err.message


def test_refiner_runs_after_the_base(engine, tmp_path):
    plain = px(ok(engine, tmp_path, steps=5)[0])
    res, msgs = ok(engine, tmp_path, steps=5, refiner="tiny-refiner", refiner_switch=0.6)
    stages = [s for s, *_ in progress(msgs)]
    assert stages.index("denoising") < stages.index("refining") < stages.index("decoding")
    assert progress(msgs, "denoising")[-1] == ("denoising", 3, 3)
    assert progress(msgs, "refining") == [("refining", i, 2) for i in range(3)]
    assert differ(px(res), plain) > 0.1
    assert "Refiner: tiny-refiner, Refiner switch at: 0.6, " in params(res)



def test_refiner_after_img2img_with_controlnet(engine, tmp_path, pics):
    # diffusers' ControlNet img2img pipeline has no denoising_end: the worker stops it at the
    # switch itself. 4 steps x 0.75 strength = 3 timesteps (501, 251, 1); the switch at 0.8
    # (t = 200) leaves 2 to the base and 1 to the refiner.
    res, msgs = ok(engine, tmp_path, init_image=str(pics / "init.png"), refiner="tiny-refiner",
                   controlnets=[{"type": "canny", "model": "tiny-controlnet",
                                 "image": str(pics / "control.png")}])
    assert progress(msgs, "denoising") == [("denoising", i, 2) for i in range(3)]
    assert progress(msgs, "refining") == [("refining", 0, 1), ("refining", 1, 1)]


def test_vae_choice_and_nan_fallback(engine, tmp_path, monkeypatch, caplog):
    plain = px(ok(engine, tmp_path)[0])
    res, _ = ok(engine, tmp_path, vae="tiny-vae")
    assert differ(px(res), plain) > 1 and "VAE: tiny-vae, " in params(res)
    assert not res.metrics.vae_fallback
    assert np.array_equal(px(ok(engine, tmp_path)[0]), plain)  # back to the model's own

    real = decode.vae_decode
    calls = []

    def nan_once(vae, latents, settings):
        image = real(vae, latents, settings)
        calls.append(1)
        return image * float("nan") if len(calls) == 1 else image

    monkeypatch.setattr(decode, "vae_decode", nan_once)
    with caplog.at_level("WARNING", logger="atelier.engine.decode"):
        res, _ = ok(engine, tmp_path)
    assert res.metrics.vae_fallback and len(calls) == 2
    assert np.array_equal(px(res), plain)
    assert any("NaN" in r.getMessage() for r in caplog.records)


def test_upscale_lanczos_and_model(engine, tmp_path):
    res, msgs = ok(engine, tmp_path, upscaler="lanczos")
    assert (res.images[0].width, res.images[0].height) == (128, 128)
    assert px(res).shape == (128, 128, 3)
    assert ("upscaling", 0, 1) in progress(msgs)
    text = params(res)
    assert "Size: 64x64, " in text and "Postprocess upscaler: Lanczos, Postprocess upscale by: 2, " in text
    res, _ = ok(engine, tmp_path, upscaler="tiny-upscaler", upscale=1.5, batch_size=2)
    assert [(i.width, i.height) for i in res.images] == [(96, 96), (96, 96)]
    assert "Postprocess upscaler: tiny-upscaler, Postprocess upscale by: 1.5, " in params(res)


def test_hires_pass_redraws_the_enlarged_image(engine, tmp_path):
    first, _ = ok(engine, tmp_path, seed=11)
    resized = np.asarray(Image.open(first.images[0].path).convert("RGB").resize(
        (128, 128), Image.LANCZOS)).astype(np.int16)

    res, msgs = ok(engine, tmp_path, seed=11, hires_scale=2, hires_steps=4, hires_strength=0.5)
    assert (res.images[0].width, res.images[0].height) == (128, 128)
    hires = progress(msgs, "hires")
    assert hires[0] == ("hires", 0, 2) and hires[-1] == ("hires", 2, 2)  # 4 steps x 0.5
    stages = [m.stage for m in msgs if m.type == "progress"]
    assert stages.index("denoising") < stages.index("decoding") < stages.index("hires")
    text = params(res)
    assert "Size: 64x64, " in text  # the first pass's size, as A1111 writes it
    assert ("Denoising strength: 0.5, Hires upscale: 2, Hires steps: 4, Hires upscaler: Lanczos"
            in text)
    # The model drew the enlarged image again (the tiny model's random VAE alone changes
    # it, so how much does not follow the strength here), and the strength matters.
    weak = px(ok(engine, tmp_path, seed=11, hires_scale=2, hires_strength=0.25)[0])
    strong = px(ok(engine, tmp_path, seed=11, hires_scale=2, hires_strength=0.9)[0])
    assert differ(weak, resized) > 0 and differ(strong, weak) > 0
    # Deterministic, and every image of a batch gets its own pass at its own seed.
    again, _ = ok(engine, tmp_path, seed=11, hires_scale=2, hires_steps=4, hires_strength=0.5)
    assert np.array_equal(px(again), px(res))
    batch, msgs = ok(engine, tmp_path, seed=11, batch_size=2, hires_scale=1.5)
    assert [(i.width, i.height) for i in batch.images] == [(96, 96), (96, 96)]
    assert len([p for p in progress(msgs, "hires") if p[1] == 0]) == 2


def test_hires_pass_is_guided_by_the_controlnets(engine, tmp_path, pics, monkeypatch):
    built = []
    real = denoise.build_pipeline

    def spy(cls, pipe, extra):
        built.append(cls.__name__)
        return real(cls, pipe, extra)

    monkeypatch.setattr(denoise, "build_pipeline", spy)
    cn = {"type": "canny", "model": "tiny-controlnet", "image": str(pics / "control.png")}
    plain = px(ok(engine, tmp_path, hires_scale=2)[0])
    assert built[-1] == "StableDiffusionXLImg2ImgPipeline"
    zero = px(ok(engine, tmp_path, hires_scale=2, controlnets=[{**cn, "scale": 0}])[0])
    assert built[-1] == "StableDiffusionXLControlNetImg2ImgPipeline"
    assert np.abs(zero - plain).max() <= 1  # scale 0: the same image through either pipeline
    two, _ = ok(engine, tmp_path, hires_scale=2, controlnets=[
        cn, {"type": "depth", "model": "tiny-controlnet", "image": str(pics / "init.png"), "scale": 0.5}])
    assert built[-1] == "StableDiffusionXLControlNetImg2ImgPipeline"
    assert (two.images[0].width, two.images[0].height) == (128, 128)
    assert differ(px(two), plain) > 0.1


@pytest.mark.parametrize("overrides, message", [
    ({"hires_scale": 0.5}, "must be 0 (off) or between 1 and 4"),
    ({"hires_scale": 5}, "between 0 and 4"),
    ({"hires_scale": 2, "width": 2560}, "past the largest size"),
    ({"hires_scale": 2, "init_image": "x.png"}, "is for text-to-image"),
    ({"hires_scale": 2, "hires_strength": 0}, "must be above 0"),
])
def test_hires_requests_are_checked(tmp_path, overrides, message):
    from atelier_worker.protocol import ProtocolError

    with pytest.raises(ProtocolError, match=re.escape(message)) as e:
        decode_request(request(tmp_path, **overrides))
    assert e.value.field.startswith("hires_")


def test_a_full_disk_mid_batch_keeps_no_file_of_the_job_and_the_engine_goes_on(engine, tmp_path,
                                                                               monkeypatch):
    import errno

    out = tmp_path / "out"
    out.mkdir()
    write, calls = output.write_file, []

    def full_at_the_second(path, data, sync=True):
        calls.append(path)
        if len(calls) == 2:
            with open(path, "wb") as f:  # a part of it, as a real full disk leaves
                f.write(data[:10])
            raise OSError(errno.ENOSPC, "No space left on device", path)
        write(path, data, sync)

    monkeypatch.setattr(output, "write_file", full_at_the_second)
    res, _ = run(engine, out, batch_size=2)
    assert len(calls) == 2, "the second image's write is the one that fails"
    assert (res.type, res.code, res.field) == ("error", spec.ERR_DISK_FULL, "")
    assert "the disk is full" in res.message and "image 2 of 2" in res.message
    assert "the job needs about" in res.message and "are free" in res.message
    assert "Nothing of this job was kept" in res.message
    assert "No space left on device" in res.detail
    assert sorted(os.listdir(out)) == [], "neither image, nor a temporary file, of the failed job remains"

    def denied(path, data, sync=True):
        raise OSError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(output, "write_file", denied)
    res, _ = run(engine, out)
    assert (res.type, res.code, res.field) == ("error", "internal", "output_dir")
    assert "Permission denied" in res.message and "Free some disk space" in res.message
    assert os.listdir(out) == []
    monkeypatch.undo()
    made, _ = ok(engine, out, batch_size=2)
    assert sorted(os.listdir(out)) == sorted(os.path.basename(im.path) for im in made.images)


def test_a_failed_job_keeps_none_of_its_control_images(engine, tmp_path, pics, monkeypatch):
    import errno

    out = tmp_path / "out"
    out.mkdir()
    write = output.write_file

    def full_for_images(path, data, sync=True):
        if "-control-" not in path:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        write(path, data, sync)

    monkeypatch.setattr(output, "write_file", full_for_images)
    res, _ = run(engine, out, controlnets=[{"model": "tiny-controlnet", "image": str(pics / "init.png"),
                                             "type": "canny"}])
    assert (res.type, res.code) == ("error", spec.ERR_DISK_FULL), res
    assert os.listdir(out) == [], "the control image goes with the job's images"


def test_upscale_only_enlarges_a_picture_and_keeps_its_settings(engine, tmp_path, pics):
    made, _ = ok(engine, tmp_path, seed=5)
    source = made.images[0].path
    res, msgs = ok(engine, tmp_path, upscale_only=True, init_image=source, upscaler="lanczos",
                   upscale=2, model="/nowhere/no-model")  # no model is loaded
    assert (res.images[0].width, res.images[0].height) == (128, 128)
    assert [m.stage for m in msgs if m.type == "progress"] == ["upscaling", "saving"]
    with Image.open(source) as im:
        want = np.asarray(im.convert("RGB").resize((128, 128), Image.LANCZOS)).astype(np.int16)
    assert np.array_equal(px(res), want)
    text = params(res)
    assert text.startswith(params(made)) and text.endswith(
        ", Postprocess upscaler: Lanczos, Postprocess upscale by: 2")
    # A picture from elsewhere (no settings), through a model upscaler.
    res, _ = ok(engine, tmp_path, upscale_only=True, init_image=str(pics / "init.png"),
                upscaler="tiny-upscaler", upscale=2)
    assert (res.images[0].width, res.images[0].height) == (128, 128)
    assert params(res).startswith("Upscaled init.png\nPostprocess upscaler: tiny-upscaler, ")
    # What it needs is checked, naming the field.
    for overrides, field in (({"upscaler": "lanczos"}, "upscale_only"),
                             ({"init_image": source}, "upscale_only")):
        from atelier_worker.protocol import ProtocolError
        with pytest.raises(ProtocolError) as e:
            decode_request(request(tmp_path, upscale_only=True, **overrides))
        assert e.value.field == field
    res, _ = run(engine, tmp_path, upscale_only=True, init_image=str(tmp_path / "gone.png"),
                 upscaler="lanczos")
    assert (res.type, res.field) == ("error", "init_image")


def test_batch_splits_when_out_of_memory(engine, tmp_path, monkeypatch):
    single = px(ok(engine, tmp_path, seed=8)[0])
    real = denoise.Denoiser.chunk
    sizes = []

    def small_device(self, seeds):
        sizes.append(len(seeds))
        if len(seeds) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real(self, seeds)

    monkeypatch.setattr(denoise.Denoiser, "chunk", small_device)
    res, _ = ok(engine, tmp_path, batch_size=3)
    assert sizes == [3, 1, 1, 1]  # 3 fails, then halves to 1 (3 // 2 = 1)
    assert [i.seed for i in res.images] == [7, 8, 9] and res.metrics.batch_chunks == 3
    assert np.array_equal(px(res, 1), single)
    assert "Seed: 9, " in params(res, 2)


@pytest.mark.parametrize("overrides,field,code", [
    ({"loras": [{"path": "NOTALORA"}]}, "loras[0].path", "invalid_request"),
    ({"loras": [{"path": "/nowhere/style.safetensors"}]}, "loras[0].path", "invalid_request"),
    ({"upscaler": "NOTALORA"}, "upscaler", "invalid_request"),
    ({"vae": "/nowhere/vae"}, "vae", "invalid_request"),
    ({"refiner": "/nowhere/refiner"}, "refiner", "invalid_request"),
    ({"init_image": "/nowhere/init.png"}, "init_image", "invalid_request"),
    ({"controlnets": [{"type": "canny", "model": "tiny-controlnet", "image": "/nowhere/c.png"}]},
     "controlnets[0].image", "invalid_request"),
    ({"vae": "PICKLE"}, "vae", "unsupported"),
])
def test_bad_files_name_their_field(engine, tmp_path, overrides, field, code):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": \"b\"}      " + bytes(64))
    pickle = tmp_path / "vae.pt"
    pickle.write_bytes(b"\x80\x02}q\x00.")
    text = json.dumps(overrides).replace("NOTALORA", str(junk)).replace("PICKLE", str(pickle))
    err, _ = run(engine, tmp_path, **json.loads(text))
    assert (err.type, err.code, err.field) == ("error", code, field), err
    # The engine goes on.
    ok(engine, tmp_path, steps=1)


def test_single_file_checkpoint_loads_like_the_folder(engine, tmp_path):
    folder = px(ok(engine, tmp_path)[0])
    res, msgs = ok(engine, tmp_path, model="tiny-single-file")
    assert ("loading_model", 0, 0) in progress(msgs)
    assert np.abs(px(res) - folder).max() <= 1
    assert "Model: tiny-single-file, " in params(res)
    checkpoint = tiny.create_extra("tiny-single-file", engine.cache_dir)
    assert f"Model hash: {hashes.short_hash(checkpoint)}, Model: tiny-single-file, " in params(res)
    # A LoRA given as the model is refused by its header, before anything loads.
    lora = tiny.create_extra("tiny-lora", engine.cache_dir)
    err, _ = run(engine, tmp_path, model=lora)
    assert (err.code, err.field) == ("unsupported", "model") and "LoRA" in err.message


def test_single_file_vae_in_both_layouts(engine, tmp_path):
    from safetensors.torch import load_file, save_file

    from atelier_worker import checkpoint_layout

    folder_vae, _ = ok(engine, tmp_path, vae="tiny-vae")
    src = tiny.create_extra("tiny-vae", engine.cache_dir)
    sd = load_file(os.path.join(src, "diffusion_pytorch_model.safetensors"))
    cfg = json.loads(open(os.path.join(src, "config.json")).read())
    save_file(sd, str(tmp_path / "diffusers-layout.safetensors"))
    save_file({k: v.contiguous() for k, v in checkpoint_layout.vae_to_original(sd, cfg, prefix="").items()},
              str(tmp_path / "original-layout.safetensors"))
    for name in ("diffusers-layout", "original-layout"):
        res, _ = ok(engine, tmp_path, vae=str(tmp_path / f"{name}.safetensors"))
        assert np.abs(px(res) - px(folder_vae)).max() <= 1, name
        assert f"VAE: {name}, " in params(res)


def test_sdxl_configs_and_clip_tokenizer_are_available_offline(tmp_path):
    from transformers import CLIPTokenizer

    from atelier_worker import single_file

    folder = single_file.sdxl_config(str(tmp_path))
    for name in ("tokenizer", "tokenizer_2"):
        tok = CLIPTokenizer.from_pretrained(os.path.join(folder, name))
        assert len(tok) == 49408
        # OpenAI CLIP's ids for this sentence.
        assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    unet = json.loads(open(os.path.join(folder, "unet", "config.json")).read())
    assert unet["cross_attention_dim"] == 2048 and unet["_class_name"] == "UNet2DConditionModel"


def test_warm_models_are_kept_up_to_the_limit(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("ATELIER_WARM_MODELS", "2")
    two = Engine("cpu", torch.float32)
    loads = lambda msgs: [s for s, *_ in progress(msgs)].count("loading_model")  # noqa: E731
    for model, expected in (("tiny", 1), ("tiny-single-file", 1), ("tiny", 0), ("tiny-single-file", 0)):
        _, msgs = ok(two, tmp_path, model=model, steps=1)
        assert loads(msgs) == expected, model
    monkeypatch.setenv("ATELIER_WARM_MODELS", "1")
    one = Engine("cpu", torch.float32)
    for model in ("tiny", "tiny-single-file", "tiny"):
        _, msgs = ok(one, tmp_path, model=model, steps=1)
        assert loads(msgs) == 1, model
    assert len(one.models.models) == 1


def test_tiled_upscaling_has_no_seams(tiny_model):
    from atelier_worker import upscale

    desc = upscale.load(tiny.create_extra("tiny-upscaler", os.path.dirname(os.path.dirname(tiny_model))), "cpu")
    assert desc.scale == 2 and desc.architecture.name == "RealESRGAN Compact"
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8))
    whole = np.asarray(upscale._run_tiled(desc, image, tile=1024)).astype(np.int16)
    tiled = np.asarray(upscale._run_tiled(desc, image, tile=16, overlap=8)).astype(np.int16)
    assert whole.shape == (72, 80, 3) and np.abs(whole - tiled).max() <= 1
    assert upscale.upscale(image, 4, desc).size == (160, 144)  # two model passes


def test_lora_on_a_model_with_fused_qkv(engine, tiny_model, tmp_path, monkeypatch):
    # CUDA fuses the attention projections by default (accel.py); LoRAs need them apart.
    monkeypatch.setenv("ATELIER_FUSE_QKV", "1")
    fused = Engine("cpu", torch.float32)
    res, _ = ok(fused, tmp_path, loras=[{"path": "tiny-lora", "weight": 1}])
    assert fused.speed.get("fuse_qkv") and next(iter(fused.models.models.values())).unfused
    plain, _ = ok(engine, tmp_path, loras=[{"path": "tiny-lora", "weight": 1}])
    assert np.abs(px(res) - px(plain)).max() <= 1


def test_half_precision_model_stays_half_through_every_pipeline(tiny_model, tmp_path, pics):
    # The img2img, inpaint and ControlNet pipelines are built on the warm model's modules;
    # building them must not cast those (diffusers' from_pipe casts to float32), and the VAE,
    # kept in another dtype, must still encode half-precision pixels.
    half = Engine("cpu", torch.bfloat16)
    cn = {"type": "canny", "model": "tiny-controlnet", "image": str(pics / "control.png")}
    init, mask = str(pics / "init.png"), str(pics / "mask.png")
    for extra in ({"init_image": init, "controlnets": [cn]},
                  {"init_image": init, "mask_image": mask, "vae": "tiny-vae"},
                  {"refiner": "tiny-refiner", "loras": [{"path": "tiny-lora"}]}):
        res, _ = ok(half, tmp_path, steps=2, **extra)
        assert (half.pipe.unet.dtype, half.pipe.text_encoder_2.dtype) == (torch.bfloat16,) * 2
