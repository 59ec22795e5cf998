"""Speed and memory settings of the worker: torch.compile, fused QKV projections, the VAE's
dtype, attention backend, model offload and VAE tiling, FP8 matmuls, the PNG compression.
optimize.py applies them.

Every setting comes from an environment variable (docs/protocol.md, "Worker settings"), so
that the app, `atelier bench` and a user's shell choose them the same way. Defaults favour a
short first start on CUDA and touch nothing on the CPU, where tests must stay fast.

This module imports no torch at import time: `setup_env` must run before torch loads, so
that the inductor cache lands in the user's cache folder.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

log = logging.getLogger("atelier.accel")

COMPILE_CHOICES = ("auto", "off", "regional", "full")
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
    compile: str = "off"          # ATELIER_COMPILE: auto | off | regional | full
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
    fast_max_autotune: bool = False  # ATELIER_FAST_MAX_AUTOTUNE: autotune the fast path's build


# The speed and memory variables a speed mode decides: core/settings/worker.go's SpeedVars
# (a test keeps the two lists equal). A Ray actor gets them from its proxy's environment.
SPEED_VARS = (
    "ATELIER_COMPILE", "ATELIER_COMPILE_MODE", "ATELIER_COMPILE_VAE", "ATELIER_COMPILE_TEXT",
    "ATELIER_FUSE_QKV", "ATELIER_CHANNELS_LAST", "ATELIER_VAE_DTYPE", "ATELIER_SDPA",
    "ATELIER_INFERENCE_MODE", "ATELIER_CUDNN_BENCHMARK", "ATELIER_FP8", "ATELIER_OFFLOAD",
    "ATELIER_VAE_TILING", "ATELIER_VAE_SLICING", "ATELIER_WARM_MODELS", "ATELIER_WARM_MODELS_GB",
    "ATELIER_BATCH_GB_PER_MEGAPIXEL", "ATELIER_FAST_MAX_AUTOTUNE", "ATELIER_FAST_CUDA_GRAPH",
)


def speed_env() -> dict[str, str]:
    """This process's speed variables that are set."""
    return {k: os.environ[k] for k in SPEED_VARS if k in os.environ}


def from_env(device_kind: str) -> Settings:
    """Reads the settings; defaults depend on the device (only CUDA gets compile & co)."""
    cuda = device_kind == "cuda"
    # auto: the fast path (fastrun.py) where its artefact is built, else eager.
    compile_choice = _choice("ATELIER_COMPILE", COMPILE_CHOICES, "auto" if cuda else "off")
    s = Settings(
        compile=compile_choice,
        compile_mode=_choice("ATELIER_COMPILE_MODE", COMPILE_MODES, "default"),
        compile_vae=_flag("ATELIER_COMPILE_VAE", False),
        fuse_qkv=_flag("ATELIER_FUSE_QKV", cuda),
        channels_last=_flag("ATELIER_CHANNELS_LAST", False),
        vae_dtype=_choice("ATELIER_VAE_DTYPE", VAE_DTYPES, "auto"),
        sdpa=_choice("ATELIER_SDPA", SDPA_CHOICES, "auto"),
        offload=_choice("ATELIER_OFFLOAD", OFFLOAD_CHOICES, "none"),
        vae_tiling=_flag("ATELIER_VAE_TILING", False),
        vae_slicing=_flag("ATELIER_VAE_SLICING", False),
        # cuDNN's autotuning costs each new shape's first call (the artefact's first call
        # 1.6 s against 0.5 s, the VAE's first decode 0.9 s against 0.2 s on an H200) and,
        # on the fast path, bought no step time: off there by default (docs/BENCHMARKS.md).
        cudnn_benchmark=_flag("ATELIER_CUDNN_BENCHMARK", cuda and compile_choice != "auto"),
        inference_mode=_flag("ATELIER_INFERENCE_MODE", True),
        compile_text=_flag("ATELIER_COMPILE_TEXT", False),
        fp8=_flag("ATELIER_FP8", False),
        fast_max_autotune=_flag("ATELIER_FAST_MAX_AUTOTUNE", False),
    )
    try:
        s.png_compress = int(os.environ.get("ATELIER_PNG_COMPRESS", "1"))
    except ValueError:
        raise SettingError("ATELIER_PNG_COMPRESS must be a number 0-9") from None
    if not 0 <= s.png_compress <= 9:
        raise SettingError("ATELIER_PNG_COMPRESS must be a number 0-9")
    if not cuda and s.compile == "auto":
        s.compile = "off"  # the fast path is CUDA's
    if not cuda and s.compile != "off":
        log.warning("ATELIER_COMPILE=%s asked for on %s: compiling there is slow to start and "
                    "rarely faster", s.compile, device_kind)
    if s.offload != "none" and s.compile != "off":
        if s.compile != "auto":
            log.warning("ATELIER_OFFLOAD=%s: compile is turned off, it does not mix with offload",
                        s.offload)
        s.compile = "off"
    return s


