"""The fused elementwise kernel of one optimizer step: momentum (stage 2).

`fused_momentum` updates the momentum buffer in place and writes the orthogonalizer input ``N`` in one pass
(docs/variants.md "Momentum (stage 2)"). Arithmetic runs in float32 (float64 for float64 tensors) and each
output rounds once to its tensor's dtype.

The scalar ``beta`` may be a Python float or a one-element tensor; a tensor is
read inside the kernel from its pointer, so a changed value needs no recompile (torch.compile, CUDA graphs;
modded-nanogpt passes its schedules as 0-D tensors, docs/variants.md 3.3).

The kernel has a torch twin (`fused_momentum_torch`) with the same signature and semantics.

Launch table: `momentum_table` holds the constexprs per dtype pair, `BLOCKS` the block shape per device
family; the wrapper launches nothing else, and `variants` lists the compiled forms for the ahead-of-time
check. The momentum form, Nesterov and whether ``beta`` is a tensor are runtime arguments (both branches are
evaluated and one is selected: the kernel is bound by memory), so one compiled variant per dtype pair serves
every optimizer spec. float64 tensors compile (float64 arithmetic).

Runtime flags are passed as ``int32`` 0/1 (`_FLAGS`, tested ``!= 0`` in the kernels) and are never
specialized, not as Python bools: triton 3.7's interpreter rejects a bool argument (it builds an ``int1``
handle from 32-bit numpy data), and an unspecialized int keeps one compiled variant whatever the flags.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Literal

import torch
import triton
import triton.language as tl

from muonlab.fast.state import wide_dtype  # the arithmetic dtype: float64 for float64, else float32

from ._common import (
    Family,
    Variant,
    check_launchable,
    device_family,
    round_bf16,
    scalar_arg,
    triton_type,
)

__all__ = [
    "BLOCKS",
    "fused_momentum",
    "fused_momentum_torch",
    "momentum_table",
    "supports",
    "variants",
]

Form = Literal["ema", "sum"]

_FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def supports(dtype: torch.dtype) -> bool:
    """Whether `fused_momentum` takes tensors of ``dtype`` (float32, bfloat16, float16, float64)."""
    return dtype in _FLOATS


BLOCKS: Mapping[Family, tuple[int, int, int]] = {
    "interpret": (256, 1, 1),
    "sm80": (1024, 4, 1),
    "sm90": (1024, 4, 1),
}
"""``(BLOCK, num_warps, num_stages)`` per family: 1024 elements per program (8 per thread) on CUDA, 256 in the
interpreter. One pass, no loop, so ``num_stages`` has nothing to pipeline."""


@cache
def _dummy(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A one-element tensor passed where a scalar or scale pointer is absent (never read: its load is masked off)."""
    return torch.zeros(1, dtype=dtype, device=device)


