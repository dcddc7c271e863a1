"""Gram Newton-Schulz vs standard Newton-Schulz in the whole `muonlab.fast` step (docs/benchmarks.md).

    python scripts/gram_speed.py float16     # or float32; bfloat16 times the standard step only

GPT-2 small's 72 hidden matrices at half scale (48 of 384x384, 24 of 384x1536 / 1536x384), one thread, median of
7 steps after a warm-up; `torch.optim.Muon` side by side; the error of each algorithm against the exact polar
factor; and the Newton-Schulz matmul FLOPs of both per step.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable

import torch

from muonlab.contract import get_preset
from muonlab.fast import Muon, orthogonalize

D, F = 384, 1536
SHAPES = [(D, D)] * 48 + [(F, D), (D, F)] * 12


def _params() -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=g) * 0.02) for s in SHAPES]


def _grads(ps: list[torch.nn.Parameter]) -> None:
    g = torch.Generator().manual_seed(1)
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g)


def timed(make: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer], rounds: int = 7) -> float:
    ps = _params()
    opt = make(ps)
    _grads(ps)
    opt.step()
    times = []
    for _ in range(rounds):
        _grads(ps)
        t = time.perf_counter()
        opt.step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def ns_flops(m: int, n: int, steps: int = 5) -> int:
    """``A = X X^T``, ``A^2`` and ``B X`` per step on the wide side."""
    p, q = min(m, n), max(m, n)
    return steps * (4 * p * p * q + 2 * p**3)


def gram_flops(m: int, n: int, steps: int = 5, restarts: tuple[int, ...] = (2,)) -> int:
    """``R`` once, per step ``R^2`` and (after step 0) ``Q F``, ``F R F`` unless a restart follows; ``Q X`` and a
    fresh ``R`` at a restart; ``Q X`` at the end. Square matrices take the standard loop."""
    p, q = min(m, n), max(m, n)
    if p == q:
        return ns_flops(m, n, steps)
    flops = 2 * p * p * q
    for t in range(steps):
        if t in restarts and t > 0:
            flops += 4 * p * p * q
        flops += 2 * p**3
        if t > 0 and t not in restarts:
            flops += 2 * p**3
        if t < steps - 1 and t + 1 not in restarts:
            flops += 4 * p**3
    return flops + 2 * p * p * q


def main() -> None:
    torch.set_num_threads(1)
    dtype = sys.argv[1] if len(sys.argv) > 1 else "float32"
    spec = get_preset("torch").replace(compute_dtype=dtype)
    t_std = timed(lambda ps: Muon(ps, spec, backend="torch"))
    t_torch = timed(lambda ps: torch.optim.Muon(ps, lr=1e-3, weight_decay=0.1))
    line = f"compute {dtype}: standard NS {t_std * 1e3:.0f} ms; torch.optim.Muon (bf16) {t_torch * 1e3:.0f} ms"
    if dtype != "bfloat16":
        gram = spec.replace(orthogonalizer="gram_newton_schulz")
        t_gram = timed(lambda ps: Muon(ps, gram, backend="torch"))
        line += f"; Gram NS {t_gram * 1e3:.0f} ms, standard / Gram {t_std / t_gram:.2f}x"
        for shape in [(D, F), (D, D)]:
            x = torch.randn(shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
            u, _, vh = torch.linalg.svd(x, full_matrices=False)
            polar = u @ vh
            for name, sp in [("standard", spec), ("gram", gram)]:
                o = orthogonalize(x.float(), sp, backend="torch").double()
                print(f"{shape} {name}: ||O - U V^T||_F / ||U V^T||_F = {float((o - polar).norm() / polar.norm()):.4f}")
    print(line)
    for label, shapes in [("half scale", SHAPES), ("full scale", [(768, 768)] * 48 + [(3072, 768), (768, 3072)] * 12)]:
        a, b = sum(ns_flops(*s) for s in shapes), sum(gram_flops(*s) for s in shapes)
        print(
            f"{label}: NS matmul FLOPs per step standard {a / 1e9:.1f} GFLOP, Gram {b / 1e9:.1f} GFLOP ({a / b:.2f}x)"
        )


if __name__ == "__main__":
    main()
