"""Helpers shared by the Triton kernel modules: launch checks and scalar arguments.

A kernel runs on CUDA tensors, or on CPU tensors when Triton's interpreter is on (``TRITON_INTERPRET=1``
must be set before the kernel modules are imported: `triton.jit` reads it when a kernel is defined).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

__all__ = ["check_launchable", "interpreted", "needs_bf16_rounding", "round_bf16", "scalar_arg"]


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


def scalar_arg(
    value: float | torch.Tensor, device: torch.device, name: str, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor | None, float]:
    """``(pointer_tensor, 0.0)`` for a one-element tensor (``dtype`` on ``device``, read inside the kernel,
    so a changed value needs no recompile), or ``(None, float(value))`` for a Python number.

    With ``dtype=torch.float64`` a Python number is also returned as a tensor: Triton passes Python floats
    as float32 kernel arguments, which would round a float64 computation's scalar."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name}: expected a Python float or a one-element tensor, got shape {tuple(value.shape)}")
        if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name}: expected a real floating tensor, got {value.dtype}")
        return value.detach().reshape(()).to(device=device, dtype=dtype), 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a Python float or a one-element tensor, got {type(value).__name__}")
    if dtype == torch.float64:
        return torch.tensor(float(value), dtype=dtype, device=device), 0.0
    return None, float(value)


def _round_bf16_impl(x: Any) -> Any:
    """float32 ``x`` rounded to nearest-even bfloat16 by integer arithmetic on its bits.

    Used only in the interpreter: triton 3.9's interpreted ``float32 -> bfloat16`` cast truncates toward
    zero, while compiled kernels round to nearest even (what torch does too). NaN and infinities map to
    NaN and infinities of bfloat16.
    """
    bits = x.to(tl.uint32, bitcast=True)
    bits = bits + 0x7FFF + ((bits >> 16) & 1)
    return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)


round_bf16 = triton.jit(_round_bf16_impl)


def needs_bf16_rounding(kernel: Any, dtype: torch.dtype) -> bool:
    """Whether ``kernel`` must round its bfloat16 stores itself (`round_bf16`): interpreted and bfloat16."""
    return interpreted(kernel) and dtype == torch.bfloat16
