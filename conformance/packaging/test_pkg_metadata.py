"""The package's own metadata states ranges, never CI's pins (docs/install.md).

pyproject.toml's dependencies and extras carry floors (``>=``); the exact versions CI runs live in
constraints/ci.txt. These checks keep it that way: no ``==`` in the metadata, every CI pin inside the ranges,
each floor explained in docs/install.md, and every source package folder built into the wheel.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

packaging_requirements = pytest.importorskip("packaging.requirements")
packaging_version = pytest.importorskip("packaging.version")

RUNTIME_EXTRAS = ("fast", "harness")


def metadata_requirements(project: dict[str, Any]) -> dict[str, list[str]]:
    """The requirement strings of the package's metadata, by group ("dependencies" and each extra)."""
    groups = {"dependencies": list(project.get("dependencies", []))}
    groups.update({extra: list(reqs) for extra, reqs in project.get("optional-dependencies", {}).items()})
    return groups


def exact_pins(requirements: list[str]) -> list[str]:
    """The requirements that pin a version exactly (``==`` or ``===``; ``==X.*`` is a range and passes)."""
    pinned = []
    for text in requirements:
        req = packaging_requirements.Requirement(text)
        if any(s.operator == "===" or (s.operator == "==" and not s.version.endswith(".*")) for s in req.specifier):
            pinned.append(text)
    return pinned


def test_exact_pins_detects_a_pin() -> None:
    assert exact_pins(["torch==2.13.0", "numpy>=1.26", "triton===3.9.0", "tqdm==4.*", "x>=1,==2.0; extra == 'a'"]) == [
        "torch==2.13.0",
        "triton===3.9.0",
        "x>=1,==2.0; extra == 'a'",
    ]


def test_no_exact_pin_in_package_metadata(pyproject: dict[str, Any]) -> None:
    groups = metadata_requirements(pyproject["project"])
    found = {group: exact_pins(reqs) for group, reqs in groups.items() if exact_pins(reqs)}
    assert not found, f"exact pins belong in constraints/ci.txt, not in pyproject.toml: {found}"


def test_runtime_requirements_have_floors(pyproject: dict[str, Any]) -> None:
    groups = metadata_requirements(pyproject["project"])
    for group in ("dependencies", *RUNTIME_EXTRAS):
        for text in groups[group]:
            req = packaging_requirements.Requirement(text)
            assert any(s.operator == ">=" for s in req.specifier), f"{group}: {text} states no floor"


def test_triton_only_where_it_exists(pyproject: dict[str, Any]) -> None:
    """triton publishes Linux wheels only: requiring it elsewhere would make `pip install muonlab[fast]` fail."""
    (text,) = [t for t in pyproject["project"]["optional-dependencies"]["fast"] if t.startswith("triton")]
    marker = packaging_requirements.Requirement(text).marker
    assert marker is not None, f"{text} has no platform marker"
    assert marker.evaluate({"platform_system": "Linux", "sys_platform": "linux"})
    for system, platform in (("Darwin", "darwin"), ("Windows", "win32")):
        assert not marker.evaluate({"platform_system": system, "sys_platform": platform}), f"{text} on {system}"


def ci_pins() -> dict[str, tuple[str, str | None]]:
    """constraints/ci.txt as {normalized name: (version, marker or None)}."""
    pins: dict[str, tuple[str, str | None]] = {}
    for line in (ROOT / "constraints" / "ci.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = packaging_requirements.Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"constraints/ci.txt: {line} is not an exact pin"
        pins[normalize(req.name)] = (spec.version, str(req.marker) if req.marker else None)
    return pins


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_ci_pins_lie_inside_the_ranges(pyproject: dict[str, Any]) -> None:
    pins = ci_pins()
    assert {"torch", "triton", "numpy"} <= set(pins), "constraints/ci.txt must pin torch, triton and numpy"
    for group, reqs in metadata_requirements(pyproject["project"]).items():
        for text in reqs:
            req = packaging_requirements.Requirement(text)
            name = normalize(req.name)
            if name in pins:
                version = pins[name][0]
                assert req.specifier.contains(version, prereleases=True), (
                    f"constraints/ci.txt pins {name}=={version}, outside {group}'s {text}"
                )


def documented_floors(page: Path) -> dict[str, str]:
    """The floor table of docs/install.md: {package name: range cell}, from rows ``| `name` ... | `range` | why |``."""
    rows = {}
    for line in page.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`"):
            rows[normalize(cells[0].split("`")[1])] = cells[1].replace("`", "").replace(" ", "")
    return rows


def test_every_floor_is_explained(pyproject: dict[str, Any]) -> None:
    floors = documented_floors(ROOT / "docs" / "install.md")
    project = pyproject["project"]
    assert floors.get("python") == project["requires-python"], "docs/install.md: Python's range"
    for group in ("dependencies", *RUNTIME_EXTRAS):
        for text in metadata_requirements(project)[group]:
            req = packaging_requirements.Requirement(text)
            name = normalize(req.name)
            assert name in floors, f"docs/install.md has no row for {name} ({group})"
            assert floors[name] == str(req.specifier), f"docs/install.md: {name} {floors[name]} vs pyproject {text}"


def package_dirs(setuptools: dict[str, Any]) -> dict[str, Path]:
    """{package: source folder} from setuptools' ``packages`` and ``package-dir`` (longest mapped prefix wins)."""
    mapping: dict[str, str] = setuptools.get("package-dir", {})
    out = {}
    for package in setuptools["packages"]:
        parts = package.split(".")
        for cut in range(len(parts), 0, -1):
            prefix = ".".join(parts[:cut])
            if prefix in mapping:
                out[package] = ROOT / mapping[prefix] / Path(*parts[cut:])
                break
        else:
            out[package] = ROOT / Path(*parts)
    return out


def test_every_source_package_is_built(pyproject: dict[str, Any]) -> None:
    """A folder with an __init__.py under a source folder that no package names would be missing from the wheel."""
    dirs = package_dirs(pyproject["tool"]["setuptools"])
    for package, folder in dirs.items():
        assert (folder / "__init__.py").is_file(), f"{package} -> {folder.relative_to(ROOT)} has no __init__.py"
    roots = {folder for package, folder in dirs.items() if package.count(".") == 1}
    built = set(dirs.values())
    for root in roots:
        for init in root.rglob("__init__.py"):
            assert init.parent in built, f"{init.parent.relative_to(ROOT)} is a package no pyproject entry builds"
