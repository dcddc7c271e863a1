"""Fused elementwise kernels of one optimizer step: momentum (stage 2) and decay + update (stages 6-7).

`fused_momentum` updates the momentum buffer in place and writes the orthogonalizer input ``N`` in one pass
(docs/variants.md 0.1); `fused_apply` applies ``W <- W - decay_factor mask (.) W - lr_update u`` with
``u = update * scale`` in one pass (docs/variants.md 3.2 step 5, 4.3; Moonlight Eq. 3). Arithmetic runs in
float32 (float64 for float64 tensors) and each output rounds once to its tensor's dtype.

Scalars (``beta``, ``lr_update``, ``decay_factor``) may be Python floats or one-element tensors; a tensor is
read inside the kernel from its pointer, so a changed value needs no recompile (torch.compile, CUDA graphs;
modded-nanogpt passes its schedules as 0-D tensors, docs/variants.md 3.3).

Each kernel has a torch twin (``<name>_torch``) with the same signature and semantics.

Launch table: `momentum_table` / `apply_table` hold the constexprs per dtype pair, `BLOCKS` the block shape per
device family; the wrappers launch nothing else, and `variants` lists the compiled forms for the ahead-of-time
check. The momentum form, Nesterov, the cautious mode, decay on/off and whether each scalar is a tensor are
runtime arguments (both branches are evaluated and one is selected: the kernels are bound by memory), so one
compiled variant per dtype pair serves every optimizer spec. float64 tensors compile (float64 arithmetic).

Runtime flags are passed as ``int32`` 0/1 (`_FLAGS`, tested ``!= 0`` in the kernels) and are never
specialized, not as Python bools: triton 3.7's interpreter rejects a bool argument (it builds an ``int1``
handle from 32-bit numpy data), and an unspecialized int keeps one compiled variant whatever the flags.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Literal, cast

import torch
import triton
import triton.language as tl

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
    "apply_table",
    "fused_apply",
    "fused_apply_torch",
    "fused_momentum",
    "fused_momentum_torch",
    "momentum_table",
    "supports",
    "variants",
]

Form = Literal["ema", "sum"]
CautiousMode = Literal["off", "ge", "gt"]

_FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_CAUTIOUS = {"off": 0, "ge": 1, "gt": 2}


def supports(dtype: torch.dtype) -> bool:
    """Whether `fused_momentum` / `fused_apply` take tensors of ``dtype`` (float32, bfloat16, float16, float64)."""
    return dtype in _FLOATS


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 tensors, float32 otherwise (the kernels' arithmetic dtype)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


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
    "apply": ("lr_is_ptr", "d_is_ptr", "has_decay", "mask_off", "mask_ge"),
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
    cdt = _compute_dtype(buf.dtype)
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
    beta_ptr, beta_val = scalar_arg(beta, buf.device, "beta", _compute_dtype(buf.dtype))
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


def _apply_impl(
    p_ptr: tl.tensor,
    u_ptr: tl.tensor,
    s_ptr: tl.tensor,
    lr_ptr: tl.tensor,
    lr_val: tl.tensor,
    d_ptr: tl.tensor,
    d_val: tl.tensor,
    numel: tl.tensor,
    rows: tl.tensor,
    cols: tl.tensor,
    ssb: tl.tensor,
    ssm: tl.tensor,
    ssn: tl.tensor,
    lr_is_ptr: tl.tensor,
    d_is_ptr: tl.tensor,
    has_decay: tl.tensor,
    mask_off: tl.tensor,
    mask_ge: tl.tensor,
    HAS_SCALE: tl.constexpr,
    F64: tl.constexpr,
    ROUND_BF16: tl.constexpr,
    BLOCK: tl.constexpr,
) -> None:
    """One block of `fused_apply` over the flat ``[B, rows, cols]`` parameter. ``lr`` / ``d`` are read from
    their pointers (compute dtype) when ``*_is_ptr``, else they are the float arguments. The cautious mask
    keeps ``u w > 0``, also ``u w = 0`` when ``mask_ge``, and everything when ``mask_off``; without
    ``has_decay`` the decay term is not evaluated into ``W`` at all (an infinite weight stays infinite). The
    five flags are runtime int32 (0 or 1)."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    inside = offs < numel
    if F64:
        w = tl.load(p_ptr + offs, mask=inside, other=0.0).to(tl.float64)
        u = tl.load(u_ptr + offs, mask=inside, other=0.0).to(tl.float64)
    else:
        w = tl.load(p_ptr + offs, mask=inside, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    if HAS_SCALE:
        col = offs % cols
        row = (offs // cols) % rows
        bat = offs // (cols * rows)
        u = u * tl.load(s_ptr + bat * ssb + row * ssm + col * ssn, mask=inside, other=0.0)
    lr = tl.load(lr_ptr, mask=lr_is_ptr != 0, other=lr_val)
    d = tl.load(d_ptr, mask=d_is_ptr != 0, other=d_val)
    prod = u * w
    keep = (mask_off != 0) | (prod > 0.0) | ((mask_ge != 0) & (prod == 0.0))
    w = tl.where(has_decay != 0, w - w * keep.to(w.dtype) * d, w)
    w = w - u * lr
    if ROUND_BF16:
        tl.store(p_ptr + offs, round_bf16(w), mask=inside)
    else:
        tl.store(p_ptr + offs, w.to(p_ptr.dtype.element_ty), mask=inside)


# The scale's index arithmetic is not specialized (a unit or zero stride would make another variant).
_apply_kernel = triton.jit(_apply_impl, do_not_specialize=["rows", "cols", "ssb", "ssm", "ssn", *_FLAGS["apply"]])

ApplyKey = tuple[torch.dtype, torch.dtype, bool]
"""``(param dtype, update dtype, has scale)``: what selects a variant of the apply kernel."""


@cache
def apply_table(family: Family) -> Mapping[ApplyKey, Mapping[str, int | bool]]:
    """Every launch `fused_apply` can make on ``family``: its constexprs per ``(param, update, has scale)``
    (scalars, the scale and the dummies for absent ones are in the compute dtype; decay, the cautious mode and
    the kind of each scalar are runtime arguments). Block shape: `BLOCKS`."""
    block = BLOCKS[family][0]
    return {
        (param, update, has_scale): {
            "HAS_SCALE": has_scale,
            "F64": param == torch.float64,
            "ROUND_BF16": family == "interpret" and param == torch.bfloat16,
            "BLOCK": block,
        }
        for param in _FLOATS
        for update in _FLOATS
        for has_scale in (False, True)
    }


def _check_cautious(cautious: object) -> int:
    if cautious not in _CAUTIOUS:
        raise ValueError(f"cautious: expected 'off', 'ge' or 'gt', got {cautious!r}")
    return _CAUTIOUS[str(cautious)]


def _matrix_dims(shape: torch.Size) -> tuple[int, int]:
    """``(m, n)`` of ``[..., m, n]``; a vector is one row, a scalar one element."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, int(shape[0])
    return int(shape[-2]), int(shape[-1])


def _check_scale(scale: torch.Tensor | None, param: torch.Tensor) -> torch.Tensor | None:
    """``scale`` broadcast to ``[B, m, n]`` (a stride-0 view where it can be one), or ``None``."""
    if scale is None:
        return None
    if not isinstance(scale, torch.Tensor):
        raise TypeError(f"scale: expected a torch.Tensor or None, got {type(scale).__name__}")
    if scale.dtype not in _FLOATS:
        raise TypeError(f"scale: expected a floating tensor, got {scale.dtype}")
    if scale.device != param.device:
        raise ValueError(f"scale: expected device {param.device}, got {scale.device}")
    m, n = _matrix_dims(param.shape)
    per_row = scale.ndim >= 1 and scale.shape[-1] == 1
    per_col = scale.ndim >= 2 and scale.shape[-2] == 1
    if scale.ndim > param.ndim or not (per_row or per_col):
        raise ValueError(
            f"scale: expected a per-row [..., m, 1] or per-column [..., 1, n] shape broadcastable to the "
            f"parameter's {tuple(param.shape)}, got {tuple(scale.shape)}"
        )
    try:
        full = scale.expand(param.shape)
    except RuntimeError as err:
        raise ValueError(f"scale: shape {tuple(scale.shape)} does not broadcast to {tuple(param.shape)}") from err
    batch = param.numel() // (m * n) if m * n else 0
    return full.reshape(batch, m, n)


def fused_apply(
    param: torch.Tensor,
    update: torch.Tensor,
    *,
    lr_update: float | torch.Tensor,
    decay_factor: float | torch.Tensor,
    cautious: str,
    scale: torch.Tensor | None = None,
) -> None:
    """Stages 6-7 in one pass, in place on ``param`` (``[..., m, n]``, contiguous):
    ``u = update * scale``, ``W <- W - decay_factor mask (.) W - lr_update u`` with ``mask = 1`` (``"off"``),
    ``1[u W >= 0]`` (``"ge"``) or ``1[u W > 0]`` (``"gt"``) on the pre-update ``W`` (docs/variants.md 3.2
    step 5, 4.3). ``scale`` is per row (``[..., m, 1]``) or per column (``[..., 1, n]``); ``None`` is 1.
    Computed in float32 (float64 for float64 params) and rounded once into ``param``. A Python-float
    ``decay_factor`` of 0 skips the decay term.
    """
    mode = _check_cautious(cautious)
    _check_pair(param, update, ("param", "update"))
    s3 = _check_scale(scale, param)
    check_launchable(_apply_kernel, param, "fused_apply")
    cdt = _compute_dtype(param.dtype)
    lr_ptr, lr_val = scalar_arg(lr_update, param.device, "lr_update", cdt)
    d_ptr, d_val = scalar_arg(decay_factor, param.device, "decay_factor", cdt)
    decay = d_ptr is not None or d_val != 0.0
    if param.dtype == torch.float64 and isinstance(decay_factor, (int, float)):
        decay = float(decay_factor) != 0.0
    numel = param.numel()
    if numel == 0:
        return
    m, n = _matrix_dims(param.shape)
    family = device_family(_apply_kernel, param.device)
    constexprs = apply_table(family)[(param.dtype, update.dtype, s3 is not None)]
    block, warps, stages = BLOCKS[family]
    dummy = _dummy(param.device, cdt)
    if s3 is not None and s3.dtype != cdt:
        # Cast the small per-row / per-column tensor, then broadcast it (a stride-0 view, never materialized).
        s3 = _check_scale(cast(torch.Tensor, scale).to(cdt), param)
    _apply_kernel[(triton.cdiv(numel, block),)](
        param,
        update.contiguous(),
        dummy if s3 is None else s3,
        dummy if lr_ptr is None else lr_ptr,
        lr_val,
        dummy if d_ptr is None else d_ptr,
        d_val,
        numel,
        m,
        n,
        *((0, 0, 0) if s3 is None else s3.stride()),
        int(lr_ptr is not None),
        int(d_ptr is not None),
        int(decay),
        int(mode == 0),
        int(mode == 1),
        **constexprs,
        num_warps=warps,
        num_stages=stages,
    )


def fused_apply_torch(
    param: torch.Tensor,
    update: torch.Tensor,
    *,
    lr_update: float | torch.Tensor,
    decay_factor: float | torch.Tensor,
    cautious: str,
    scale: torch.Tensor | None = None,
) -> None:
    """Torch twin of `fused_apply` (same arguments, same math, several eager ops)."""
    mode = _check_cautious(cautious)
    _check_pair(param, update, ("param", "update"))
    s3 = _check_scale(scale, param)
    lr_ptr, lr_val = scalar_arg(lr_update, param.device, "lr_update", _compute_dtype(param.dtype))
    d_ptr, d_val = scalar_arg(decay_factor, param.device, "decay_factor", _compute_dtype(param.dtype))
    work = param if param.dtype in (torch.float32, torch.float64) else param.float()
    u = update.to(work.dtype)
    if s3 is not None:
        u = u * s3.to(work.dtype).reshape(u.shape)
    lr: float | torch.Tensor = lr_val if lr_ptr is None else lr_ptr.to(work.dtype)
    if isinstance(decay_factor, torch.Tensor) or d_val != 0.0:
        d: float | torch.Tensor = d_val if d_ptr is None else d_ptr.to(work.dtype)
        if mode == 0:
            work.sub_(work * d)
        else:
            prod = u * work
            keep = prod >= 0 if mode == 1 else prod > 0
            work.sub_(work * keep.to(work.dtype) * d)
    work.sub_(u * lr)
    if work is not param:
        param.copy_(work)


def variants(family: Family) -> tuple[Variant, ...]:
    """The compiled forms of both elementwise kernels on ``family``: every `momentum_table` and `apply_table`
    entry (``numel`` as ``i32``: tensors under 2**31 elements)."""
    _, warps, stages = BLOCKS[family]
    out: list[Variant] = []
    for (buf, grad), constexprs in momentum_table(family).items():
        cdt = "*" + triton_type(_compute_dtype(buf))
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
    for (param, update, has_scale), constexprs in apply_table(family).items():
        cdt = "*" + triton_type(_compute_dtype(param))
        sig = {
            "p_ptr": "*" + triton_type(param),
            "u_ptr": "*" + triton_type(update),
            "s_ptr": cdt,
            "lr_ptr": cdt,
            "lr_val": "fp32",
            "d_ptr": cdt,
            "d_val": "fp32",
            **dict.fromkeys(("numel", "rows", "cols", "ssb", "ssm", "ssn"), "i32"),
            **dict.fromkeys(_FLAGS["apply"], "i32"),
            **dict.fromkeys(constexprs, "constexpr"),
        }
        name = f"fused_apply-param_{triton_type(param)}-update_{triton_type(update)}{'-scale' if has_scale else ''}"
        out.append(Variant(name, _apply_kernel, sig, constexprs, warps, stages))
    return tuple(out)
