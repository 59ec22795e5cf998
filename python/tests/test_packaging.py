"""pyproject.toml describes the package the venv is built for: the same pins as
requirements.txt, which the venv is built from, and the package's data."""

from __future__ import annotations

import os

import pytest

import atelier_worker

from conftest import PYTHON_DIR

tomllib = pytest.importorskip("tomllib")


def _pins(lines) -> set[str]:
    return {line.split("#")[0].strip() for line in lines} - {""}


def test_pyproject_pins_what_requirements_pin():
    with open(os.path.join(PYTHON_DIR, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    with open(os.path.join(PYTHON_DIR, "requirements.txt"), encoding="utf-8") as f:
        required = _pins(f)
    declared = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    assert declared == required
    assert all("==" in pin for pin in declared)


def test_package_data_is_in_the_package():
    with open(os.path.join(PYTHON_DIR, "pyproject.toml"), "rb") as f:
        data = tomllib.load(f)["tool"]["setuptools"]["package-data"]["atelier_worker"]
    assert data == ["configs/*"]
    configs = os.path.join(os.path.dirname(atelier_worker.__file__), "configs")
    assert os.listdir(configs)
