"""Speed and memory settings of the worker: torch.compile, fused QKV projections, the VAE's
dtype, attention backend, model offload and VAE tiling, and a cheap latent preview.

Every setting comes from an environment variable (docs/protocol.md, "Worker settings"), so
that the app, `atelier bench` and a user's shell choose them the same way. Defaults favour a
short first start on CUDA and touch nothing on the CPU, where tests must stay fast.

This module imports no torch at import time: `setup_env` must run before torch loads, so
that the inductor cache lands in the user's cache folder.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict, dataclass

log = logging.getLogger("atelier.accel")

COMPILE_CHOICES = ("off", "regional", "full")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")
VAE_DTYPES = ("auto", "float16", "bfloat16", "float32")
OFFLOAD_CHOICES = ("none", "model", "sequential")
SDPA_CHOICES = ("auto", "flash", "cudnn", "efficient", "math")


class SettingError(ValueError):
    """An environment variable holds a value this worker does not know."""


def _flag(name: str, default: bool) -> bool:
    v = os.environ.get(name, "").strip().lower()
    if not v:
        return default
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise SettingError(f"{name}={v!r}: use 1 or 0")


def _choice(name: str, choices: tuple[str, ...], default: str) -> str:
    v = os.environ.get(name, "").strip().lower() or default
    if v not in choices:
        raise SettingError(f"{name}={v!r}: use one of {', '.join(choices)}")
    return v


@dataclass
class Settings:
    compile: str = "off"          # ATELIER_COMPILE: off | regional | full
    compile_mode: str = "default"  # ATELIER_COMPILE_MODE (torch.compile's mode)
    compile_vae: bool = False     # ATELIER_COMPILE_VAE: compile the VAE decoder too
    fuse_qkv: bool = False        # ATELIER_FUSE_QKV
    channels_last: bool = False   # ATELIER_CHANNELS_LAST
    vae_dtype: str = "auto"       # ATELIER_VAE_DTYPE
    sdpa: str = "auto"            # ATELIER_SDPA: attention backend
    offload: str = "none"         # ATELIER_OFFLOAD: none | model | sequential
    vae_tiling: bool = False      # ATELIER_VAE_TILING
    vae_slicing: bool = False     # ATELIER_VAE_SLICING
    cudnn_benchmark: bool = False  # ATELIER_CUDNN_BENCHMARK
    png_compress: int = 1         # ATELIER_PNG_COMPRESS: zlib level of the saved PNGs, 0-9
    inference_mode: bool = True   # ATELIER_INFERENCE_MODE
    compile_text: bool = False    # ATELIER_COMPILE_TEXT: compile the text encoders too
    fp8: bool = False             # ATELIER_FP8: the UNet's attention and MLP matmuls in FP8

    def describe(self) -> dict:
        return asdict(self)


def from_env(device_kind: str) -> Settings:
    """Reads the settings; defaults depend on the device (only CUDA gets compile & co)."""
    cuda = device_kind == "cuda"
    s = Settings(
        compile=_choice("ATELIER_COMPILE", COMPILE_CHOICES, "regional" if cuda else "off"),
        compile_mode=_choice("ATELIER_COMPILE_MODE", COMPILE_MODES, "default"),
        compile_vae=_flag("ATELIER_COMPILE_VAE", False),
        fuse_qkv=_flag("ATELIER_FUSE_QKV", cuda),
        channels_last=_flag("ATELIER_CHANNELS_LAST", False),
        vae_dtype=_choice("ATELIER_VAE_DTYPE", VAE_DTYPES, "auto"),
        sdpa=_choice("ATELIER_SDPA", SDPA_CHOICES, "auto"),
        offload=_choice("ATELIER_OFFLOAD", OFFLOAD_CHOICES, "none"),
        vae_tiling=_flag("ATELIER_VAE_TILING", False),
        vae_slicing=_flag("ATELIER_VAE_SLICING", False),
        cudnn_benchmark=_flag("ATELIER_CUDNN_BENCHMARK", cuda),
        inference_mode=_flag("ATELIER_INFERENCE_MODE", True),
        compile_text=_flag("ATELIER_COMPILE_TEXT", False),
        fp8=_flag("ATELIER_FP8", False),
    )
    try:
        s.png_compress = int(os.environ.get("ATELIER_PNG_COMPRESS", "1"))
    except ValueError:
        raise SettingError("ATELIER_PNG_COMPRESS must be a number 0-9") from None
    if not 0 <= s.png_compress <= 9:
        raise SettingError("ATELIER_PNG_COMPRESS must be a number 0-9")
    if not cuda and s.compile != "off":
        log.warning("ATELIER_COMPILE=%s asked for on %s: compiling there is slow to start and "
                    "rarely faster", s.compile, device_kind)
    if s.offload != "none" and s.compile != "off":
        log.warning("ATELIER_OFFLOAD=%s: compile is turned off, it does not mix with offload",
                    s.offload)
        s.compile = "off"
    return s


def cache_root() -> str:
    if os.environ.get("ATELIER_CACHE_DIR"):
        return os.environ["ATELIER_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "atelier")


def setup_env() -> None:
    """Before torch is imported: a persistent compile cache under the user's cache folder,
    so that a restarted worker finds its compiled kernels (a warm start)."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(cache_root(), "inductor"))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")


