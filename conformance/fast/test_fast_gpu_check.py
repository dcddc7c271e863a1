"""scripts/gpu_check.py runs end to end in its CPU dry run (small sizes, Triton interpreted), so the script that will
meet a GPU has run every section here first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from muonlab.fast.kernels._common import running_interpreter_loop_problem

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = ("kernel", "conformance", "step", "xxt")


def test_gpu_check_dry_run(tmp_path: Path) -> None:
    problem = running_interpreter_loop_problem()
    if problem is not None:  # e.g. the GPU image's triton 3.6 with numpy 2.5 (`nox -s gpu`)
        pytest.skip(f"the dry run interprets the kernels: {problem}")
    out = tmp_path / "gpu.md"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    text = out.read_text()
    assert text.strip() == proc.stdout.strip()
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    sections = {r[0].lstrip("| ") for r in rows}
    assert set(SECTIONS) <= sections, sections
    assert not any(r[1] == "error" for r in rows), text
    assert sum(r[-1].startswith("PASS") for r in rows) >= 10, text
    assert "Triton path: all checks passed." in text


def test_gpu_check_refuses_a_missing_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        return
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cuda", "--skip-envcheck"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2 and "--device cpu" in proc.stderr
