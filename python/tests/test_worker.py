"""The real worker as a subprocess, speaking the protocol."""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

import atelier_worker
from atelier_worker import spec
from atelier_worker.worker import Heartbeats, heartbeat_interval

from conftest import PYTHON_DIR, WorkerProcess, new_id, request


def _pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_hello_follows_loading_lines(worker):
    h = worker.hello
    assert [m.type for m in worker.startup[:-1]] and all(m.type == "loading" for m in worker.startup[:-1])
    assert (h.protocol, h.worker_version) == (1, atelier_worker.__version__)
    assert (h.device, h.dtype) == ("cpu", "float32")  # this test machine has no GPU
    assert any(d.kind == "cpu" and d.memory_bytes > 0 for d in h.devices)
    caps = h.capabilities
    assert caps.schedulers == list(spec.SCHEDULERS) and len(caps.schedulers) == 10
    assert caps.controlnet_types == list(spec.CONTROLNET_TYPES)
    assert {"txt2img", "img2img", "inpaint", "lora", "controlnet", "canny", "refiner", "vae",
            "upscale", "upscale_model", "batch", "single_file"} <= set(caps.features)
    assert caps.schedules["dpmpp_2m"] == ["karras", "exponential", "beta"]
    assert caps.schedules["ddim"] == [] and set(caps.schedules) == set(caps.schedulers)
    assert {"python", "torch", "diffusers", "transformers", "spandrel"} <= set(h.versions)


def test_generate_writes_png_with_parameters(worker, tmp_path):
    id, msgs = worker.generate(tmp_path, negative_prompt="fog")
    assert msgs[0].type == "accepted" and msgs[0].id == id
    result = msgs[-1]
    assert result.type == "result", result
    [img] = result.images
    assert (img.path, img.seed, img.width, img.height) == (str(tmp_path / f"{id}-0.png"), 7, 64, 64)
    with Image.open(img.path) as im:
        assert im.size == (64, 64)
        params = im.info["parameters"]
    assert params.startswith("a lighthouse\nNegative prompt: fog\n")
    assert "Steps: 4, " in params and "Seed: 7, " in params and "Size: 64x64" in params
    assert "Sampler: Euler, " in params and f"Version: Atelier {atelier_worker.__version__}" in params

    stages = [m.stage for m in msgs if m.type == "progress"]
    assert stages.index("encoding") < stages.index("denoising") < stages.index("decoding") < stages.index("saving")
    steps = [m.step for m in msgs if m.type == "progress" and m.stage == "denoising"]
    assert steps == [0, 1, 2, 3, 4]
    m = result.metrics
    assert (m.device, m.dtype) == ("cpu", "float32") and m.its > 0 and m.peak_mem_bytes > 0
    assert m.total_s >= m.denoise_s > 0
    # What a reproduction compares: the installed versions and the speed settings in effect
    # (on the CPU the CUDA-only ones read off).
    import diffusers
    import torch
    assert m.versions == {"torch": torch.__version__, "diffusers": diffusers.__version__}
    assert m.speed["compile"] == "off" and m.speed["fp8"] == "off" and m.speed["vae_dtype"] == "float32"
    assert m.speed["inference_mode"] == "on" and m.speed["offload"] == "none"
    assert sorted(os.listdir(tmp_path)) == [f"{id}-0.png"]  # no temporary or preview file left


def test_same_seed_same_pixels_and_batch_seeds(worker, tmp_path):
    _, a = worker.generate(tmp_path, seed=7)
    _, b = worker.generate(tmp_path, seed=7)
    _, c = worker.generate(tmp_path, seed=8)
    _, batch = worker.generate(tmp_path, seed=7, batch_size=2)
    pa, pb, pc = (_pixels(m[-1].images[0].path) for m in (a, b, c))
    assert np.array_equal(pa, pb)
    assert not np.array_equal(pa, pc)
    assert [i.seed for i in batch[-1].images] == [7, 8]
    # Image i of a batch starts from the noise of a single run of seed + i; only the
    # batched kernels' rounding may differ.
    second = _pixels(batch[-1].images[1].path).astype(int)
    assert np.abs(second - pc).mean() < 1 < np.abs(second - pa).mean()
    with Image.open(batch[-1].images[1].path) as im:
        assert "Seed: 8, " in im.info["parameters"]