def configure_torch(s: Settings, device_kind: str) -> None:
    """Process-wide switches; called once, after torch is imported."""
    import torch

    if device_kind != "cuda":
        return
    torch.backends.cudnn.benchmark = s.cudnn_benchmark
    # Only parts kept in fp32 (a float32 VAE) use these; fp16/bf16 work is unaffected.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    import torch._dynamo

    # A bounded number of compiled variants per function (sizes, batch sizes): past it the
    # function runs eagerly instead of compiling again. A second size makes the graph dynamic.
    torch._dynamo.config.cache_size_limit = 16
    try:
        torch._dynamo.config.automatic_dynamic_shapes = True
    except AttributeError:
        pass


def vae_dtype(s: Settings, dtype, vae_force_upcast: bool):
    """The VAE's dtype. SDXL's VAE overflows in fp16 (NaNs, black images); bf16 has fp32's
    range, so on CUDA auto picks bf16 where fp16 would overflow: no fp32 upcast."""
    import torch

    names = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
    if s.vae_dtype != "auto":
        return names[s.vae_dtype]
    if dtype == torch.float16 and vae_force_upcast:
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return dtype


def sdpa_context(s: Settings):
    """The context for the denoising and decoding calls: inference mode (diffusers' own
    no_grad still pays for version counters and view tracking on every op, which the eager
    UNet, launch-bound on the CPU, feels: measured 82 against 61 ms a step on an H100), and
    the attention backend when one is pinned."""
    import contextlib

    import torch

    stack = contextlib.ExitStack()
    if s.inference_mode:
        stack.enter_context(torch.inference_mode())
    if s.sdpa != "auto":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
                   "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[s.sdpa]
        stack.enter_context(sdpa_kernel([backend]))
    return stack


def place(pipe, device: str, s: Settings) -> None:
    """Moves the pipeline onto the device, or sets up CPU offload for small GPUs."""
    if s.offload == "model" and device.startswith("cuda"):
        pipe.enable_model_cpu_offload(device=device)
    elif s.offload == "sequential" and device.startswith("cuda"):
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)


def module_device(module):
    """Where a module computes: with CPU offload its weights sit on the CPU between calls,
    and the offload hook names the GPU it moves them to."""
    hook = getattr(module, "_hf_hook", None)
    dev = getattr(hook, "execution_device", None)
    if dev is not None:
        return dev
    dev = getattr(module, "device", None)  # diffusers' models have one
    return dev if dev is not None else next(module.parameters()).device


