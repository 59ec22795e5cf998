"""Step 1 of a job: the model and every other file the request names are checked (present,
of a format Atelier loads, never a pickle) and resolved (the tiny names to their cache
paths), and the input images opened, before anything slow is loaded."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field

from PIL import Image as PILImage

from .. import hashes, loras, single_file, tiny, upscale
from .. import images as imgs
from ..protocol import Request
from ..spec import (
    ERR_INVALID_REQUEST,
    ERR_MODEL_NOT_FOUND,
    ERR_UNSUPPORTED,
    LANCZOS_UPSCALER,
    PICKLE_EXTS,
    STAGE_CREATING_TINY_MODEL,
    TINY_CONTROLNET,
    TINY_LORA,
    TINY_MODEL,
    TINY_REFINER,
    TINY_SINGLE_FILE,
    TINY_UPSCALER,
    TINY_VAE,
)
from .errors import JobFailed

log = logging.getLogger("atelier.engine.checks")

# Every part of a diffusers SDXL folder that the pipeline loads.
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
WEIGHTED = ("unet", "vae", "text_encoder", "text_encoder_2")


@dataclass
class Inputs:
    """What the request names, checked and resolved (tiny names to cache paths)."""
    loras: list = field(default_factory=list)        # loras.Wanted
    controlnets: list = field(default_factory=list)  # (ControlNet, path, name, PIL image)
    refiner: str = ""
    refiner_name: str = ""
    vae: str = ""
    vae_name: str = ""
    upscaler: str = ""
    upscaler_name: str = ""
    init: PILImage.Image | None = None
    mask: PILImage.Image | None = None
    created_s: float = 0.0


def stem(path: str) -> str:
    """A file or folder's name for the metadata: without its folder and .safetensors."""
    base = os.path.basename(path.rstrip("/\\")) or path
    return base[:-len(".safetensors")] if base.lower().endswith(".safetensors") else base


def read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            v = json.load(f)
        return v if isinstance(v, dict) else {}
    except (OSError, ValueError):
        return {}


def check_file(path: str, field: str, what: str, exts: tuple[str, ...]) -> None:
    """A weights file the request names: present, a file, and of a format we load."""
    ext = os.path.splitext(path)[1].lower()
    if ext in PICKLE_EXTS:
        raise JobFailed(ERR_UNSUPPORTED, f"{path} is a pickle file ({ext}): Atelier never loads "
                        f"pickle files, because they can run code; use a .safetensors {what}",
                        field=field)
    if not os.path.exists(path):
        raise JobFailed(ERR_INVALID_REQUEST, f"{what} {path} does not exist", field=field)
    if not os.path.isfile(path):
        raise JobFailed(ERR_INVALID_REQUEST, f"{path} is a folder, not a {what} file", field=field)
    if ext not in exts:
        raise JobFailed(ERR_INVALID_REQUEST, f"{path} is not a {what} file: expected "
                        f"{' or '.join(exts)}", field=field)


def check_component_folder(path: str, field: str, what: str) -> None:
    """A diffusers model folder (config.json and safetensors weights): a ControlNet or VAE."""
    if os.path.isfile(path):
        ext = os.path.splitext(path)[1].lower()
        if ext in PICKLE_EXTS:
            check_file(path, field, what, ())
        raise JobFailed(ERR_INVALID_REQUEST, f"{path} is a file: a {what} is loaded from its "
                        "diffusers folder (config.json and weights)", field=field)
    if not os.path.isdir(path):
        raise JobFailed(ERR_INVALID_REQUEST, f"{what} {path} does not exist", field=field)
    names = os.listdir(path)
    if "config.json" not in names:
        raise JobFailed(ERR_INVALID_REQUEST, f"{path} has no config.json: it is not a diffusers "
                        f"{what} folder", field=field)
    if not any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names):
        pickles = [n for n in names if n.lower().endswith(PICKLE_EXTS)]
        raise JobFailed(ERR_UNSUPPORTED if pickles else ERR_INVALID_REQUEST,
                        f"{path} holds {'only pickle weights (' + pickles[0] + ')' if pickles else 'no weights'}"
                        f": Atelier loads .safetensors weights only", field=field)