def in_effect(s: Settings, device_kind: str, applied: dict) -> dict[str, str]:
    """The settings a job ran with, as the result's metrics.speed reports them: what can
    change its pixels (compile, fused projections, the VAE's dtype, attention, offload, FP8,
    tiling), so that `atelier history verify` can say what differs between two runs. Those
    that only apply on CUDA read "off" elsewhere; vae_dtype is the one the model got."""
    cuda = device_kind == "cuda"

    def on(v: bool) -> str:
        return "on" if v else "off"

    compiled = cuda and s.compile not in ("off", "auto")
    return {
        "compile": s.compile + ("" if s.compile_mode == "default" else f" ({s.compile_mode})")
        if compiled else ("auto" if cuda and s.compile == "auto" else "off"),
        "compile_vae": on(compiled and s.compile_vae),
        "compile_text": on(compiled and s.compile_text),
        "fuse_qkv": on(bool(applied.get("fuse_qkv"))),
        "channels_last": on(s.channels_last),
        "vae_dtype": str(applied.get("vae_dtype") or s.vae_dtype),
        "sdpa": s.sdpa,
        "offload": s.offload if cuda else "none",
        "vae_tiling": on(s.vae_tiling),
        "vae_slicing": on(s.vae_slicing),
        "cudnn_benchmark": on(cuda and s.cudnn_benchmark),
        "inference_mode": on(s.inference_mode),
        "fp8": on(cuda and s.fp8),
    }


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


def fast_path_wanted(s: Settings, device_kind: str) -> bool:
    """Whether jobs try the fast path (fastrun.py): CUDA, ATELIER_COMPILE=auto (the default
    there), no offload (the UNet must stay on the GPU)."""
    return device_kind == "cuda" and s.compile == "auto" and s.offload == "none"


def libstdcxx_preload() -> str | None:
    """The C++ library to preload for the fast path's artefacts, or None where none is
    needed. An AOTInductor package's wrapper is compiled by the system's g++ and crashes at
    load (in std::regex, on the C++ library's locale code) unless that g++'s libstdc++
    comes first in the process's symbol lookup: a library torch loads globally before it
    appears to carry C++ library symbols of its own (measured on an H200 with torch 2.11;
    docs/BENCHMARKS.md). Only on Linux with an NVIDIA driver, unless the fast path is off
    (ATELIER_COMPILE set to something else) or this process was already started so."""
    if sys.platform != "linux" or os.environ.get("ATELIER_PRELOADED"):
        return None
    if (os.environ.get("ATELIER_COMPILE") or "auto").strip().lower() != "auto":
        return None
    if not any(os.path.exists(p) for p in ("/proc/driver/nvidia/version", "/dev/nvidiactl")):
        return None
    import shutil
    import subprocess

    cxx = os.environ.get("CXX") or "g++"
    if shutil.which(cxx) is None:
        return None
    try:
        out = subprocess.run([cxx, "-print-file-name=libstdc++.so.6"], capture_output=True,
                             text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    lib = os.path.realpath(out) if out else ""
    return lib if os.path.isabs(lib) and os.path.isfile(lib) else None


def reexec_with_preload() -> None:
    """Starts this same process again (same pid, same pipes) with the C++ library
    preloaded, before torch is imported; does nothing where none is needed."""
    lib = libstdcxx_preload()
    if lib is None:
        return
    env = dict(os.environ)
    env["ATELIER_PRELOADED"] = "1"
    env["LD_PRELOAD"] = lib + (":" + env["LD_PRELOAD"] if env.get("LD_PRELOAD") else "")
    log.info("restarting with %s preloaded (the fast path's artefacts need it)", lib)
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
