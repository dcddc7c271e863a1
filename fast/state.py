"""Optimizer state of `muonlab.fast.Muon` (torch ``Optimizer.state`` dicts; mirrors `muonlab.reference.state`).

* Muon: ``"momentum_buffer"`` (the parameter's shape; float32 for bf16/fp16 parameters, otherwise the
  parameter's dtype), ``"second_moment"`` (NorMuon ``S`` of shape `normuon_state_shape`, same dtype; only
  with ``spec.normuon``), ``"step"`` (0-D float32 tensor on the parameter's device, as torch's Adam with
  ``capturable=True``: the step reads it without a host sync). In `muonlab.fast.Muon` the Muon entries
  are views into per-shape stacks (`muonlab.fast.pipeline`).
* AdamW: ``"exp_avg"``, ``"exp_avg_sq"`` (same dtype rule) and ``"step"``.
"""

from __future__ import annotations

from typing import Any

import torch

from muonlab.contract import MuonSpec, normuon_state_shape

__all__ = ["init_adam_state", "init_muon_state", "state_dtype", "wide_dtype"]


def wide_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype state and per-matrix math keep for tensors of ``dtype``: float64 for float64, else float32 (bf16
    and fp16 would lose the small EMA increments; docs/fast.md, "Conventions"). The one place of this rule."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def state_dtype(param: torch.Tensor) -> torch.dtype:
    """`wide_dtype` of ``param``'s dtype: the dtype of its optimizer state."""
    return wide_dtype(param.dtype)


def _step(param: torch.Tensor) -> torch.Tensor:
    return torch.zeros((), dtype=torch.float32, device=param.device)


def init_muon_state(param: torch.Tensor, spec: MuonSpec) -> dict[str, Any]:
    """Zero momentum (and zero ``S`` with ``spec.normuon``) and ``step = 0``."""
    if param.ndim < 2:
        raise ValueError(f"param must have at least 2 dims for Muon, got shape {tuple(param.shape)}")
    dtype = state_dtype(param)
    state: dict[str, Any] = {
        "step": _step(param),
        "momentum_buffer": torch.zeros_like(param, dtype=dtype, memory_format=torch.contiguous_format),
    }
    if spec.normuon:
        state["second_moment"] = torch.zeros(normuon_state_shape(param.shape, spec), dtype=dtype, device=param.device)
    return state


def init_adam_state(param: torch.Tensor) -> dict[str, Any]:
    """Zero first and second moments and ``step = 0``."""
    dtype = state_dtype(param)
    return {
        "step": _step(param),
        "exp_avg": torch.zeros_like(param, dtype=dtype, memory_format=torch.contiguous_format),
        "exp_avg_sq": torch.zeros_like(param, dtype=dtype, memory_format=torch.contiguous_format),
    }