def optimize(pipe, device: str, dtype, s: Settings) -> dict:
    """Applies the settings to a loaded, placed pipeline; returns what was done and how long
    it took (compiling itself happens lazily, at the first call)."""
    import torch

    t0 = time.perf_counter()
    done: dict = {}
    cuda = device.startswith("cuda")
    vd = vae_dtype(s, dtype, bool(getattr(pipe.vae.config, "force_upcast", False)))
    if pipe.vae.dtype != vd:
        pipe.vae.to(dtype=vd)
    # The pipeline's own decode would upcast a fp16 VAE to fp32 and back at every call.
    if vd != torch.float16:
        pipe.vae.register_to_config(force_upcast=False)
    done["vae_dtype"] = str(vd).removeprefix("torch.")
    if s.vae_tiling:
        pipe.vae.enable_tiling()
        done["vae_tiling"] = True
    if s.vae_slicing:
        pipe.vae.enable_slicing()
        done["vae_slicing"] = True
    if s.fuse_qkv:
        try:
            pipe.fuse_qkv_projections()
            done["fuse_qkv"] = True
        except Exception as e:  # noqa: BLE001 - a model without it just runs unfused
            log.warning("fused QKV projections unavailable: %s", e)
    if s.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
        done["channels_last"] = True
    if s.fp8 and cuda:
        done["fp8_linears"] = fp8_linears(pipe.unet)
    if s.compile != "off" and cuda:
        mode = None if s.compile_mode == "default" else s.compile_mode
        if s.compile_text:
            for name in ("text_encoder", "text_encoder_2"):
                te = getattr(pipe, name, None)
                if te is not None:
                    te.forward = torch.compile(te.forward, fullgraph=False)
            done["compile_text"] = True
        if s.compile == "regional":
            pipe.unet.compile_repeated_blocks(fullgraph=True, mode=mode)
        else:
            pipe.unet = torch.compile(pipe.unet, fullgraph=True, mode=mode)
        done["compile"] = s.compile + ("" if mode is None else f" ({mode})")
        if s.compile_vae:
            pipe.vae.decoder = torch.compile(pipe.vae.decoder, fullgraph=True, mode=mode)
            done["compile_vae"] = True
    done["optimize_s"] = round(time.perf_counter() - t0, 3)
    log.info("speed settings: %s", done)
    return done


# Linear map from SDXL's 4 latent channels to RGB in [-1, 1] (the factors ComfyUI and
# others use for SDXL previews).
_LATENT_RGB = [
    [0.3651, 0.4232, 0.4341],
    [-0.2533, -0.0042, 0.1068],
    [0.1076, 0.1111, -0.0362],
    [-0.3165, -0.2492, -0.2188],
]
_LATENT_RGB_BIAS = [0.1084, -0.0175, -0.0011]


class X0Tap:
    """Wraps a scheduler's step to keep its predicted clean latents (x0), which make a far
    clearer preview than the noisy latents of an early step. Schedulers that do not return
    one leave `x0` as None."""

    def __init__(self, scheduler):
        self.x0 = None
        orig = scheduler.step

        def step(*args, **kwargs):
            want_tuple = not kwargs.get("return_dict", True)
            kwargs["return_dict"] = True
            out = orig(*args, **kwargs)
            self.x0 = getattr(out, "pred_original_sample", None)
            return (out.prev_sample,) if want_tuple else out

        scheduler.step = step


_MATRICES: dict = {}
_PINNED: dict = {}  # shape -> pinned host buffer; one preview is in flight at a time


def _preview_matrix(device):
    """The latent->RGB projection and bias as float32 tensors on device, made once."""
    import torch

    key = str(device)
    if key not in _MATRICES:
        _MATRICES[key] = (torch.tensor(_LATENT_RGB, dtype=torch.float32).to(device),
                          torch.tensor(_LATENT_RGB_BIAS, dtype=torch.float32).to(device))
    return _MATRICES[key]


