"""bf16 on a CPU: `muonlab.fast` warns once when Newton-Schulz is asked to compute in bf16 on a CPU without a
native bf16 matmul (`muonlab.fast.backend.warn_if_slow_compute`), and keeps the spec as asked.

The slow CPU is made on any x86 machine by capping the ISA torch and oneDNN dispatch to (AVX2), in a child
process, since the caps are read at start-up (README, "Tests on any x86 CPU")."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from muonlab.fast.backend import SLOW_BF16_FACTOR

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}

SCRIPT = """
import warnings, torch
from muonlab.fast import Muon
from muonlab.fast.backend import cpu_bf16_slowdown
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as seen:
    for compute in COMPUTE:
        opt = Muon([torch.nn.Parameter(torch.randn(8, 8))], "keller", compute_dtype=compute)
        assert opt.spec.compute_dtype == compute  # kept as asked
print(f"slowdown {cpu_bf16_slowdown()!r}")  # exact: the test rounds it as the warning does
for w in seen:
    print(f"{w.category.__name__} at {w.filename}: {w.message}")
"""


def _run(compute: list[str], env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT.replace("COMPUTE", repr(compute))],
        env={**os.environ, **env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine != "x86_64", reason="x86-64 ISA caps")
def test_bf16_on_an_avx2_cpu_warns_once_naming_slowdown_and_override() -> None:
    out = _run(["bfloat16", "bfloat16"], AVX2)
    slowdown = float(out.splitlines()[0].split()[1])
    assert slowdown > SLOW_BF16_FACTOR, out  # the timing sees the AVX2 machine: bf16 GEMM is emulated
    warned = [line for line in out.splitlines() if line.startswith("SlowComputeDtypeWarning")]
    assert len(warned) == 1, out  # once per process, not per optimizer
    assert f"{slowdown:.1f}x slower than float32" in warned[0]
    assert "compute_dtype='float32'" in warned[0]
    assert " at <string>: " in warned[0]  # points at the line that built the optimizer, not into muonlab or torch


def test_float32_compute_never_warns() -> None:
    out = _run(["float32"], AVX2 if os.uname().machine == "x86_64" else {})
    assert "SlowComputeDtypeWarning" not in out, out


def test_the_warning_follows_the_measured_slowdown(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule itself, without timing: warn above `SLOW_BF16_FACTOR`, not at or below it, CPUs only."""
    import itertools
    import warnings

    import torch

    from muonlab.fast import backend

    cases = [(SLOW_BF16_FACTOR, False), (0.1, False), (SLOW_BF16_FACTOR * 1.01, True), (40.0, True)]
    for (slowdown, warns), half in itertools.product(cases, ["bfloat16", "float16"]):
        monkeypatch.setattr(backend, "cpu_bf16_slowdown", lambda dtype=None, s=slowdown: s)
        monkeypatch.setattr(backend, "_warned", set())
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            backend.warn_if_slow_compute(torch.device("cpu"), half)
            backend.warn_if_slow_compute(torch.device("meta"), half)
            backend.warn_if_slow_compute(torch.device("cpu"), "float32")
        assert len(seen) == int(warns), (slowdown, half, [str(w.message) for w in seen])
        assert all(half in str(w.message) for w in seen)
