"""Shared helpers of the kernel suite: the device under test and float64 comparisons."""

from __future__ import annotations

import os

import torch

DEVICE = torch.device("cuda" if os.environ.get("MUONLAB_DEVICE") == "cuda" else "cpu")

BF16_HALF_ULP = 2.0**-8
"""Largest relative error of one round-to-nearest into bfloat16 (8 significand bits)."""

FP32_EPS = 2.0**-23


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Reproducible standard normal samples on `DEVICE`."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device=DEVICE, dtype=dtype)


def rel_fro(x: torch.Tensor, ref: torch.Tensor) -> float:
    """``||x - ref||_F / ||ref||_F`` in float64 (0 when both vanish)."""
    d = torch.linalg.vector_norm(x.double() - ref.double()).item()
    r = torch.linalg.vector_norm(ref.double()).item()
    return d / r if r else d
