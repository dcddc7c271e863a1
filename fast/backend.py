"""Backend selection: the one place that decides whether a Triton kernel or torch ops run.

`route` answers for a device and a dtype; the step calls it once per stack (`muonlab.fast.stack`) and passes
the answer down, so momentum, Newton-Schulz and the apply never decide on their own. The rule:

* ``backend="torch"``: torch ops;
* ``backend="triton"``: the Triton kernels (on CPU tensors only under ``TRITON_INTERPRET=1``);
* ``backend="auto"``: the kernels on CUDA tensors when Triton imports and ``MUONLAB_TRITON=1`` opts in
  (docs/fast.md "Backends" says why they are opt-in), torch ops otherwise;
* float64 never reaches a kernel, whatever ``backend`` says: it takes the torch ops.

The kernel modules (`muonlab.fast.kernels`) import Triton, so the callers import them inside their Triton
branch: the torch path works where Triton is not installed.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from typing import Literal, get_args

import torch

Backend = Literal["auto", "torch", "triton"]

__all__ = ["Backend", "check_backend", "route", "triton_available", "use_triton"]


@lru_cache(maxsize=1)
def triton_available() -> bool:
    """Whether the ``triton`` package can be imported."""
    return importlib.util.find_spec("triton") is not None


def check_backend(backend: object) -> Backend:
    """``backend`` itself if it is one of ``"auto"``, ``"torch"``, ``"triton"``; otherwise `ValueError`."""
    if backend not in get_args(Backend):
        raise ValueError(f"backend: expected one of 'auto', 'torch', 'triton', got {backend!r}")
    return backend  # type: ignore[return-value]


def route(backend: Backend, device: torch.device, dtype: torch.dtype) -> bool:
    """True when tensors of ``dtype`` on ``device`` take the Triton kernels under ``backend`` (rule above)."""
    if dtype == torch.float64 or backend == "torch":
        return False
    if backend == "triton":
        return True
    return device.type == "cuda" and os.environ.get("MUONLAB_TRITON") == "1" and triton_available()


def use_triton(t: torch.Tensor, backend: Backend) -> bool:
    """`route` for ``t``'s device and dtype."""
    return route(backend, t.device, t.dtype)
