"""Helpers shared by the Triton kernel modules: launch checks, scalar arguments and the launch tables.

A kernel runs on CUDA tensors, or on CPU tensors when Triton's interpreter is on (``TRITON_INTERPRET=1``
must be set before the kernel modules are imported: `triton.jit` reads it when a kernel is defined).

Launch tables: every kernel module states, as data, each variant its launch wrappers can launch (pointer
dtypes, constexpr flags) and the tuning each one gets per *family* of devices (block sizes, ``num_warps``,
``num_stages``): `Variant`. The wrappers look their launch up in that table (a combination it lacks is refused
before anything runs), and ``conformance/kernels/test_kern_compile.py`` compiles every entry ahead of time
for sm_80 and sm_90, so the check and production read one source.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import torch
import triton
import triton.language as tl

__all__ = [
    "FAMILY_ARCH",
    "SMEM_BUDGET",
    "Family",
    "Variant",
    "capability_family",
    "check_launchable",
    "device_family",
    "interpreted",
    "interpreter_loop_problem",
    "needs_bf16_rounding",
    "round_bf16",
    "running_interpreter_loop_problem",
    "scalar_arg",
    "triton_type",
]

Family = Literal["interpret", "sm80", "sm90"]
"""Which tuning a launch gets: the interpreter (small blocks), Hopper/datacenter Blackwell (``sm90``: compute
capability 9.x and 10.x, 227 KiB of shared memory per block) or every other CUDA device (``sm80``: A100 and
the 99 KiB parts, sm_86 / sm_89 / sm_120)."""

FAMILY_ARCH: Mapping[Family, int] = {"sm80": 80, "sm90": 90}
"""The compute capability each CUDA family is compiled for by the ahead-of-time check."""

SMEM_BUDGET: Mapping[Family, int] = {"sm80": 101376, "sm90": 232448}
"""Shared memory per block a family's configs may use: the smallest opt-in limit
(``cudaDevAttrMaxSharedMemoryPerBlockOptin``) among its devices. sm_80 itself allows 166912 B (163 KiB), but
the same configs run on sm_86 / sm_89 / sm_120 (101376 B, 99 KiB); sm_90 and sm_100 allow 232448 B (227 KiB)."""

_DTYPE_NAMES: Mapping[torch.dtype, str] = {
    torch.float32: "fp32",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float64: "fp64",
}


def triton_type(dtype: torch.dtype) -> str:
    """Triton's name of the element type of a tensor of ``dtype`` (``"fp32"``, ``"bf16"``, ...)."""
    return _DTYPE_NAMES[dtype]


@dataclass(frozen=True)
class Variant:
    """One compiled form of a kernel: everything `triton.compile` needs to build it ahead of time.

    ``signature`` maps every parameter of ``kernel`` (in order) to its Triton type: ``"*bf16"`` for a pointer,
    ``"i32"`` / ``"fp32"`` for a scalar, ``"constexpr"`` for a compile-time value given in
    ``constexprs`` (which also holds integer arguments Triton specializes to constants, such as unit strides).
    """

    name: str
    kernel: Any
    signature: Mapping[str, str]
    constexprs: Mapping[str, int | bool]
    num_warps: int
    num_stages: int


def interpreted(kernel: Any) -> bool:
    """Whether ``kernel`` (a `triton.jit` function) was defined under ``TRITON_INTERPRET=1``."""
    return type(kernel).__name__ == "InterpretedFunction"


def capability_family(capability: tuple[int, int]) -> Family:
    """The tuning family of a CUDA device of compute ``capability`` ``(major, minor)``: ``"sm90"`` for 9.x and
    10.x (227 KiB of shared memory per block), ``"sm80"`` for every other (its configs fit 99 KiB)."""
    return "sm90" if capability[0] in (9, 10) else "sm80"


@lru_cache(maxsize=64)
def _cuda_family(index: int) -> Family:
    return capability_family(torch.cuda.get_device_capability(index))


def device_family(kernel: Any, device: torch.device) -> Family:
    """The tuning family of a launch of ``kernel`` on ``device`` (``"interpret"`` under the interpreter)."""
    if interpreted(kernel):
        return "interpret"
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _cuda_family(index)


def _minor(version: str) -> tuple[int, int]:
    """``(major, minor)`` of a version string (``"2.4.0rc1"`` -> ``(2, 4)``)."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        raise ValueError(f"version: expected 'MAJOR.MINOR...', got {version!r}")
    return int(match.group(1)), int(match.group(2))


def interpreter_loop_problem(triton_version: str, numpy_version: str) -> str | None:
    """Why Triton's interpreter cannot run a kernel with a runtime loop bound (``range(0, K, BK)``) under
    these versions, or None. triton 3.6's interpreter takes ``int()`` of the bound's one-element array, which
    numpy 2.4 refuses ("only 0-dimensional arrays can be converted to Python scalars"); triton 3.7 squeezes it
    first. Compiled kernels are not affected."""
    if _minor(triton_version) < (3, 7) and _minor(numpy_version) >= (2, 4):
        return (
            f"triton {triton_version}'s interpreter (TRITON_INTERPRET=1) cannot run this kernel with numpy "
            f"{numpy_version}: it needs numpy < 2.4 or triton >= 3.7 (compiled kernels on CUDA are not affected)"
        )
    return None


def running_interpreter_loop_problem() -> str | None:
    """`interpreter_loop_problem` for the triton and numpy this process runs."""
    return interpreter_loop_problem(triton.__version__, np.__version__)


def check_launchable(kernel: Any, t: torch.Tensor, name: str, *, runtime_loop: bool = False) -> None:
    """`RuntimeError` unless ``t`` is on CUDA or ``kernel`` runs in the interpreter (CPU tensors), and, for a
    kernel with a ``runtime_loop``, unless the interpreter can run it (`interpreter_loop_problem`)."""
    if t.device.type == "cuda":
        return
    if interpreted(kernel) and t.device.type == "cpu":
        problem = running_interpreter_loop_problem() if runtime_loop else None
        if problem is not None:
            raise RuntimeError(f"{name}: {problem}")
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


def _round_bf16_impl(x: tl.tensor) -> tl.tensor:
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