@pytest.mark.parametrize("scheduler", ["euler_a", "ddim", "dpmpp_2m"])
def test_every_scheduler_generates(worker, tmp_path, scheduler):
    _, msgs = worker.generate(tmp_path, scheduler=scheduler, steps=3)
    assert msgs[-1].type == "result", msgs[-1]
    with Image.open(msgs[-1].images[0].path) as im:
        sampler = {"euler_a": "Euler a", "ddim": "DDIM", "dpmpp_2m": "DPM++ 2M"}[scheduler]
        assert "Sampler: " + sampler in im.info["parameters"]


def test_previews_every_n_steps(worker, tmp_path):
    id, msgs = worker.generate(tmp_path, steps=6, preview_every=2)
    previews = [m for m in msgs if m.type == "preview"]
    # One preview is written at a time: on a busy machine the step-4 one may be skipped
    # while step 2's is still being written, never one off the every-2 grid.
    steps = [p.step for p in previews]
    assert steps[:1] == [2] and set(steps) <= {2, 4}
    assert all(p.path == str(tmp_path / f".preview-{id}.png") for p in previews)
    assert msgs[-1].type == "result"
    assert not os.path.exists(previews[0].path)  # removed once the result is out


# Big enough that one denoising step takes far longer than the cancel's trip.
SLOW = dict(steps=40, width=768, height=768)


def test_cancel_stops_within_one_step(worker, tmp_path):
    id = new_id()
    worker.send({"type": "generate", "id": id, "request": request(tmp_path, **SLOW)})
    worker.until(lambda m: m.type == "progress" and m.stage == "denoising" and m.step == 2)
    worker.send({"type": "cancel", "id": id})
    after = worker.finish(id)
    assert after[-1].type == "error" and after[-1].code == "cancelled"
    denoising = [m for m in after if m.type == "progress" and m.stage == "denoising"]
    # The cancel takes effect within one step; a step may end while the cancel is on its way.
    assert len(denoising) <= 2
    assert not [m for m in after if m.type == "progress" and m.stage == "decoding"]
    assert os.listdir(tmp_path) == []
    worker.ping()


def test_ping_and_second_generate_mid_job(worker, tmp_path):
    id = new_id()
    worker.send({"type": "generate", "id": id, "request": request(tmp_path, **SLOW)})
    worker.until(lambda m: m.type == "progress" and m.stage == "denoising" and m.step == 1)
    worker.send({"type": "ping", "id": "mid-job"})
    second = new_id()
    worker.send({"type": "generate", "id": second, "request": request(tmp_path)})
    got = worker.until(lambda m: m.type == "error" and m.id == second)
    pongs = [m for m in got if m.type == "pong"]
    assert [p.id for p in pongs] == ["mid-job"]
    assert got[-1].code == "invalid_request" and id in got[-1].message
    assert not [m for m in got if m.type in ("result", "error") and m.id == id]  # still running
    worker.send({"type": "cancel", "id": id})
    assert worker.finish(id)[-1].code == "cancelled"


@pytest.mark.parametrize("field,value", [("steps", 0), ("width", 63), ("prompt", "  ")])
def test_invalid_request_names_the_field(worker, tmp_path, field, value):
    id = new_id()
    worker.send({"type": "generate", "id": id, "request": request(tmp_path, **{field: value})})
    err = worker.next()
    assert (err.type, err.id, err.code, err.field) == ("error", id, "invalid_request", field)
    worker.ping()


