"""Backend selection: the torch path by default, the Triton kernels when asked for.

``backend="auto"`` uses the Triton kernels on CUDA only when ``MUONLAB_TRITON=1`` is set: the kernels are
verified against their torch twins under ``TRITON_INTERPRET=1`` in CI, but have not yet been run compiled on a
GPU, so they stay opt-in until ``nox -s gpu`` has passed on one (docs/fast.md). ``backend="triton"`` always
uses them.

The kernels live in `muonlab.fast.kernels` and are imported lazily, only inside the Triton branch, so the
torch path works on machines without Triton (or before a kernel exists).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from functools import lru_cache
from types import ModuleType
from typing import Literal, get_args

import torch

Backend = Literal["auto", "torch", "triton"]

__all__ = ["Backend", "check_backend", "kernel_module", "triton_available", "use_triton"]


@lru_cache(maxsize=1)
def triton_available() -> bool:
    """Whether the ``triton`` package can be imported."""
    return importlib.util.find_spec("triton") is not None


def check_backend(backend: object) -> Backend:
    """``backend`` itself if it is one of ``"auto"``, ``"torch"``, ``"triton"``; otherwise `ValueError`."""
    if backend not in get_args(Backend):
        raise ValueError(f"backend: expected one of 'auto', 'torch', 'triton', got {backend!r}")
    return backend  # type: ignore[return-value]


def use_triton(t: torch.Tensor, backend: Backend) -> bool:
    """True when ``backend == "triton"``, or ``backend == "auto"``, ``t`` is on CUDA, Triton imports and
    ``MUONLAB_TRITON=1`` opts in to the (not yet GPU-verified) kernels."""
    if backend == "triton":
        return True
    if backend == "torch":
        return False
    return bool(t.is_cuda) and os.environ.get("MUONLAB_TRITON") == "1" and triton_available()


def kernel_module(name: str) -> ModuleType:
    """``muonlab.fast.kernels.<name>``, imported on first use (only the Triton branch calls this)."""
    return importlib.import_module(f"{__package__}.kernels.{name}")
