"""Shared fixtures of the packaging checks: the repository root, pyproject.toml parsed, scripts/envcheck.py loaded."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from collections.abc import Callable
from functools import partial
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


CopySources = Callable[..., Path]


def copy_sources(dest: Path, pyproject: dict[str, Any], extra: tuple[str, ...] = ()) -> Path:
    """A copy of the package's own files in ``dest``: pyproject.toml, README.md, the folders its ``package-dir``
    maps, and the ``extra`` folders (no caches), so a build or an editable install sees nothing else."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    folders = {Path(d).parts[0] for d in pyproject["tool"]["setuptools"]["package-dir"].values()} | set(extra)
    for folder in sorted(folders):
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


@pytest.fixture(scope="session")
def pyproject() -> dict[str, Any]:
    return load_pyproject()


@pytest.fixture(scope="session")
def sources(pyproject: dict[str, Any]) -> CopySources:
    """`copy_sources` with this repository's pyproject.toml: ``sources(dest, extra=("scripts",))``."""
    return partial(copy_sources, pyproject=pyproject)


@pytest.fixture(scope="session")
def envcheck() -> ModuleType:
    return load_envcheck()
