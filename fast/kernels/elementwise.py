"""Fused elementwise kernels of one optimizer step: momentum (stage 2) and decay + update (stages 6-7).

`fused_momentum` updates the momentum buffer in place and writes the orthogonalizer input ``N`` in one pass
(docs/variants.md 0.1); `fused_apply` applies ``W <- W - decay_factor mask (.) W - lr_update u`` with
``u = update * scale`` in one pass (docs/variants.md 3.2 step 5, 4.3; Moonlight Eq. 3). Arithmetic runs in
float32 (float64 for float64 tensors) and each output rounds once to its tensor's dtype.

Scalars (``beta``, ``lr_update``, ``decay_factor``) may be Python floats or one-element tensors; a tensor is
read inside the kernel from its pointer, so a changed value needs no recompile (torch.compile, CUDA graphs;
modded-nanogpt passes its schedules as 0-D tensors, docs/variants.md 3.3).

Each kernel has a torch twin (``<name>_torch``) with the same signature and semantics.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import triton
import triton.language as tl

from ._common import check_launchable, interpreted, needs_bf16_rounding, round_bf16, scalar_arg

__all__ = ["fused_apply", "fused_apply_torch", "fused_momentum", "fused_momentum_torch"]

Form = Literal["ema", "sum"]
CautiousMode = Literal["off", "ge", "gt"]

_FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_CAUTIOUS = {"off": 0, "ge": 1, "gt": 2}


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 for float64 tensors, float32 otherwise (the kernels' arithmetic dtype)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _block(interpret: bool) -> tuple[int, int]:
    """``(BLOCK, num_warps)``: 1024 elements per program on CUDA, 256 in the interpreter."""
    return (256, 1) if interpret else (1024, 4)


def _scalar(ptr: Any, val: Any, IS_PTR: tl.constexpr, F64: tl.constexpr) -> Any:
    """The scalar argument: loaded from ``ptr`` (a float32 tensor) or the value ``val``, in the compute dtype."""
    s = tl.load(ptr) if IS_PTR else val
    if F64:
        return s.to(tl.float64)
    return s.to(tl.float32)


_scalar_fn = triton.jit(_scalar)


def _momentum_impl(
    buf_ptr: Any,
    grad_ptr: Any,
    n_ptr: Any,
    beta_ptr: Any,
    beta_val: Any,
    omb_val: Any,
    numel: Any,
    BETA_IS_PTR: tl.constexpr,
    EMA: tl.constexpr,
    NESTEROV: tl.constexpr,
    F64: tl.constexpr,
    ROUND_BF16: tl.constexpr,
    BLOCK: tl.constexpr,
) -> None:
    """One block of `fused_momentum`; ``omb_val`` is ``1 - beta`` computed on the host (float ``beta``)."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    inside = offs < numel
    if F64:
        m = tl.load(buf_ptr + offs, mask=inside, other=0.0).to(tl.float64)
        g = tl.load(grad_ptr + offs, mask=inside, other=0.0).to(tl.float64)
    else:
        m = tl.load(buf_ptr + offs, mask=inside, other=0.0).to(tl.float32)
        g = tl.load(grad_ptr + offs, mask=inside, other=0.0).to(tl.float32)
    beta = _scalar_fn(beta_ptr, beta_val, BETA_IS_PTR, F64)
    if EMA:
        # torch.lerp(start, end, w): start + w (end - start) if |w| < 0.5, else end - (end - start)(1 - w).
        omb = 1.0 - beta if BETA_IS_PTR else _scalar_fn(beta_ptr, omb_val, False, F64)
        m_new = tl.where(tl.abs(omb) < 0.5, m + omb * (g - m), g - (g - m) * (1.0 - omb))
        if NESTEROV:
            out = tl.where(tl.abs(beta) < 0.5, g + beta * (m_new - g), m_new - (m_new - g) * (1.0 - beta))
        else:
            out = m_new
    else:
        m_new = m * beta + g
        out = g + beta * m_new if NESTEROV else m_new
    if ROUND_BF16:
        tl.store(buf_ptr + offs, round_bf16(m_new), mask=inside)
        tl.store(n_ptr + offs, round_bf16(out), mask=inside)
    else:
        tl.store(buf_ptr + offs, m_new.to(buf_ptr.dtype.element_ty), mask=inside)
        tl.store(n_ptr + offs, out.to(n_ptr.dtype.element_ty), mask=inside)


