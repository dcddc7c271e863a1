"""The layering of the packages: `muonlab.contract` is shared, the float64 math stays in `muonlab.reference`."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from muonlab.contract import MuonSpec, shape_scale
from muonlab.reference.decay import decay_lr


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(m for m in sys.modules if m.startswith('muonlab')))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return set(out.split())


def test_fast_imports_the_contract_but_no_float64_math() -> None:
    pytest.importorskip("torch")
    loaded = _modules_after("import muonlab.fast")
    assert "muonlab.contract" in loaded
    assert not {m for m in loaded if m.startswith("muonlab.reference")}, sorted(loaded)


def test_contract_imports_no_array_library() -> None:
    code = "import sys, muonlab.contract; print(any(m in sys.modules for m in ('numpy', 'torch')))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "False"


def test_unknown_modes_raise_instead_of_falling_through() -> None:
    spec = MuonSpec()
    object.__setattr__(spec, "decay_lr", "bogus")  # bypass validation: a mode the code does not know
    with pytest.raises(ValueError, match="decay_lr"):
        decay_lr(0.1, 0.2, spec)
    with pytest.raises(ValueError, match="shape_scale"):
        shape_scale(4, 2, "bogus")  # type: ignore[arg-type]


def _import_graph(folder: str) -> dict[str, set[str]]:
    """``module -> modules of the same package it imports`` (module level and inside functions), from the source;
    a relative import above the package appears as ``"..<name>"``."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / folder
    graph: dict[str, set[str]] = {}
    for path in sorted(root.glob("*.py")):
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
            elif isinstance(node, ast.ImportFrom) and node.level > 1:
                deps.add(f"..{node.module}")
        graph[path.stem] = deps - {path.stem}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, or None (depth-first search with an explicit path)."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done or node not in graph:
            return None
        for dep in sorted(graph[node]):
            found = visit(dep, [*path, node])
            if found:
                return found
        done.add(node)
        return None

    for start in sorted(graph):
        found = visit(start, [])
        if found:
            return found
    return None


@pytest.mark.parametrize("folder", ["reference", "fast", "harness", "contract"])
def test_imports_run_one_way(folder: str) -> None:
    """No import cycle between a package's modules (lazy imports inside functions count), and no relative import
    above the package: each package reads as layers."""
    graph = _import_graph(folder)
    assert graph, folder
    assert _cycle(graph) is None, f"{folder}: import cycle {' -> '.join(_cycle(graph) or [])}"
    upward = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps if d.startswith(".."))
    assert not upward, upward


# (field, reference table, fast table): each stage choice is looked up in one table per side.
STAGE_TABLES = [
    ("orthogonalizer", "muonlab.reference.orthogonalize:ORTHOGONALIZERS", "muonlab.fast.orthogonalize:ORTHOGONALIZERS"),
    ("momentum_form", "muonlab.reference.momentum:MOMENTUM_FORMS", "muonlab.fast.momentum:MOMENTUM_FORMS"),
    ("cautious", "muonlab.reference.decay:CAUTIOUS_TESTS", "muonlab.fast.decay:CAUTIOUS_TESTS"),
    ("eps_mode", "muonlab.reference.orthogonalize:NORM_GUARDS", "muonlab.fast.orthogonalize:NORM_GUARDS"),
    ("normuon_rescale", "muonlab.reference.normuon:RESCALES", "muonlab.fast.normuon:RESCALES"),
    ("normuon_axis", "muonlab.contract.shapes:NORMUON_AXES", None),
    ("normuon_input", "muonlab.reference.normuon:STATISTICS", "muonlab.fast.normuon:STATISTICS"),
    ("decay_placement", "muonlab.contract.decay:DECAY_PLACEMENTS", None),
    ("decay_lr", "muonlab.contract.decay:DECAY_LRS", None),
    ("shape_scale", "muonlab.contract.scaling:SHAPE_SCALES", None),
]


def _table(path: str) -> object:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize(("field", "reference", "fast"), STAGE_TABLES, ids=[t[0] for t in STAGE_TABLES])
def test_each_stage_choice_is_one_table_per_side_keyed_by_the_spec_values(
    field: str, reference: str, fast: str | None
) -> None:
    """A stage choice is looked up in one table per side (the contract's tables serve both), keyed by exactly the
    spec's ``Literal`` values: a new value is one function per side plus the value (the strategies draw it from
    the type)."""
    from muonlab.contract import choices

    assert set(_table(reference)) == set(choices(field))  # type: ignore[call-overload]
    if fast is not None:
        pytest.importorskip("torch")
        assert set(_table(fast)) == set(choices(field))  # type: ignore[call-overload]