class Previewer:
    """Turns latents into a small RGB preview without the VAE, and without stopping the GPU:
    the 4->3 projection runs on the device, the copy to the host is asynchronous, and the
    PNG is written by a background thread once the copy has landed."""

    def __init__(self, write):
        self._write = write  # write(PIL image) -> None
        self._thread: threading.Thread | None = None

    def submit(self, latents, on_written=None) -> bool:
        """Queues a preview of latents (C, H, W); returns False if the last is still pending.
        Nothing here waits for the GPU: the projection matrix is cached on the device (a
        fresh host tensor would be a blocking copy) and the pinned host buffer is reused
        (allocating pinned memory synchronizes the device)."""
        import torch

        if self._thread is not None and self._thread.is_alive():
            return False
        with torch.no_grad():
            m, b = _preview_matrix(latents.device)
            rgb = torch.einsum("chw,cr->hwr", latents.float(), m) + b
            rgb = ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8)
            event = None
            if rgb.is_cuda:
                key = tuple(rgb.shape)
                host = _PINNED.get(key)
                if host is None:  # once per preview size for the process
                    host = _PINNED[key] = torch.empty(key, dtype=torch.uint8, pin_memory=True)
                host.copy_(rgb, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
            else:
                host = rgb.cpu()

        def finish() -> None:
            from PIL import Image

            if event is not None:
                event.synchronize()
            self._write(Image.fromarray(host.numpy(), "RGB"))
            if on_written is not None:
                on_written()

        self._thread = threading.Thread(target=finish, name="preview", daemon=True)
        self._thread.start()
        return True

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def encode_png(rgb, text: dict[str, str] | None = None, level: int = 1, threads: int = 0) -> bytes:
    """A PNG of an (H, W, 3) uint8 array, deflated on several threads.

    A 1024x1024 PNG costs PIL 0.1-1.5 s on one core (zlib level 6), as much as the whole
    denoising loop on a fast GPU. Here the rows are filtered with numpy (the Up filter,
    which suits photographs), cut into bands, and each band is deflated on its own thread
    (zlib releases the GIL); the bands' streams end on a sync flush, so that joined they form
    one valid zlib stream, as pigz does. Text chunks are tEXt, or iTXt (UTF-8) when a value
    is not Latin-1, as PIL writes them."""
    import struct
    import zlib
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    a = np.ascontiguousarray(rgb, dtype=np.uint8)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"encode_png wants an (H, W, 3) array, got {a.shape}")
    h, w, _ = a.shape
    rows = a.reshape(h, w * 3)
    filt = np.empty((h, w * 3 + 1), dtype=np.uint8)
    filt[:, 0] = 2  # Up
    filt[0, 0] = 1  # Sub for the first row, which has no row above
    filt[0, 1:4] = rows[0, :3]
    filt[0, 4:] = rows[0, 3:] - rows[0, :-3]
    filt[1:, 1:] = rows[1:] - rows[:-1]
    raw = filt.reshape(-1)
    # Threads pay off only on large images; a preview is deflated in the calling thread.
    n = threads or (min(8, os.cpu_count() or 1) if h * w >= 256 * 256 else 1)
    band_rows = max(16, -(-h // n))
    bands = [raw[i * (w * 3 + 1): min(h, i + band_rows) * (w * 3 + 1)]
             for i in range(0, h, band_rows)]

    def deflate(i_band):
        i, band = i_band
        c = zlib.compressobj(level, zlib.DEFLATED, -15)
        last = i == len(bands) - 1
        return c.compress(band.tobytes()) + c.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)

    if len(bands) > 1:
        with ThreadPoolExecutor(len(bands)) as ex:
            parts = list(ex.map(deflate, enumerate(bands)))
    else:
        parts = [deflate((0, bands[0]))]
    adler = zlib.adler32(raw.tobytes())
    # zlib header: deflate, 32K window, no dictionary, a check value that makes it /31.
    idat = b"\x78\x01" + b"".join(parts) + struct.pack(">I", adler)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    out = [b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))]
    for k, v in (text or {}).items():
        try:
            out.append(chunk(b"tEXt", k.encode("latin-1") + b"\0" + v.encode("latin-1")))
        except UnicodeEncodeError:
            out.append(chunk(b"iTXt", k.encode("latin-1") + b"\0\0\0\0\0" + v.encode("utf-8")))
    out.append(chunk(b"IDAT", idat))
    out.append(chunk(b"IEND", b""))
    return b"".join(out)


def fp8_linears(unet) -> int:
    """Swaps the linear layers of the UNet's transformer blocks (attention projections, the
    GEGLU MLP, proj_in/out) for FP8 ones: weights in e4m3 with a scale per output channel,
    activations quantized per row at run time, products through torch._scaled_mm (Hopper
    and newer). Returns how many were swapped. Opt-in: it trades a little precision."""
    import torch

    count = 0
    for block_list in (unet.down_blocks, [unet.mid_block], unet.up_blocks):
        for block in block_list:
            for attn in getattr(block, "attentions", None) or []:
                for name, mod in list(attn.named_modules()):
                    for cname, child in list(mod.named_children()):
                        if (isinstance(child, torch.nn.Linear) and child.in_features % 16 == 0
                                and child.out_features % 16 == 0):
                            setattr(mod, cname, _fp8_linear_class()(child))
                            count += 1
    return count


_FP8 = None


def _fp8_linear_class():
    """FP8Linear, built on first use so that importing this module never imports torch."""
    global _FP8
    if _FP8 is not None:
        return _FP8
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

    _FP8 = FP8Linear
    return _FP8
