"""Optimizer state records of the reference (immutable; every step returns a new one).

* `MuonState`: ``momentum`` (float64, the parameter's shape), ``second_moment`` (NorMuon ``S``, float64,
  shape `normuon_state_shape`, or ``None`` when ``spec.normuon`` is off) and ``step`` (steps taken).
* `AdamState`: ``exp_avg``, ``exp_avg_sq`` (float64, the parameter's shape) and ``step``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from muonlab.contract.shapes import normuon_state_shape
from muonlab.contract.spec import MuonSpec

from .array import Array

__all__ = ["AdamState", "MuonState", "init_adam_state", "init_muon_state", "init_state"]


@dataclass(frozen=True)
class MuonState:
    """State of one Muon parameter: momentum buffer, NorMuon second moment (or ``None``), step count."""

    momentum: Array
    second_moment: Array | None
    step: int


@dataclass(frozen=True)
class AdamState:
    """State of one AdamW parameter: first and second moments and the step count."""

    exp_avg: Array
    exp_avg_sq: Array
    step: int


def init_muon_state(param: npt.ArrayLike, spec: MuonSpec) -> MuonState:
    """Zero momentum of ``param``'s shape, zero ``S`` if ``spec.normuon`` (else ``None``), ``step = 0``."""
    shape = np.shape(param)
    if len(shape) < 2:
        raise ValueError(f"param must have at least 2 dims for Muon, got shape {shape}")
    second = np.zeros(normuon_state_shape(shape, spec)) if spec.normuon else None
    return MuonState(momentum=np.zeros(shape), second_moment=second, step=0)


def init_adam_state(param: npt.ArrayLike) -> AdamState:
    """Zero moments of ``param``'s shape and ``step = 0``."""
    shape = np.shape(param)
    return AdamState(exp_avg=np.zeros(shape), exp_avg_sq=np.zeros(shape), step=0)


def init_state(param: npt.ArrayLike, spec: MuonSpec, *, use_muon: bool | None = None) -> MuonState | AdamState:
    """`init_muon_state` when ``use_muon`` (default: ``param.ndim >= 2``), else `init_adam_state`.

    Routing embeddings, heads and gains by name is the caller's job (``muonlab.fast``'s partition helper).
    """
    muon = np.ndim(param) >= 2 if use_muon is None else use_muon
    return init_muon_state(param, spec) if muon else init_adam_state(param)
