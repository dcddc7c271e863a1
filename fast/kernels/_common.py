"""Helpers shared by the Triton kernel modules: launch checks and scalar arguments.

A kernel runs on CUDA tensors, or on CPU tensors when Triton's interpreter is on (``TRITON_INTERPRET=1``
must be set before the kernel modules are imported: `triton.jit` reads it when a kernel is defined).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["check_launchable", "interpreted", "scalar_arg"]


def interpreted(kernel: Any) -> bool:
    """Whether ``kernel`` (a `triton.jit` function) was defined under ``TRITON_INTERPRET=1``."""
    return type(kernel).__name__ == "InterpretedFunction"


def check_launchable(kernel: Any, t: torch.Tensor, name: str) -> None:
    """`RuntimeError` unless ``t`` is on CUDA or ``kernel`` runs in the interpreter (CPU tensors)."""
    if t.device.type == "cuda" or (interpreted(kernel) and t.device.type == "cpu"):
        return
    raise RuntimeError(
        f"{name}: Triton kernels need CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set before "
        f"muonlab.fast.kernels is imported; got a {t.device.type} tensor"
    )


def scalar_arg(value: float | torch.Tensor, device: torch.device, name: str) -> tuple[torch.Tensor | None, float]:
    """``(pointer_tensor, 0.0)`` for a one-element tensor (float32 on ``device``, read inside the kernel, so
    a changed value needs no recompile), or ``(None, float(value))`` for a Python number."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name}: expected a Python float or a one-element tensor, got shape {tuple(value.shape)}")
        if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name}: expected a real floating tensor, got {value.dtype}")
        return value.detach().reshape(()).to(device=device, dtype=torch.float32), 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a Python float or a one-element tensor, got {type(value).__name__}")
    return None, float(value)