def check_refiner_folder(path: str) -> None:
    if os.path.isfile(path):
        ext = os.path.splitext(path)[1].lower()
        if ext in PICKLE_EXTS:
            check_file(path, "refiner", "refiner", ())
        raise JobFailed(ERR_INVALID_REQUEST, f"{path} is a file: a refiner is loaded from its "
                        "diffusers folder (model_index.json, unet/, …)", field="refiner")
    if not os.path.isdir(path):
        raise JobFailed(ERR_INVALID_REQUEST, f"refiner {path} does not exist", field="refiner")
    for part in ("model_index.json", "unet"):
        if not os.path.exists(os.path.join(path, part)):
            raise JobFailed(ERR_INVALID_REQUEST, f"refiner folder {path} has no {part}: it is not a "
                            "diffusers SDXL model folder", field="refiner")
    check_component_folder(os.path.join(path, "unet"), "refiner", "refiner UNet")


def check_controlnet_fits(path: str, unet_cfg, field: str) -> None:
    """Refuses, before loading its weights, a ControlNet made for another architecture."""
    cfg = read_json(os.path.join(path, "config.json"))
    for key in ("cross_attention_dim", "addition_embed_type", "projection_class_embeddings_input_dim",
                "in_channels"):
        want, got = unet_cfg.get(key), cfg.get(key)
        if want != got:
            raise JobFailed(
                ERR_INVALID_REQUEST, f"ControlNet {path} does not fit this model: its "
                f"{key} is {got}, the model's is {want} (a ControlNet for another "
                "architecture, e.g. SD 1.5?); choose an SDXL ControlNet", field=field)


def check_model_folder(path: str) -> None:
    """Refuses what cannot load, with a message that says what to do, before torch tries."""
    if not os.path.exists(path):
        raise JobFailed(ERR_MODEL_NOT_FOUND, f"model folder {path} does not exist: choose another "
                        "model, or download this one again", field="model")
    if os.path.isfile(path):
        ext = os.path.splitext(path)[1].lower()
        if ext in PICKLE_EXTS:
            raise JobFailed(ERR_UNSUPPORTED, f"{path} is a pickle checkpoint ({ext}): Atelier never "
                            "loads pickle files, because they can run code; use a .safetensors "
                            "or diffusers-folder version of this model", field="model")
        if ext == ".safetensors":
            try:
                single_file.check(path)
            except single_file.SingleFileError as e:
                raise JobFailed(ERR_UNSUPPORTED, str(e), field="model") from None
            return
        raise JobFailed(ERR_MODEL_NOT_FOUND, f"{path} is a file, not a diffusers model folder: "
                        "choose the folder that holds model_index.json", field="model")
    missing = [c + "/" for c in COMPONENTS if not os.path.isdir(os.path.join(path, c))]
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        missing.insert(0, "model_index.json")
    if missing:
        raise JobFailed(ERR_MODEL_NOT_FOUND, f"model folder {path} is incomplete: it has no "
                        f"{', '.join(missing)}; download the model again or choose another",
                        field="model")
    for c in WEIGHTED:
        names = os.listdir(os.path.join(path, c))
        if any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names):
            continue
        pickles = [n for n in names if n.lower().endswith(PICKLE_EXTS)]
        if pickles:
            raise JobFailed(ERR_UNSUPPORTED, f"{c}/ in {path} holds only pickle weights "
                            f"({pickles[0]}): Atelier never loads pickle files; convert the model "
                            "to safetensors", field="model")
        raise JobFailed(ERR_MODEL_NOT_FOUND, f"{c}/ in {path} holds no weights: download the "
                        "model again or choose another", field="model")


def resolve_model(model: str, cache_dir: str, stage) -> tuple[str, str, float]:
    """Returns the folder or file, the name for the PNG metadata, and the seconds spent
    creating a tiny model."""
    if model == TINY_MODEL:
        path = os.path.join(cache_dir, "models", tiny.TINY_NAME)
        if os.path.isfile(os.path.join(path, "model_index.json")):
            return path, model, 0.0
        stage(STAGE_CREATING_TINY_MODEL)
        t0 = time.perf_counter()
        log.info("creating the tiny model at %s", path)
        tiny.create(path)
        return path, model, time.perf_counter() - t0
    if model == TINY_SINGLE_FILE:
        path, s = tiny_extra(model, cache_dir, stage)
        return path, model, s
    path = os.path.abspath(os.path.expanduser(model))
    check_model_folder(path)
    name = os.path.basename(path.rstrip(os.sep)) or path
    return path, stem(name) if os.path.isfile(path) else name, 0.0


