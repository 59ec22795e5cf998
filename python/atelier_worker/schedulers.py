"""The request's scheduler and schedule as diffusers scheduler objects, and their A1111 names."""

from __future__ import annotations

import json
import logging
import os

from .spec import SAMPLER_NAMES, SCHEDULE_CONFIG_FLAGS, SCHEDULER_CLASSES, SCHEDULERS


class ScheduleError(ValueError):
    """The scheduler does not take the schedule asked for."""


log = logging.getLogger("atelier.schedulers")


def scheduler_class(name: str):
    # Imported here, not at the top: hello's capabilities come from a cache when they can,
    # so that the worker greets before diffusers (seconds) is imported.
    import diffusers

    return getattr(diffusers, SCHEDULER_CLASSES[name])


def _config_keys(cls) -> set[str]:
    # The flags a class takes are the keyword arguments its registered config knows.
    import inspect

    init = getattr(cls.__init__, "__wrapped__", cls.__init__)
    return set(inspect.signature(init).parameters)


def supported_schedules(name: str) -> list[str]:
    """The non-default schedules scheduler `name` supports in this diffusers."""
    keys = _config_keys(scheduler_class(name))
    out = [s for s, flag in SCHEDULE_CONFIG_FLAGS.items() if flag in keys]
    if "beta" in out:
        from diffusers.utils import is_scipy_available

        if not is_scipy_available():
            out.remove("beta")
    return out


def capabilities() -> dict[str, list[str]]:
    return {name: supported_schedules(name) for name in SCHEDULERS}


def _cache_key() -> dict:
    """What capabilities() depends on, found without importing anything heavy."""
    import importlib.metadata as md
    import importlib.util

    from . import __version__

    def version(pkg: str) -> str:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return ""

    return {"worker": __version__, "diffusers": version("diffusers"),
            "scipy": version("scipy") if importlib.util.find_spec("scipy") else ""}


def cached_capabilities(cache_dir: str) -> dict[str, list[str]]:
    """capabilities(), kept in cache_dir for the installed diffusers (and scipy), so that a
    later start need not import diffusers to say what schedules it takes."""
    path = os.path.join(cache_dir, "worker", "schedules.json")
    key = _cache_key()
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("key") == key and isinstance(data.get("schedules"), dict) \
                and list(data["schedules"]) == list(SCHEDULERS):
            return data["schedules"]
    except (OSError, ValueError, AttributeError):
        pass
    caps = capabilities()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"key": key, "schedules": caps}, f)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cannot keep the schedules in %s: %s", path, e)
    return caps


def build(name: str, schedule: str, base_config):
    """A fresh scheduler of the request's kind on the model's own scheduler config."""
    cls = scheduler_class(name)
    overrides = {flag: False for flag in SCHEDULE_CONFIG_FLAGS.values() if flag in _config_keys(cls)}
    if schedule:
        if schedule not in supported_schedules(name):
            takes = supported_schedules(name)
            raise ScheduleError(
                f"the {sampler_name(name)} scheduler ({name}) does not take the {schedule} "
                f"schedule: " + (f"choose one of {', '.join(takes)}, or none" if takes
                                 else "it takes no schedule; leave it empty"))
        overrides[SCHEDULE_CONFIG_FLAGS[schedule]] = True
    if name == "dpmpp_sde":
        # A1111's "DPM++ SDE" is the stochastic single-step solver.
        overrides["algorithm_type"] = "sde-dpmsolver++"
    return cls.from_config(base_config, **overrides)


def sampler_name(name: str) -> str:
    return SAMPLER_NAMES[name]