def test_unreadable_lines_get_an_error_and_the_worker_goes_on(worker):
    worker.send("this is not json")
    err = worker.next()
    assert (err.type, err.id, err.code) == ("error", "", "invalid_request")
    worker.send('{"type":"reboot","id":"r-1"}')
    err = worker.next()
    assert (err.id, err.code, err.field) == ("r-1", "invalid_request", "type")
    worker.send('{"type":"pong","id":"r-2"}')  # a worker-to-bridge message
    assert worker.next().field == "type"
    worker.ping()


def test_missing_model_folder(worker, tmp_path):
    missing = tmp_path / "no-such-model"
    _, msgs = worker.generate(tmp_path, model=str(missing))
    err = msgs[-1]
    assert (err.code, err.field) == ("model_not_found", "model")
    assert str(missing) in err.message and "does not exist" in err.message


def test_model_without_unet(worker, tmp_path, tiny_model):
    copy = tmp_path / "broken-model"
    shutil.copytree(tiny_model, copy)
    shutil.rmtree(copy / "unet")
    _, msgs = worker.generate(tmp_path, model=str(copy))
    assert msgs[-1].code == "model_not_found" and "unet/" in msgs[-1].message


def test_pickle_checkpoint_is_never_loaded(worker, tmp_path):
    ckpt = tmp_path / "sd_xl_base_1.0.ckpt"
    ckpt.write_bytes(b"\x80\x02}q\x00.")
    _, msgs = worker.generate(tmp_path, model=str(ckpt))
    assert msgs[-1].code == "unsupported" and "pickle" in msgs[-1].message