def _momentum_impl(
    buf_ptr: tl.tensor,
    grad_ptr: tl.tensor,
    n_ptr: tl.tensor,
    beta_ptr: tl.tensor,
    beta_val: tl.tensor,
    omb_val: tl.tensor,
    numel: tl.tensor,
    beta_is_ptr: tl.tensor,
    ema_flag: tl.tensor,
    nesterov_flag: tl.tensor,
    F64: tl.constexpr,
    ROUND_BF16: tl.constexpr,
    BLOCK: tl.constexpr,
) -> None:
    """One block of `fused_momentum`. ``beta`` is read from ``beta_ptr`` (compute dtype) when ``beta_is_ptr``,
    else it is ``beta_val`` with ``omb_val = 1 - beta`` computed on the host. ``beta_is_ptr``, ``ema_flag`` and
    ``nesterov_flag`` are runtime int32 flags (0 or 1): both forms are evaluated and one selected (an
    elementwise kernel is bound by memory, and one compiled variant serves every form)."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    inside = offs < numel
    if F64:
        m = tl.load(buf_ptr + offs, mask=inside, other=0.0).to(tl.float64)
        g = tl.load(grad_ptr + offs, mask=inside, other=0.0).to(tl.float64)
    else:
        m = tl.load(buf_ptr + offs, mask=inside, other=0.0).to(tl.float32)
        g = tl.load(grad_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    ema = ema_flag != 0
    nesterov = nesterov_flag != 0
    from_ptr = beta_is_ptr != 0
    beta = tl.load(beta_ptr, mask=from_ptr, other=beta_val)
    omb = tl.where(from_ptr, 1.0 - beta, omb_val)
    # torch.lerp(start, end, w): start + w (end - start) if |w| < 0.5, else end - (end - start)(1 - w).
    m_ema = tl.where(tl.abs(omb) < 0.5, m + omb * (g - m), g - (g - m) * (1.0 - omb))
    m_new = tl.where(ema, m_ema, m * beta + g)
    n_ema = tl.where(tl.abs(beta) < 0.5, g + beta * (m_new - g), m_new - (m_new - g) * (1.0 - beta))
    out = tl.where(nesterov, tl.where(ema, n_ema, g + beta * m_new), m_new)
    if ROUND_BF16:
        tl.store(buf_ptr + offs, round_bf16(m_new), mask=inside)
        tl.store(n_ptr + offs, round_bf16(out), mask=inside)
    else:
        tl.store(buf_ptr + offs, m_new.to(buf_ptr.dtype.element_ty), mask=inside)
        tl.store(n_ptr + offs, out.to(n_ptr.dtype.element_ty), mask=inside)


_FLAGS: Mapping[str, tuple[str, ...]] = {
    "momentum": ("beta_is_ptr", "ema_flag", "nesterov_flag"),
}
"""Each kernel's runtime flags: ``int32`` 0 or 1, never specialized (a 1 would otherwise become a constant)."""

_momentum_kernel = triton.jit(_momentum_impl, do_not_specialize=list(_FLAGS["momentum"]))

MomentumKey = tuple[torch.dtype, torch.dtype]
"""``(buf dtype, grad dtype)``: what selects a variant of the momentum kernel."""


@cache
def momentum_table(family: Family) -> Mapping[MomentumKey, Mapping[str, int | bool]]:
    """Every launch `fused_momentum` can make on ``family``: its constexprs per ``(buf, grad)`` dtype pair
    (``n`` has ``buf``'s dtype, a tensor ``beta`` the compute dtype; the form, Nesterov and the kind of ``beta``
    are runtime arguments). Block shape: `BLOCKS`."""
    block = BLOCKS[family][0]
    return {
        (buf, grad): {
            "F64": buf == torch.float64,
            "ROUND_BF16": family == "interpret" and buf == torch.bfloat16,
            "BLOCK": block,
        }
        for buf in _FLOATS
        for grad in _FLOATS
    }


def _check_form(form: object, nesterov: object) -> None:
    if form not in ("ema", "sum"):
        raise ValueError(f"form: expected 'ema' or 'sum', got {form!r}")
    if not isinstance(nesterov, bool):
        raise TypeError(f"nesterov: expected a bool, got {type(nesterov).__name__}")


def _check_pair(first: torch.Tensor, second: torch.Tensor, names: tuple[str, str]) -> None:
    for t, name in zip((first, second), names, strict=True):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _FLOATS:
            raise TypeError(f"{name}: expected a floating tensor, got {t.dtype}")
    if first.shape != second.shape:
        raise ValueError(f"{names[1]}: expected shape {tuple(first.shape)} (as {names[0]}), got {tuple(second.shape)}")
    if first.device != second.device:
        raise ValueError(f"{names[1]}: expected device {first.device} (as {names[0]}), got {second.device}")
    if not first.is_contiguous():
        raise ValueError(f"{names[0]}: the fused kernels write it in place and need it contiguous")


