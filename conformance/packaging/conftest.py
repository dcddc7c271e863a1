"""Shared fixtures of the packaging checks: the repository root, pyproject.toml parsed, scripts/envcheck.py loaded."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_pyproject() -> dict[str, Any]:
    """pyproject.toml as a dict (tomllib, or tomli below Python 3.11)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        tomllib = pytest.importorskip("tomli")
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def load_envcheck() -> ModuleType:
    """scripts/envcheck.py as a module (it is a script, not part of the installed package)."""
    spec = importlib.util.spec_from_file_location("muonlab_envcheck", ROOT / "scripts" / "envcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module while the class is created
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def pyproject() -> dict[str, Any]:
    return load_pyproject()


@pytest.fixture(scope="session")
def envcheck() -> ModuleType:
    return load_envcheck()
