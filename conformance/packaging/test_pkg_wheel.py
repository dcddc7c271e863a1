"""The wheel, installed the way a user with a training environment installs it: ``--no-deps``, into a fresh venv.

The venv sees this interpreter's site-packages (torch, numpy, pydantic, ...) through a ``.pth`` file, as a machine
that already has the CPU torch would, but gets muonlab only from the wheel. Built offline (``--no-index
--no-build-isolation``) from a copy of the package's own files, so nothing outside them can leak in.
"""

from __future__ import annotations

import site
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False, cwd=cwd)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"{done.args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory, sources: Callable[..., Path]) -> Path:
    pytest.importorskip("setuptools", minversion="70.1")
    src = sources(tmp_path_factory.mktemp("src"))
    dist = tmp_path_factory.mktemp("dist")
    ok(run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "--no-build-isolation", "-w", dist, src))
    (built,) = dist.glob("muonlab-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv without pip (this interpreter's pip installs into it with ``--python``)."""
    root = tmp_path_factory.mktemp("venv")
    ok(run(sys.executable, "-m", "venv", "--without-pip", root))
    return root


def see_parent_site_packages(venv: Path) -> None:
    """A .pth in the venv that adds this interpreter's site-packages (torch, numpy, ...) after the venv's own.

    Written after muonlab is installed: while the parent's muonlab is visible, pip would take it as already
    installed (or, told to reinstall, uninstall it from the parent).
    """
    python = venv / "bin" / "python"
    purelib = Path(ok(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")).strip())
    parents = dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"]])
    (purelib / "zz_parent_site.pth").write_text("".join(f"{p}\n" for p in parents))


def test_wheel_contents(wheel: Path, pyproject: dict[str, Any]) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in pyproject["tool"]["setuptools"]["packages"]:
        assert f"{package.replace('.', '/')}/__init__.py" in names, f"{package} missing from {wheel.name}"
    for package in pyproject["tool"]["setuptools"]["packages"]:
        if package.count(".") == 1:  # each muonlab.* package is typed (mypy reads it from an install)
            assert f"{package.replace('.', '/')}/py.typed" in names, f"{package} ships no py.typed"
    assert any(n.startswith("muonlab/harness/configs/") and n.endswith(".toml") for n in names)
    (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    metadata = zipfile.ZipFile(wheel).read(meta_name).decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist")]
    assert requires, "no Requires-Dist in the wheel's METADATA"
    assert not [r for r in requires if "==" in r.split(";")[0]], f"exact pins in the wheel's METADATA: {requires}"


def test_install_no_deps_into_a_fresh_venv(wheel: Path, venv: Path) -> None:
    python = venv / "bin" / "python"
    envcheck = ROOT / "scripts" / "envcheck.py"

    ok(run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel))
    see_parent_site_packages(venv)
    where = ok(
        run(
            python,
            "-c",
            "import muonlab.reference, muonlab.fast, muonlab.harness\n"
            "for m in (muonlab.reference, muonlab.fast, muonlab.harness): print(m.__file__)",
            cwd=venv,
        )
    )
    for path in where.split():
        assert Path(path).resolve().is_relative_to(venv.resolve()), f"imported {path}, not the wheel's copy"

    helped = ok(run(venv / "bin" / "muonlab", "--help", cwd=venv))
    assert "usage: muonlab" in helped

    checked = ok(run(python, envcheck, "--extras", "fast,harness"))
    assert "every version is in range" in checked
