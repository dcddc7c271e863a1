"""scripts/envcheck.py: the offline check that a machine's Python, torch, triton, ... are inside the supported ranges.

The checker is fed synthetic metadata and versions (so a wrong verdict cannot hide behind this machine's own
versions), then every requirement pyproject.toml states goes through its parser, then it runs as a script here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

REQUIRES = [
    "numpy>=1.26",
    'torch>=2.11; extra == "fast"',
    'triton>=3.6; platform_system == "Linux" and extra == "fast"',
    'torch>=2.11; extra == "harness"',
    'pydantic>=2.6; extra == "harness"',
    'tomli>=1.1; python_version < "3.11" and extra == "harness"',
    'pytest>=8; extra == "dev"',
]
LINUX = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "platform_system": "Linux",
    "sys_platform": "linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
}
GPU_MACHINE = {"numpy": "2.1.2", "torch": "2.11.0+cu130", "triton": "3.6.0", "pytest": "8.3.3", "pydantic": "2.9.2"}


def run_check(envcheck: ModuleType, versions: dict[str, str], env: dict[str, str] = LINUX, **kw: Any) -> list[Any]:
    extras = kw.pop("extras", ["fast"])
    return list(envcheck.check(REQUIRES, ">=3.10", extras, env=env, lookup=versions.get, **kw))


def failures(findings: list[Any]) -> list[str]:
    return [f.text for f in findings if not f.ok]


@pytest.mark.parametrize(
    ("version", "op", "bound", "expected"),
    [
        ("2.11.0+cu130", ">=", "2.11", True),
        ("2.11.0a0+nv25.10", ">=", "2.11", True),  # NVIDIA container builds are pre-release numbered
        ("2.10.1+cu128", ">=", "2.11", False),
        ("3.6.0", ">=", "3.6", True),
        ("3.5.99", ">=", "3.6", False),
        ("3.10", ">=", "3.9", True),  # numeric, not string, order
        ("3.12.3", "<", "3.11", False),
        ("3.10.14", "<", "3.11", True),
        ("3.6.1", "==", "3.6.*", True),
        ("3.7.0", "==", "3.6.*", False),
        ("1.26.4", "~=", "1.26", True),
        ("2.0.0", "~=", "1.26", False),
    ],
)
def test_satisfies(envcheck: ModuleType, version: str, op: str, bound: str, expected: bool) -> None:
    assert envcheck.satisfies(version, op, bound) is expected


def test_release_rejects_a_non_version(envcheck: ModuleType) -> None:
    with pytest.raises(ValueError, match="version"):
        envcheck.release("unknown")


def test_gpu_machine_as_it_comes_passes(envcheck: ModuleType) -> None:
    findings = run_check(envcheck, GPU_MACHINE, extras=["fast"], need=["pytest"])
    assert failures(findings) == []
    assert [f.text.split()[0] for f in findings] == ["python", "numpy", "torch", "triton", "pytest"]


def test_torch_below_the_floor_names_torch_and_the_range(envcheck: ModuleType) -> None:
    (text,) = failures(run_check(envcheck, {**GPU_MACHINE, "torch": "2.10.1+cu128"}))
    assert text.startswith("torch 2.10.1+cu128 is outside the supported range >=2.11")
    assert "extra 'fast'" in text


def test_missing_triton_fails_on_linux_only(envcheck: ModuleType) -> None:
    versions = {k: v for k, v in GPU_MACHINE.items() if k != "triton"}
    (text,) = failures(run_check(envcheck, versions))
    assert text.startswith("triton is not installed; muonlab needs triton>=3.6")
    mac = {**LINUX, "platform_system": "Darwin", "sys_platform": "darwin"}
    assert failures(run_check(envcheck, versions, env=mac)) == []


def test_python_outside_the_range(envcheck: ModuleType) -> None:
    findings = run_check(envcheck, GPU_MACHINE, env={**LINUX, "python_version": "3.9", "python_full_version": "3.9.18"})
    assert failures(findings) == ["python 3.9.18 is outside the supported range >=3.10"]


def test_python_marker_selects_tomli(envcheck: ModuleType) -> None:
    py310 = {**LINUX, "python_version": "3.10", "python_full_version": "3.10.13"}
    (text,) = failures(run_check(envcheck, GPU_MACHINE, env=py310, extras=["harness"]))
    assert text.startswith("tomli is not installed")
    assert failures(run_check(envcheck, GPU_MACHINE, extras=["harness"])) == []


def test_need_checks_presence_and_range(envcheck: ModuleType) -> None:
    (text,) = failures(run_check(envcheck, GPU_MACHINE, need=["hypothesis"]))
    assert text.startswith("hypothesis is not installed")
    (text,) = failures(run_check(envcheck, {**GPU_MACHINE, "pytest": "7.4.0"}, need=["pytest"]))
    assert text.startswith("pytest 7.4.0 is outside the supported range >=8")


def test_unknown_extra_is_an_error(envcheck: ModuleType) -> None:
    with pytest.raises(ValueError, match="extras: gpu not among"):
        run_check(envcheck, GPU_MACHINE, extras=["gpu"])


@pytest.mark.parametrize(
    "line",
    ['x>=1; platform_system == "Linux" or extra == "a"', "x>=1; os.name == 'nt'", "x>>1", 'x>=1; extra != "a"'],
)
def test_unsupported_forms_raise(envcheck: ModuleType, line: str) -> None:
    with pytest.raises(ValueError):
        req = envcheck.parse_requirement(line)
        envcheck.applies(req, ["a"], LINUX)


def test_parses_every_requirement_of_pyproject(envcheck: ModuleType, pyproject: dict[str, Any]) -> None:
    """Each requirement, as setuptools writes it into the metadata (marker and extra joined), parses and evaluates."""
    project = pyproject["project"]
    lines = list(project["dependencies"])
    for extra, reqs in project["optional-dependencies"].items():
        for text in reqs:
            base, _, marker = text.partition(";")
            joined = f"{marker.strip()} and " if marker else ""
            lines.append(f'{base}; {joined}extra == "{extra}"')
    for line in lines:
        req = envcheck.parse_requirement(line)
        assert req.specifiers, f"{line}: no version range parsed"
        envcheck.applies(req, list(project["optional-dependencies"]), LINUX)


def test_runs_as_a_script_here() -> None:
    """This environment (nox -s tests: the fast, harness and dev extras at CI's versions) is inside every range."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "envcheck.py"), "--extras", "fast,harness", "--need", "pytest"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every version is in range" in done.stdout
    assert "ok   torch " in done.stdout


def test_not_installed_says_how_to_install() -> None:
    """Without site-packages (``-S``) muonlab is not installed: the script says so and gives the offline install."""
    done = subprocess.run(
        [sys.executable, "-S", str(ROOT / "scripts" / "envcheck.py")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "muonlab is not installed" in done.stdout
    assert "pip install --no-deps --no-build-isolation -e ." in done.stdout
    assert "setuptools is not installed; muonlab needs setuptools>=" in done.stdout  # what that install builds with


def test_build_requirements(envcheck: ModuleType, pyproject: dict[str, Any], tmp_path: Path) -> None:
    assert envcheck.build_requirements(ROOT / "pyproject.toml") == pyproject["build-system"]["requires"]
    other = tmp_path / "pyproject.toml"
    other.write_text('[project]\nrequires = ["no"]\n[build-system]\nrequires = [\n  "setuptools>=80", \'x\',\n]\n')
    assert envcheck.build_requirements(other) == ["setuptools>=80", "x"]
    assert envcheck.build_requirements(tmp_path / "missing.toml") == []
