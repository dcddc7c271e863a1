"""The GPU machine's path (docs/install.md "A GPU machine as it comes"): scripts/gpu_check.py on a Python that has
torch, triton and numpy but no muonlab installs muonlab offline (``pip install --no-index --no-deps
--no-build-isolation -e .``), imports it in the same process, and passes envcheck.

The machine is a fresh venv that sees this interpreter's packages, muonlab excepted, through a folder of links
(a ``.pth`` line to it): what the venv imports of muonlab can only come from the install the script makes. The
editable install writes into its source tree, so the script runs from a copy of the package's files.
"""

from __future__ import annotations

import site
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

_OURS = ("muonlab", "__editable__", "_muonlab")


def run(*args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False, timeout=timeout)


def parent_view(into: Path) -> Path:
    """A folder of links to everything in this interpreter's site-packages except muonlab's own entries."""
    into.mkdir()
    for directory in dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"]]):
        if not Path(directory).is_dir():
            continue
        for entry in Path(directory).iterdir():
            if entry.name.lower().startswith(_OURS) or entry.suffix == ".pth" or (into / entry.name).exists():
                continue
            (into / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    return into


def test_gpu_check_installs_muonlab_offline_and_uses_it(tmp_path: Path, sources: Callable[..., Path]) -> None:
    pytest.importorskip("setuptools", minversion="70.1")
    pytest.importorskip("triton")
    from muonlab.fast.kernels._common import running_interpreter_loop_problem

    problem = running_interpreter_loop_problem()
    if problem is not None:  # e.g. the GPU image's triton 3.6 with numpy 2.5 (`nox -s gpu`)
        pytest.skip(f"the dry run interprets the kernels: {problem}")
    src = sources(tmp_path / "src", extra=("scripts",))

    venv = tmp_path / "venv"
    made = run(sys.executable, "-m", "venv", "--without-pip", venv)  # pip and setuptools: this interpreter's
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    purelib = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    (purelib / "zz_parent_view.pth").write_text(f"{parent_view(tmp_path / 'parent')}\n")
    probe = "import importlib.util as u; print(u.find_spec('muonlab') is None, u.find_spec('torch') is None)"
    before = run(python, "-c", probe)
    assert before.stdout.split() == ["True", "False"], before.stdout + before.stderr  # torch, and no muonlab

    out = tmp_path / "gpu.md"
    proc = run(python, src / "scripts" / "gpu_check.py", "--device", "cpu", "--only", "kernel", "--out", out)
    text = out.read_text() if out.exists() else ""
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "| setup | muonlab | installed now: pip install --no-index --no-deps --no-build-isolation -e" in text
    assert "| envcheck | versions in the supported ranges |" in text and "every version is in range" in text
    assert "Triton path: all checks passed." in text

    where = run(python, "-c", "import muonlab.fast, pathlib; print(pathlib.Path(muonlab.fast.__file__).resolve())")
    assert Path(where.stdout.strip()).is_relative_to(src.resolve()), where.stdout + where.stderr