def fused_momentum(
    buf: torch.Tensor, grad: torch.Tensor, *, beta: float | torch.Tensor, form: str, nesterov: bool
) -> torch.Tensor:
    """Momentum in one pass (docs/variants.md 0.1): updates ``buf`` in place and returns ``N`` (a new tensor
    of ``buf.dtype``); ``grad`` is only read.

    * ``"ema"``: ``M <- beta M + (1-beta) G``; ``N = (1-beta) G + beta M`` (Nesterov) or ``N = M``;
      evaluated as torch's ``M.lerp_(G, 1-beta)`` and ``G.lerp(M, beta)``.
    * ``"sum"``: ``M <- beta M + G``; ``N = G + beta M`` (Nesterov) or ``N = M``.
    """
    _check_form(form, nesterov)
    _check_pair(buf, grad, ("buf", "grad"))
    check_launchable(_momentum_kernel, buf, "fused_momentum")
    cdt = wide_dtype(buf.dtype)
    beta_ptr, beta_val = scalar_arg(beta, buf.device, "beta", cdt)
    n = torch.empty_like(buf)
    numel = buf.numel()
    if numel == 0:
        return n
    family = device_family(_momentum_kernel, buf.device)
    constexprs = momentum_table(family)[(buf.dtype, grad.dtype)]
    block, warps, stages = BLOCKS[family]
    _momentum_kernel[(triton.cdiv(numel, block),)](
        buf,
        grad.contiguous(),
        n,
        _dummy(buf.device, cdt) if beta_ptr is None else beta_ptr,
        beta_val,
        1.0 - beta_val,
        numel,
        int(beta_ptr is not None),
        int(form == "ema"),
        int(nesterov),
        **constexprs,
        num_warps=warps,
        num_stages=stages,
    )
    return n


def fused_momentum_torch(
    buf: torch.Tensor, grad: torch.Tensor, *, beta: float | torch.Tensor, form: str, nesterov: bool
) -> torch.Tensor:
    """Torch twin of `fused_momentum` (same arguments, same math, several eager ops)."""
    _check_form(form, nesterov)
    _check_pair(buf, grad, ("buf", "grad"))
    beta_ptr, beta_val = scalar_arg(beta, buf.device, "beta", wide_dtype(buf.dtype))
    work = buf if buf.dtype in (torch.float32, torch.float64) else buf.float()
    b: float | torch.Tensor = beta_val if beta_ptr is None else beta_ptr.to(work.dtype)
    g = grad.to(work.dtype)
    if form == "ema":
        work.lerp_(g, 1.0 - b)
        out = g.lerp(work, b) if nesterov else work.clone()
    else:
        work.mul_(b).add_(g)
        out = g + b * work if nesterov else work.clone()
    if work is not buf:
        buf.copy_(work)
    return out.to(buf.dtype)


def variants(family: Family) -> tuple[Variant, ...]:
    """The compiled forms of the momentum kernel on ``family``: every `momentum_table` entry (``numel`` as
    ``i32``: tensors under 2**31 elements)."""
    _, warps, stages = BLOCKS[family]
    out: list[Variant] = []
    for (buf, grad), constexprs in momentum_table(family).items():
        cdt = "*" + triton_type(wide_dtype(buf))
        sig = {
            "buf_ptr": "*" + triton_type(buf),
            "grad_ptr": "*" + triton_type(grad),
            "n_ptr": "*" + triton_type(buf),
            "beta_ptr": cdt,
            "beta_val": "fp32",
            "omb_val": "fp32",
            "numel": "i32",
            **dict.fromkeys(_FLAGS["momentum"], "i32"),
            **dict.fromkeys(constexprs, "constexpr"),
        }
        name = f"fused_momentum-buf_{triton_type(buf)}-grad_{triton_type(grad)}"
        out.append(Variant(name, _momentum_kernel, sig, constexprs, warps, stages))
    return tuple(out)
