"""Side-by-side benchmarks: each case's baseline and candidate in one pytest-benchmark group, so the table
shows both and their ratio. They measure; nothing asserts a time.

CPU runs the CPU-sized cases (the GPT-2 small full step takes seconds per step on CPU and runs on CUDA
only here; `report.py --gpt2-cpu` times it once per side); CUDA runs every case, Triton kernels compiled.
"""

from __future__ import annotations

from typing import Any

import benchcases as bc
import pytest

DEVICE = bc.device()
CASES = [c for c in bc.cases() if DEVICE.type == "cuda" or not (c.cuda_only or c.name.startswith("step/gpt2"))]


@pytest.mark.parametrize("side", ["baseline", "candidate"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_compare(benchmark: Any, case: bc.Case, side: str) -> None:
    baseline, candidate = case.build(DEVICE)
    fn = baseline if side == "baseline" else candidate
    fn()  # warm-up: state allocation, kernel compilation, allocator caches
    benchmark.group = f"{case.name} [{DEVICE.type}]"
    benchmark.extra_info["impl"] = case.baseline_label if side == "baseline" else case.candidate_label
    benchmark.extra_info["device"] = DEVICE.type
    benchmark.pedantic(fn, rounds=7 if "step/gpt2" in case.name else 20, iterations=1, warmup_rounds=1)