def test_output_dir_that_cannot_be_made(worker, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    _, msgs = worker.generate(tmp_path, output_dir=str(blocker / "sub"))
    assert (msgs[-1].code, msgs[-1].field) == ("invalid_request", "output_dir")


def test_loaded_model_from_a_path_and_unload(worker, tmp_path, tiny_model):
    _, first = worker.generate(tmp_path, model=tiny_model)
    assert first[-1].type == "result"
    with Image.open(first[-1].images[0].path) as im:
        assert f"Model: {os.path.basename(tiny_model)}, " in im.info["parameters"]
    _, warm = worker.generate(tmp_path, model=tiny_model)
    assert "loading_model" not in [m.stage for m in warm if m.type == "progress"]
    worker.send({"type": "unload"})
    _, cold = worker.generate(tmp_path, model=tiny_model)
    assert "loading_model" in [m.stage for m in cold if m.type == "progress"]
    assert cold[-1].metrics.load_s > warm[-1].metrics.load_s


def test_logs_go_to_stderr_with_the_request_id(worker, tmp_path):
    id, _ = worker.generate(tmp_path)
    lines = [line for line in worker.stderr_text().splitlines() if f"[{id}]" in line]
    assert any("job started" in line for line in lines)


def test_closing_stdin_mid_job_exits_promptly(tiny_model, tmp_path):
    w = WorkerProcess()
    w.wait_hello()
    id = new_id()
    w.send({"type": "generate", "id": id, "request": request(tmp_path, **SLOW)})
    w.until(lambda m: m.type == "progress" and m.stage == "denoising" and m.step == 1)
    assert w.close(timeout=30) == 0
    # The job stopped for the closed stdin, not the exit deadline that ends a stuck one.
    assert "did not stop within" not in w.stderr_text()


def test_env_overrides_dtype_and_shutdown_exits_zero(tiny_model):
    w = WorkerProcess(env={"ATELIER_DTYPE": "bfloat16", "ATELIER_DEVICE": "cpu"})
    assert w.wait_hello().dtype == "bfloat16"
    w.send({"type": "shutdown"})
    assert w.proc.wait(timeout=60) == 0


def test_unavailable_device_fails_with_a_reason():
    w = WorkerProcess(args=("--device", "mps" if sys.platform != "darwin" else "cuda"))
    msg = w.next()
    while msg.type == "loading":
        msg = w.next()
    # The reason comes on stdout, before any hello, for the bridge to show as such.
    assert (msg.type, msg.id, msg.code) == ("error", "", "unsupported")
    assert "was asked for but this machine" in msg.message and "--device cpu or auto" in msg.message
    assert w.proc.wait(timeout=60) == 2
    assert msg.message in w.stderr_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_worker_dies_with_its_parent(tiny_model):
    # A middle process starts the worker, reports its pid, then is killed; the test keeps
    # the worker's stdin open, so only the parent watch can end it.
    r, w = os.pipe()
    middle = subprocess.Popen(
        [sys.executable, "-c",
         "import os, subprocess, sys, time\n"
         "p = subprocess.Popen([sys.executable, '-m', 'atelier_worker'], stdin=int(sys.argv[1]),"
         " stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(int(sys.argv[1]),),"
         " env=dict(os.environ, ATELIER_PARENT_PID=str(os.getpid())))\n"
         "print(p.pid, flush=True)\n"
         "time.sleep(60)\n", str(r)],
        env=dict(os.environ, PYTHONPATH=PYTHON_DIR), stdout=subprocess.PIPE, pass_fds=(r,))
    try:
        pid = int(middle.stdout.readline())
        # Killed at once, maybe before the worker has begun to watch it: the worker is
        # told its parent's pid, so it notices either way.
        middle.send_signal(signal.SIGKILL)
        middle.wait()
        deadline = time.monotonic() + 30
        while _alive(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                pytest.fail("the worker outlived its parent")
            time.sleep(0.1)
    finally:
        os.close(r)
        os.close(w)


def _alive(pid: int) -> bool:
    # The orphan is re-parented to init, which may never reap it: a zombie counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_bad_feature_inputs_name_the_file_and_the_worker_goes_on(worker, tmp_path):
    not_lora = tmp_path / "not-a-lora.safetensors"
    not_lora.write_bytes(b"\x0e\x00\x00\x00\x00\x00\x00\x00{\"x\": \"y\"}    " + bytes(32))
    not_model = tmp_path / "not-an-upscaler.safetensors"
    shutil.copy(not_lora, not_model)
    pic = tmp_path / "pic.png"
    Image.new("RGB", (64, 64), "gray").save(pic)
    mask = tmp_path / "mask.png"
    Image.new("L", (48, 64), 255).save(mask)
    control = tmp_path / "control.png"
    Image.new("RGB", (200, 120), "white").save(control)
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"\x80\x02}q\x00.")

    cases = [
        (dict(loras=[{"path": str(not_lora), "weight": 1}]), "loras[0].path", not_lora),
        (dict(init_image=str(pic), mask_image=str(mask)), "mask_image", None),
        (dict(upscaler=str(not_model)), "upscaler", not_model),
        (dict(model=str(ckpt)), "model", ckpt),
    ]
    for overrides, field, named in cases:
        _, msgs = worker.generate(tmp_path, steps=1, **overrides)
        err = msgs[-1]
        assert (err.type, err.field) == ("error", field), err
        assert err.code in ("invalid_request", "unsupported")
        if named is not None:
            assert str(named) in err.message
        worker.ping()
    # A control image of another size is resized, not refused.
    _, msgs = worker.generate(tmp_path, steps=1, controlnets=[
        {"type": "scribble", "model": "tiny-controlnet", "image": str(control)}])
    assert msgs[-1].type == "result", msgs[-1]
    [path] = msgs[-1].control_images
    with Image.open(path) as im:
        assert im.size == (64, 64)
    worker.ping()


def test_feature_job_speaks_valid_protocol(worker, tmp_path):
    # Every line goes through protocol.decode (WorkerProcess.next): the new stages and
    # result fields must be valid protocol.
    control = tmp_path / "control.png"
    Image.new("RGB", (64, 64), "white").save(control)
    _, msgs = worker.generate(tmp_path, steps=5, refiner="tiny-refiner", upscaler="lanczos",
                              loras=[{"path": "tiny-lora", "weight": 0.5}], batch_size=2,
                              controlnets=[{"type": "canny", "model": "tiny-controlnet",
                                            "image": str(control)}])
    result = msgs[-1]
    assert result.type == "result", result
    stages = [m.stage for m in msgs if m.type == "progress"]
    for s in ("preprocessing", "encoding", "denoising", "refining", "decoding", "upscaling", "saving"):
        assert s in stages, s
    assert [(i.seed, i.width) for i in result.images] == [(7, 128), (8, 128)]
    assert len(result.control_images) == 1 and result.metrics.batch_chunks == 1


def test_worker_whose_parent_died_before_it_started_watching_exits():
    # Told of a parent that is not its parent (the real one died and it was adopted).
    w = WorkerProcess(env={"ATELIER_PARENT_PID": "1" if os.getpid() != 1 else "2"})
    assert w.proc.wait(timeout=60) == 1
    assert "is gone" in w.stderr_text()


class _Sink:
    """An Output that keeps what is sent."""

    def __init__(self):
        self.sent = []
        self._cond = threading.Condition()

    def send(self, msg) -> None:
        with self._cond:
            self.sent.append(msg)
            self._cond.notify_all()

    def wait_for(self, done, timeout: float = 60) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: done(self.sent), timeout), self.sent


