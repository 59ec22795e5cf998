"""LoRAs on the warm pipeline: loaded once as named PEFT adapters, kept while later jobs
want them, deleted when they no longer do, weighted per job with set_adapters."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("atelier.loras")


@dataclass
class Wanted:
    index: int       # position in the request's loras, for the error's field
    path: str
    name: str        # for the metadata: the file name without .safetensors, or tiny-lora
    weight: float
    hash10: str

    @property
    def adapter(self) -> str:
        # Adapter names become module keys: letters, digits and _ only. The content hash
        # makes an edited file a new adapter.
        return "lora_" + self.hash10


class LoraError(ValueError):
    def __init__(self, message: str, index: int):
        super().__init__(message)
        self.field = f"loras[{index}].path"


def apply(pipe, wanted: list[Wanted], have: set[str], on_load) -> set[str]:
    """Makes the pipeline's adapters exactly `wanted`, with their weights; returns the set
    of adapters now loaded. `have` is what earlier jobs left; on_load() is called before
    the first file is read (to report the loading stage)."""
    want = {}
    for w in wanted:
        # The same file twice adds up, as two identical <lora:...> tags do in A1111.
        want[w.adapter] = want.get(w.adapter, 0.0) + w.weight
    have = loaded(pipe)  # what the pipeline really holds, whatever earlier jobs left
    stale = sorted(have - set(want))
    if stale:
        log.info("unloading LoRA adapter(s) %s", ", ".join(stale))
        pipe.delete_adapters(stale)
        have = have - set(stale)
    announced = False
    for w in wanted:
        if w.adapter in have:
            continue
        if not announced:
            on_load()
            announced = True
        log.info("loading LoRA %s (%s)", w.path, w.hash10)
        try:
            pipe.load_lora_weights(w.path, adapter_name=w.adapter)
        except Exception as e:  # noqa: BLE001 - any failure here means the file is no LoRA for this model
            _forget(pipe, w.adapter)
            raise LoraError(f"{w.path} is not a LoRA this SDXL model can use: "
                            f"{type(e).__name__}: {str(e)[:300]}", w.index) from None
        if w.adapter not in loaded(pipe):
            raise LoraError(f"{w.path} holds no LoRA weights for this model's layers "
                            "(a LoRA for another architecture, e.g. SD 1.5?)", w.index)
        have = have | {w.adapter}
    if want:
        pipe.enable_lora()
        pipe.set_adapters(list(want), adapter_weights=list(want.values()))
    return have


def loaded(pipe) -> set[str]:
    """The adapters the pipeline holds now."""
    names: set[str] = set()
    for v in pipe.get_list_adapters().values():
        names.update(v)
    return names


def _forget(pipe, adapter: str) -> None:
    try:
        if adapter in loaded(pipe):
            pipe.delete_adapters([adapter])
    except Exception:  # noqa: BLE001 - best effort after a failed load
        log.warning("could not remove the half-loaded adapter %s", adapter, exc_info=True)