_momentum_kernel = triton.jit(_momentum_impl)


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
    beta_ptr, beta_val = scalar_arg(beta, buf.device, "beta", _compute_dtype(buf))
    n = torch.empty_like(buf)
    numel = buf.numel()
    if numel == 0:
        return n
    block, warps = _block(interpreted(_momentum_kernel))
    _momentum_kernel[(triton.cdiv(numel, block),)](
        buf,
        grad.contiguous(),
        n,
        buf if beta_ptr is None else beta_ptr,
        beta_val,
        1.0 - beta_val,
        numel,
        BETA_IS_PTR=beta_ptr is not None,
        EMA=form == "ema",
        NESTEROV=nesterov,
        F64=buf.dtype == torch.float64,
        ROUND_BF16=needs_bf16_rounding(_momentum_kernel, buf.dtype),
        BLOCK=block,
        num_warps=warps,
    )
    return n


def fused_momentum_torch(
    buf: torch.Tensor, grad: torch.Tensor, *, beta: float | torch.Tensor, form: str, nesterov: bool
) -> torch.Tensor:
    """Torch twin of `fused_momentum` (same arguments, same math, several eager ops)."""
    _check_form(form, nesterov)
    _check_pair(buf, grad, ("buf", "grad"))
    beta_ptr, beta_val = scalar_arg(beta, buf.device, "beta", _compute_dtype(buf))
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
    p_ptr: Any,
    u_ptr: Any,
    s_ptr: Any,
    lr_ptr: Any,
    lr_val: Any,
    d_ptr: Any,
    d_val: Any,
    numel: Any,
    rows: Any,
    cols: Any,
    ssb: Any,
    ssm: Any,
    ssn: Any,
    HAS_SCALE: tl.constexpr,
    LR_IS_PTR: tl.constexpr,
    D_IS_PTR: tl.constexpr,
    HAS_DECAY: tl.constexpr,
    CAUTIOUS: tl.constexpr,
    F64: tl.constexpr,
    ROUND_BF16: tl.constexpr,
    BLOCK: tl.constexpr,
) -> None:
    """One block of `fused_apply` over the flat ``[B, rows, cols]`` parameter."""
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
        s = tl.load(s_ptr + bat * ssb + row * ssm + col * ssn, mask=inside, other=0.0)
        u = u * s.to(tl.float64) if F64 else u * s.to(tl.float32)
    lr = _scalar_fn(lr_ptr, lr_val, LR_IS_PTR, F64)
    if HAS_DECAY:
        d = _scalar_fn(d_ptr, d_val, D_IS_PTR, F64)
        if CAUTIOUS == 0:
            w = w - w * d
        else:
            prod = u * w
            keep = prod >= 0.0 if CAUTIOUS == 1 else prod > 0.0
            w = w - w * keep.to(w.dtype) * d
    w = w - u * lr
    if ROUND_BF16:
        tl.store(p_ptr + offs, round_bf16(w), mask=inside)
    else:
        tl.store(p_ptr + offs, w.to(p_ptr.dtype.element_ty), mask=inside)


_apply_kernel = triton.jit(_apply_impl)


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
    lr_ptr, lr_val = scalar_arg(lr_update, param.device, "lr_update", _compute_dtype(param))
    d_ptr, d_val = scalar_arg(decay_factor, param.device, "decay_factor", _compute_dtype(param))
    decay = d_ptr is not None or d_val != 0.0
    if param.dtype == torch.float64 and isinstance(decay_factor, (int, float)):
        decay = float(decay_factor) != 0.0
    numel = param.numel()
    if numel == 0:
        return
    m, n = _matrix_dims(param.shape)
    block, warps = _block(interpreted(_apply_kernel))
    _apply_kernel[(triton.cdiv(numel, block),)](
        param,
        update.contiguous(),
        param if s3 is None else s3,
        param if lr_ptr is None else lr_ptr,
        lr_val,
        param if d_ptr is None else d_ptr,
        d_val,
        numel,
        m,
        n,
        *((0, 0, 0) if s3 is None else s3.stride()),
        HAS_SCALE=s3 is not None,
        LR_IS_PTR=lr_ptr is not None,
        D_IS_PTR=d_ptr is not None,
        HAS_DECAY=decay,
        CAUTIOUS=mode,
        F64=param.dtype == torch.float64,
        ROUND_BF16=needs_bf16_rounding(_apply_kernel, param.dtype),
        BLOCK=block,
        num_warps=warps,
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
    lr_ptr, lr_val = scalar_arg(lr_update, param.device, "lr_update", _compute_dtype(param))
    d_ptr, d_val = scalar_arg(decay_factor, param.device, "decay_factor", _compute_dtype(param))
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
