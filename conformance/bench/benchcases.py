"""Benchmark cases shared by the pytest-benchmark suite and `report.py`.

Each case is a pair of zero-argument callables doing the same work two ways (``baseline`` and ``candidate``),
built on one device. The suite times both in one run; `report.py` prints medians and the ratio
``baseline / candidate`` (above 1: the candidate is faster). Nothing here asserts a time.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

Fn = Callable[[], object]


@dataclass(frozen=True)
class Case:
    """Two implementations of the same work; ``cuda_only`` cases are skipped without a GPU."""

    name: str
    baseline_label: str
    candidate_label: str
    build: Callable[[torch.device], tuple[Fn, Fn]]
    cuda_only: bool = False
    note: str = ""


SMALL_SHAPES: list[tuple[int, int]] = [(128, 128)] * 4 + [(128, 512)] * 4 + [(512, 128)] * 4
"""12 matrices: 4 square, 4 wide, 4 tall."""

GPT2_SMALL_SHAPES: list[tuple[int, int]] = [s for _ in range(12) for s in [(768, 768)] * 4 + [(3072, 768), (768, 3072)]]
"""GPT-2 small's 72 hidden matrices: 12 layers x (q, k, v, o at 768x768, MLP up 3072x768, down 768x3072)."""


def gpt2_shapes(divisor: int) -> list[tuple[int, int]]:
    """`GPT2_SMALL_SHAPES` with every dimension divided by ``divisor`` (2: half scale, 4: quarter scale)."""
    return [(m // divisor, n // divisor) for m, n in GPT2_SMALL_SHAPES]


def device() -> torch.device:
    """``cuda`` when ``MUONLAB_BENCH_DEVICE=cuda`` or a GPU is present, else ``cpu``."""
    want = os.environ.get("MUONLAB_BENCH_DEVICE")
    if want:
        return torch.device(want)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _params(shapes: list[tuple[int, int]], dev: torch.device, seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for m, n in shapes:
        p = torch.nn.Parameter((torch.randn(m, n, generator=gen) / n**0.5).to(dev))
        p.grad = torch.randn(m, n, generator=gen).to(dev)
        out.append(p)
    return out


def full_step(shapes: list[tuple[int, int]]) -> Callable[[torch.device], tuple[Fn, Fn]]:
    """``torch.optim.Muon.step()`` vs ``muonlab.fast.Muon(preset="torch").step()`` on equal params/grads."""

    def build(dev: torch.device) -> tuple[Fn, Fn]:
        from muonlab.fast import Muon

        ref_params, fast_params = _params(shapes, dev), _params(shapes, dev)
        ref = torch.optim.Muon(ref_params, lr=1e-3, weight_decay=0.1)
        fast = Muon(fast_params, preset="torch", lr=1e-3)

        def run_ref() -> None:
            ref.step()
            sync(dev)

        def run_fast() -> None:
            fast.step()
            sync(dev)

        return run_ref, run_fast

    return build


def newton_schulz(count: int, m: int, n: int, dtype: torch.dtype) -> Callable[[torch.device], tuple[Fn, Fn]]:
    """NS5 on ``count`` matrices of ``m x n``: one Python loop of ``mm`` per matrix vs one stacked ``bmm``."""

    def build(dev: torch.device) -> tuple[Fn, Fn]:
        from muonlab.contract import schedule
        from muonlab.fast.orthogonalize import newton_schulz as ns

        coeffs = schedule("keller", 5)
        gen = torch.Generator().manual_seed(1)
        stack = torch.randn(count, m, n, generator=gen).to(device=dev)
        mats = list(stack.unbind(0))

        def looped() -> None:
            for x in mats:
                ns(x, coeffs, compute=dtype, backend="torch")
            sync(dev)

        def batched() -> None:
            ns(stack, coeffs, compute=dtype, backend="torch")
            sync(dev)

        return looped, batched

    return build


def symmetric_xxt(batch: int, m: int, k: int) -> Callable[[torch.device], tuple[Fn, Fn]]:
    """bf16 ``X X^T``: ``torch.bmm(X, X^T)`` vs the symmetric Triton kernel (CUDA only)."""

    def build(dev: torch.device) -> tuple[Fn, Fn]:
        from muonlab.fast.kernels.symmetric import xxt

        gen = torch.Generator().manual_seed(3)
        x = torch.randn(batch, m, k, generator=gen).to(device=dev, dtype=torch.bfloat16)
        out = torch.empty(batch, m, m, device=dev, dtype=torch.bfloat16)

        def plain() -> None:
            torch.bmm(x, x.mT, out=out)
            sync(dev)

        def symmetric() -> None:
            xxt(x, out=out)
            sync(dev)

        return plain, symmetric

    return build


def cases() -> list[Case]:
    """Every comparison, CPU-sized first."""
    return [
        Case(
            "step/small12",
            "torch.optim.Muon",
            "muonlab.fast.Muon",
            full_step(SMALL_SHAPES),
            note="12 matrices 128x128, 128x512, 512x128",
        ),
        Case(
            "step/gpt2-small72",
            "torch.optim.Muon",
            "muonlab.fast.Muon",
            full_step(GPT2_SMALL_SHAPES),
            note="72 matrices of GPT-2 small",
        ),
        Case(
            "step/gpt2-half72",
            "torch.optim.Muon",
            "muonlab.fast.Muon",
            full_step(gpt2_shapes(2)),
            note="72 matrices of GPT-2 small at half scale (384, 1536)",
        ),
        Case(
            "step/gpt2-quarter72",
            "torch.optim.Muon",
            "muonlab.fast.Muon",
            full_step(gpt2_shapes(4)),
            note="72 matrices of GPT-2 small at quarter scale (192, 768)",
        ),
        Case("ns5/8x128x512-fp32", "looped", "batched", newton_schulz(8, 128, 512, torch.float32)),
        Case("ns5/8x128x512-bf16", "looped", "batched", newton_schulz(8, 128, 512, torch.bfloat16)),
        Case("ns5/24x768x768-bf16", "looped", "batched", newton_schulz(24, 768, 768, torch.bfloat16), cuda_only=True),
        Case("xxt/4x768x3072-bf16", "bmm X X^T", "triton xxt", symmetric_xxt(4, 768, 3072), cuda_only=True),
        Case("xxt/24x768x768-bf16", "bmm X X^T", "triton xxt", symmetric_xxt(24, 768, 768), cuda_only=True),
    ]