def tiny_extra(name: str, cache_dir: str, stage) -> tuple[str, float]:
    """The cache path of a tiny companion (tiny-lora, ...), made on first use."""
    target = os.path.join(cache_dir, "models", tiny.EXTRAS[name])
    if os.path.exists(target):
        return target, 0.0
    stage(STAGE_CREATING_TINY_MODEL)
    t0 = time.perf_counter()
    log.info("creating %s at %s", name, target)
    tiny.create_extra(name, cache_dir)
    return target, time.perf_counter() - t0


def check_inputs(r: Request, cache_dir: str, stage) -> Inputs:
    inp = Inputs()

    def tiny_or(value: str, names: tuple[str, ...]) -> str:
        if value in names:
            p, s = tiny_extra(value, cache_dir, stage)
            inp.created_s += s
            return p
        return os.path.abspath(os.path.expanduser(value))

    for i, lora in enumerate(r.loras):
        f = f"loras[{i}].path"
        p = tiny_or(lora.path, (TINY_LORA,))
        check_file(p, f, "LoRA", exts=(".safetensors",))
        name = lora.path if lora.path == TINY_LORA else stem(p)
        inp.loras.append(loras.Wanted(index=i, path=p, name=name, weight=lora.weight,
                                      hash10=hashes.short_hash(p)))
    for i, cn in enumerate(r.controlnets):
        f = f"controlnets[{i}]"
        p = tiny_or(cn.model, (TINY_CONTROLNET,))
        check_component_folder(p, f + ".model", "ControlNet")
        try:
            image = imgs.open_image(os.path.abspath(os.path.expanduser(cn.image)), f + ".image")
        except imgs.ImageError as e:
            raise JobFailed(ERR_INVALID_REQUEST, str(e), field=e.field) from None
        name = cn.model if cn.model == TINY_CONTROLNET else stem(p)
        inp.controlnets.append((cn, p, name, image))
    if r.refiner:
        inp.refiner = tiny_or(r.refiner, (TINY_REFINER,))
        check_refiner_folder(inp.refiner)
        inp.refiner_name = r.refiner if r.refiner == TINY_REFINER else stem(inp.refiner)
    if r.vae:
        inp.vae = tiny_or(r.vae, (TINY_VAE,))
        if os.path.isfile(inp.vae) or inp.vae.lower().endswith(PICKLE_EXTS + (".safetensors",)):
            check_file(inp.vae, "vae", "VAE", exts=(".safetensors",))
        else:
            check_component_folder(inp.vae, "vae", "VAE")
        inp.vae_name = r.vae if r.vae == TINY_VAE else stem(inp.vae)
    if r.upscaler:
        inp.upscaler = r.upscaler if r.upscaler == LANCZOS_UPSCALER else tiny_or(
            r.upscaler, (TINY_UPSCALER,))
        if inp.upscaler != LANCZOS_UPSCALER:
            check_file(inp.upscaler, "upscaler", "upscaler model", exts=(".safetensors",))
        inp.upscaler_name = TINY_UPSCALER if r.upscaler == TINY_UPSCALER else \
            upscale.display_name(inp.upscaler)
    try:
        if r.init_image:
            inp.init = imgs.open_image(os.path.abspath(os.path.expanduser(r.init_image)), "init_image")
        if r.mask_image:
            inp.mask = imgs.open_image(os.path.abspath(os.path.expanduser(r.mask_image)),
                                       "mask_image", mode="L")
            if inp.mask.size != inp.init.size:
                raise imgs.ImageError(
                    f"the mask is {inp.mask.width}x{inp.mask.height} but the init image is "
                    f"{inp.init.width}x{inp.init.height}: paint the mask on the same picture",
                    "mask_image")
    except imgs.ImageError as e:
        raise JobFailed(ERR_INVALID_REQUEST, str(e), field=e.field) from None
    if inp.init is not None and int(r.steps * r.strength) < 1:
        raise JobFailed(ERR_INVALID_REQUEST, f"strength {r.strength:g} of {r.steps} steps is no "
                        "denoising step at all: raise the strength or the steps",
                        field="strength")
    return inp


def make_output_dir(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise JobFailed(ERR_INVALID_REQUEST, f"cannot create output folder {path}: "
                        f"{e.strerror or e}", field="output_dir") from None