def test_heartbeats_while_a_job_is_in_hand_and_none_after_it():
    sink = _Sink()
    beats = Heartbeats(sink, 0.01)
    beats.start("job-a")
    sink.wait_for(lambda sent: len(sent) >= 3)
    beats.stop()
    ended = len(sink.sent)
    beats.start("job-b")
    sink.wait_for(lambda sent: len(sent) >= ended + 3)
    beats.stop()
    assert all(m.type == "heartbeat" for m in sink.sent)
    assert {m.id for m in sink.sent[:ended]} == {"job-a"}
    assert {m.id for m in sink.sent[ended:]} == {"job-b"}, "no beat of a job after its stop"


def test_heartbeat_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv("ATELIER_HEARTBEAT_INTERVAL_S", "0.25")
    assert heartbeat_interval() == 0.25
    for bad in ("0", "-1", "soon"):
        monkeypatch.setenv("ATELIER_HEARTBEAT_INTERVAL_S", bad)
        assert heartbeat_interval() == spec.HEARTBEAT_INTERVAL_S
    monkeypatch.delenv("ATELIER_HEARTBEAT_INTERVAL_S")
    assert heartbeat_interval() == spec.HEARTBEAT_INTERVAL_S


def test_real_worker_beats_through_a_slow_step_and_stops_after(tiny_model, tmp_path):
    # Each step waits a second, fifty beat intervals: beats come between the steps' progress.
    w = WorkerProcess(env={"ATELIER_HEARTBEAT_INTERVAL_S": "0.02", "ATELIER_TEST_STEP_DELAY_S": "1"})
    try:
        assert "heartbeat" in w.wait_hello().capabilities.features
        w.keep_heartbeats = True
        id = new_id()
        w.send({"type": "generate", "id": id, "request": request(tmp_path, steps=2)})
        msgs = w.finish(id)
        assert msgs[-1].type == "result", msgs[-1]
        kinds = [m.type for m in msgs]
        first_step = next(i for i, m in enumerate(msgs) if m.type == "progress" and m.stage == "denoising"
                          and m.step == 1)
        assert "heartbeat" in kinds[first_step:], kinds
        assert {m.id for m in msgs if m.type == "heartbeat"} == {id}
        # The beat stops before the result goes out: nothing but the pong follows.
        w.send({"type": "ping", "id": "after"})
        assert [m.type for m in w.until(lambda m: m.type == "pong")] == ["pong"]
    finally:
        w.close()
