"""The layering of the packages: `muonlab.contract` is shared, the float64 math stays in `muonlab.reference`."""

from __future__ import annotations

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
