"""Backend selection: the one place that decides whether a Triton kernel or torch ops run.

`route` answers for a device and a dtype; the step calls it once per stack (`muonlab.fast.pipeline`) and passes
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
import sys
import time
import warnings
from functools import lru_cache
from typing import Literal, get_args

import torch

Backend = Literal["auto", "torch", "triton"]

__all__ = [
    "SLOW_BF16_FACTOR",
    "Backend",
    "SlowComputeDtypeWarning",
    "check_backend",
    "cpu_bf16_slowdown",
    "route",
    "triton_available",
    "warn_if_slow_compute",
]

SLOW_BF16_FACTOR = 2.0
"""A CPU whose bf16 matmul is this many times slower than fp32 has no native bf16 GEMM (AVX2: 8-50x; AVX-512
without AVX512_BF16: about 3x; AVX512_BF16 / AMX: faster than fp32), and gets `warn_if_slow_compute`'s warning."""


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


class SlowComputeDtypeWarning(UserWarning):
    """Newton-Schulz is asked to compute in a dtype this device runs many times slower than float32."""


def cpu_bf16_slowdown(dtype: torch.dtype = torch.bfloat16) -> float:
    """How many times longer a ``dtype`` (bf16, or fp16) matmul takes than a float32 one on this CPU: measured once
    per process and dtype (256 x 256 products, best of 3 each, interleaved; a few ms where the dtype is native,
    about 0.1 s where not). Timed rather than read from CPU flags because the ISA torch dispatches to can be
    capped below the hardware's (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``)."""
    return _slowdown(dtype)  # one cache key per dtype, however it is passed


@lru_cache(maxsize=2)
def _slowdown(dtype: torch.dtype) -> float:
    a32 = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))
    a16 = a32.to(dtype)
    best = {torch.float32: float("inf"), dtype: float("inf")}
    for _ in range(3):
        for x in (a32, a16):
            t0 = time.perf_counter()
            torch.mm(x, x)
            best[x.dtype] = min(best[x.dtype], time.perf_counter() - t0)
    return best[dtype] / max(best[torch.float32], 1e-9)


_warned: set[str] = set()
_HALF = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def warn_if_slow_compute(device: torch.device, compute_dtype: str) -> None:
    """Warn once per process and dtype when a half-precision ``compute_dtype`` (``"bfloat16"``, ``"float16"``) is
    asked of a CPU without a native matmul for it (`cpu_bf16_slowdown` above `SLOW_BF16_FACTOR`), naming the
    slowdown and the override. The spec is kept as asked: a preset's numerics change only when the user says so."""
    if device.type != "cpu" or compute_dtype not in _HALF or compute_dtype in _warned:
        return
    slowdown = cpu_bf16_slowdown(_HALF[compute_dtype])
    if slowdown <= SLOW_BF16_FACTOR:
        return
    _warned.add(compute_dtype)
    warnings.warn(
        f"muonlab.fast: Newton-Schulz computes in {compute_dtype} (compute_dtype={compute_dtype!r}), and a "
        f"{compute_dtype} matmul runs {slowdown:.1f}x slower than float32 on this CPU (no native {compute_dtype} "
        f"matmul); for CPU runs pass compute_dtype='float32', e.g. Muon(params, preset, compute_dtype='float32') "
        f"(docs/fast.md, 'bf16 on a CPU')",
        SlowComputeDtypeWarning,
        stacklevel=_caller_level(),
    )


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside muonlab and torch: the user's line that built the optimizer
    (through ``Optimizer.__init__`` or a direct ``add_param_group``)."""
    inside = (f"{os.sep}muonlab{os.sep}", f"{os.sep}torch{os.sep}")
    frame, level = sys._getframe(2), 2  # 1 would be warn_if_slow_compute itself
    while frame.f_back is not None and any(part in frame.f_code.co_filename for part in inside):
        frame, level = frame.f_back, level + 1
    return level
