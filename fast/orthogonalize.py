"""The orthogonalization operator ``Orth`` (stage 3; its steps and equations: docs/variants.md "Orthogonalization
(stage 3)") on torch tensors.

Mirrors `muonlab.reference.orthogonalize` function for function; the differences are the dtype (the
iteration runs in ``spec.compute_dtype``: ``"bfloat16"`` casts like KellerJordan/Muon
``zeropower_via_newtonschulz5``) and batching (a stack of equal-shape matrices is one batched
``baddbmm`` call). `ORTHOGONALIZERS` maps each ``spec.orthogonalizer`` to its stack function.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import torch

from muonlab.contract import CoefficientSet, MuonSpec, check_ndim, matrix_view_shape, resolve_spec
from muonlab.contract.spec import ComputeDtype, Magnitude, NsEpsMode, Orthogonalizer, Prescale, lookup

from .backend import Backend, check_backend, route
from .state import wide_dtype

__all__ = [
    "MAGNITUDES",
    "NORM_GUARDS",
    "ORTHOGONALIZERS",
    "PRESCALES",
    "StackFn",
    "as_matrices",
    "compute_dtype",
    "contiguous_as",
    "gram_newton_schulz_stack",
    "newton_schulz",
    "newton_schulz_stack",
    "normalize_frobenius",
    "normalized_wide",
    "orthogonalize",
    "orthogonalizer",
    "polar_factor",
]


def tf32(x: torch.Tensor) -> torch.Tensor:
    """``x`` (float32) rounded to TF32 (8-bit exponent, 10-bit mantissa), round to nearest with ties away from
    zero, the conversion (``cvt.rna.tf32.f32``) a TF32 tensor-core product applies to its operands; the
    products then accumulate in float32. A new tensor, stored as float32; finite inputs only stay finite."""
    bits = x.contiguous().view(torch.int32)
    return ((bits + 0x1000) & ~0x1FFF).view(torch.float32)  # add half an ulp of the 13 dropped bits, drop them


Operands = Callable[[torch.Tensor], torch.Tensor] | None
"""What a product does to its operands first: None (nothing), or `tf32`."""

_DTYPES: dict[ComputeDtype, tuple[torch.dtype, Operands]] = {
    "bfloat16": (torch.bfloat16, None),
    "float16": (torch.float16, None),
    "tfloat32": (torch.float32, tf32),  # stored and accumulated in float32, operands rounded
    "float32": (torch.float32, None),
    "float64": (torch.float64, None),
}


def compute_dtype(spec: MuonSpec) -> torch.dtype:
    """The torch dtype of ``spec.compute_dtype`` (float32 for ``"tfloat32"``)."""
    return lookup(_DTYPES, spec.compute_dtype, "compute_dtype")[0]


def as_matrices(
    x: torch.Tensor, spec: MuonSpec, name: str = "x"
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """View ``x`` as ``[B, m, n]`` (the matrices of `matrix_view_shape`) and a function restoring ``x.shape``.

    Unlike the reference this is a view when ``x`` is contiguous (no copy, no dtype change).
    """
    view = matrix_view_shape(x.shape, spec, name)
    batch = math.prod(view[:-2])
    original = tuple(x.shape)

    def restore(y: torch.Tensor) -> torch.Tensor:
        return y.reshape(original)

    return x.reshape(batch, view[-2], view[-1]), restore


def contiguous_as(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` itself when it is contiguous and of ``dtype``, else a contiguous copy in ``dtype`` (one pass)."""
    if x.dtype == dtype and x.is_contiguous():
        return x
    return torch.empty(x.shape, dtype=dtype, device=x.device).copy_(x)


NORM_GUARDS: dict[NsEpsMode, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "add": lambda norm, eps: norm.add_(eps),
    "clamp": lambda norm, eps: norm.clamp_(min=eps),
    "none": lambda norm, eps: norm,  # NeMo normalize_in_double: unguarded, 0 / 0 = NaN by design
}
"""``spec.eps_mode`` -> ``(s ||X||, eps) -> denominator`` (in place) of the norm prescales
(`muonlab.reference.orthogonalize.NORM_GUARDS`)."""


def normalize_frobenius(
    x: torch.Tensor,
    norm_scale: float,
    eps: float,
    eps_mode: NsEpsMode,
    dtype: torch.dtype | None = None,
    *,
    overwrite: bool = False,
) -> torch.Tensor:
    """``X / guard(s ||X||_F, eps)`` per matrix (`NORM_GUARDS`), computed in ``x.dtype`` and rounded once to
    ``dtype`` (default ``x.dtype``), returned contiguous. The norm of a bf16 tensor is accumulated in fp32 and
    rounded to bf16, as in every source; unguarded (``"none"``) it is reduced in float64 and rounded to
    ``x.dtype``, as NeMo's ``normalize_in_double`` (a sum of squares below fp32's range stays nonzero).
    ``overwrite`` lets the division run in place in ``x`` (same result; ``x`` is then garbage to the caller)."""
    wide = torch.float64 if eps_mode == "none" else None
    norm: torch.Tensor = torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True, dtype=wide).to(x.dtype)
    if norm_scale != 1.0:
        norm = norm.mul_(norm_scale)
    denom = lookup(NORM_GUARDS, eps_mode, "eps_mode")(norm, eps)
    out_dtype = x.dtype if dtype is None else dtype
    if overwrite and out_dtype == x.dtype and x.is_contiguous():
        return x.div_(denom)
    # one pass: the quotient is computed in ``x.dtype`` and rounded once into a new contiguous tensor (the same
    # values as dividing in place and then copying, one launch fewer)
    return torch.div(x, denom, out=torch.empty(x.shape, dtype=out_dtype, device=x.device))


def _wide(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``x`` as a contiguous row-major ``[B, m, n]`` stack, viewed transposed when ``m > n`` (strict)."""
    shape = x.shape
    transpose = shape[-2] > shape[-1]
    # Norms sum in memory order: one layout (row-major matrix view) for every route, so a stack, a strided view
    # and a DDP owner's copy of the same matrix round alike (bitwise equality across routes and ISAs).
    xm = x.reshape(-1, shape[-2], shape[-1]).contiguous()
    return (xm.mT if transpose else xm), transpose


Prescaled = tuple[torch.Tensor, torch.Tensor | None, bool]


def normalized_wide(
    x: torch.Tensor, norm_scale: float, eps: float, eps_mode: NsEpsMode, compute: torch.dtype, overwrite: bool = False
) -> Prescaled:
    """The Frobenius prescale: ``x`` (``[..., m, n]``) as a contiguous wide ``[B, m', n']`` stack (transposed when
    ``m > n``, strict), normalized by `normalize_frobenius` and in ``compute``; no ``A``; whether it was
    transposed. When ``x`` is wider than ``compute`` (fp32 momentum, bf16 iteration) the normalization runs in
    ``x.dtype`` and its result is rounded once: one rounding of each entry instead of a rounded norm that shifts
    every singular value coherently (the first Polar Express quintic amplifies such a shift about 16x).
    ``overwrite``: ``x`` may be divided in place.
    """
    xm, transpose = _wide(x)
    if x.dtype.itemsize > compute.itemsize:
        return normalize_frobenius(xm, norm_scale, eps, eps_mode, compute, overwrite=overwrite), None, transpose
    work = xm.to(compute)
    own = overwrite or work is not xm  # a converted copy is ours to divide in place
    return normalize_frobenius(work, norm_scale, eps, eps_mode, overwrite=own), None, transpose


def _working(x: torch.Tensor, compute: torch.dtype) -> tuple[torch.Tensor, bool]:
    """The wide stack in the widest of ``x.dtype``, ``compute`` and float32 (a norm's SVD needs float32): a
    prescale runs there and its results are rounded once to ``compute``."""
    xm, transpose = _wide(x)
    return xm.to(max((x.dtype, compute, torch.float32), key=lambda d: d.itemsize)), transpose


def _spectral(
    x: torch.Tensor, s: float, eps: float, mode: NsEpsMode, compute: torch.dtype, overwrite: bool
) -> Prescaled:
    xm, transpose = _working(x, compute)
    norm = torch.linalg.matrix_norm(xm, ord=2, keepdim=True).mul_(s)  # sigma_max: an SVD per matrix
    return torch.div(xm, lookup(NORM_GUARDS, mode, "eps_mode")(norm, eps)).to(compute), None, transpose


def _schatten(
    x: torch.Tensor, s: float, eps: float, mode: NsEpsMode, compute: torch.dtype, overwrite: bool
) -> Prescaled:
    xm, transpose = _working(x, compute)
    gram = torch.bmm(xm, xm.mT)
    k = torch.linalg.matrix_norm(gram, keepdim=True).clamp_(min=eps).rsqrt_()  # 1 / ||X||_S4, clamped (optax)
    return (xm * k).to(compute), gram.mul_(k * k).to(compute), transpose


def _aol(x: torch.Tensor, s: float, eps: float, mode: NsEpsMode, compute: torch.dtype, overwrite: bool) -> Prescaled:
    xm, transpose = _working(x, compute)
    gram = torch.bmm(xm, xm.mT)
    d = gram.abs().sum(dim=-1, keepdim=True).clamp_(min=eps).rsqrt_()  # row sums bound ||diag(d) X||_2 <= 1
    return (xm * d).to(compute), gram.mul_(d).mul_(d.mT).to(compute), transpose


PRESCALES: dict[Prescale, Callable[[torch.Tensor, float, float, NsEpsMode, torch.dtype, bool], Prescaled]] = {
    "frobenius": normalized_wide,
    "spectral": _spectral,
    "schatten": _schatten,
    "aol": _aol,
}
"""``spec.prescale`` -> ``(x, norm_scale, eps, eps_mode, compute, overwrite) -> (X', A' or None, transposed)``:
the wide prescaled stack in ``compute`` and, when the prescale formed it, ``A' = X' X'^T`` for iteration 0
(`muonlab.reference.orthogonalize.PRESCALES` states the math)."""


class Products(NamedTuple):
    """The iteration's products on ``[B, ., .]`` stacks."""

    gram: Callable[[torch.Tensor], torch.Tensor]
    """``X -> X X^T``"""
    poly: Callable[[torch.Tensor, float, float], torch.Tensor]
    """``(A, b, c) -> b A + c A^2``"""
    step: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
    """``(X, B, a) -> a X + B X``"""
    mm: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    """``(P, Q) -> P Q``"""


def _torch_products(op: Callable[[torch.Tensor], torch.Tensor]) -> Products:
    """Batched torch products whose operands (never the added term) go through ``op`` first."""
    return Products(
        gram=lambda x: torch.bmm(op(x), op(x).mT),
        poly=lambda g, b, c: torch.baddbmm(g, op(g), op(g), beta=b, alpha=c),
        step=lambda x, p, a: torch.baddbmm(x, op(p), op(x), beta=a),
        mm=lambda p, q: torch.bmm(op(p), op(q)),
    )


_EXACT = _torch_products(lambda t: t)


def _products(backend: Backend, device: torch.device, dtype: torch.dtype, operands: Operands = None) -> Products:
    """The symmetric kernels for ``A`` and ``B`` when `muonlab.fast.backend.route` says so, else batched torch
    products; with ``operands`` (`tf32`) the torch products on rounded operands."""
    if operands is not None:
        return _torch_products(operands)
    if route(backend, device, dtype):
        from .kernels import symmetric

        return _EXACT._replace(gram=symmetric.xxt, poly=symmetric.ba_plus_caa)
    return _EXACT


def newton_schulz_stack(
    box: list[torch.Tensor],
    backend: Backend = "auto",
    overwrite: bool = False,
    *,
    coefficients: CoefficientSet,
    norm_scale: float = 1.0,
    eps: float = 1e-7,
    eps_mode: NsEpsMode = "add",
    prescale: Prescale = "frobenius",
    compute: torch.dtype | None = None,
    operands: Operands = None,
) -> torch.Tensor:
    """The Newton-Schulz / Polar Express iteration (docs/variants.md "Orthogonalization (stage 3)"; one triple of
    ``coefficients`` per iteration, `muonlab.contract.MuonSpec.schedule`) of the ``[B, m, n]`` stack taken out of
    ``box``, after ``prescale`` (`PRESCALES`), in ``compute`` (default its dtype; ``operands``: `tf32` for
    TF32 products), one batched product per step for the whole stack. ``backend``
    (`muonlab.fast.backend.route`) may take the symmetric kernels for ``A`` and ``B``; ``overwrite``: the stack
    may be divided in place. Taking the stack out of a list leaves the caller no reference, so the
    momentum-sized input is freed as soon as its prescaled copy exists, and each iterate as soon as the next one
    does."""
    x = box.pop()
    work = x.dtype if compute is None else compute
    xm, gram, transpose = lookup(PRESCALES, prescale, "prescale")(x, norm_scale, eps, eps_mode, work, overwrite)
    del x
    pr = _products(backend, xm.device, work, operands)
    for a, b, c in coefficients:
        poly = pr.poly(pr.gram(xm) if gram is None else gram, b, c)  # B = b A + c A^2, A = X X^T
        gram = None  # iteration 0 of "aol" / "schatten" reused the prescale's A
        xm = pr.step(xm, poly, a)  # X <- a X + B X
        del poly  # before the next A: at most one iterate and one m x m product alive besides it
    return xm.mT if transpose else xm


def gram_newton_schulz_stack(
    box: list[torch.Tensor],
    backend: Backend = "auto",
    overwrite: bool = False,
    *,
    coefficients: CoefficientSet,
    restarts: tuple[int, ...] = (2,),
    norm_scale: float = 1.0,
    eps: float = 1e-7,
    eps_mode: NsEpsMode = "add",
    prescale: Prescale = "frobenius",
    compute: torch.dtype | None = None,
    operands: Operands = None,
) -> torch.Tensor:
    """`newton_schulz_stack`'s map computed on ``R = X X^T`` (`muonlab.reference.orthogonalize.gram_newton_schulz`
    states it): each step's factor ``F = a I + b R + c R^2`` is accumulated into ``Q`` and ``R <- F R F``; at a
    restart ``X <- Q X`` and ``R`` is formed afresh. Square matrices take `newton_schulz_stack`, as upstream."""
    shape = box[0].shape
    if shape[-2] == shape[-1]:
        return newton_schulz_stack(
            box,
            backend,
            overwrite,
            coefficients=coefficients,
            norm_scale=norm_scale,
            eps=eps,
            eps_mode=eps_mode,
            prescale=prescale,
            compute=compute,
            operands=operands,
        )
    x = box.pop()
    work = x.dtype if compute is None else compute
    xm, gram, transpose = lookup(PRESCALES, prescale, "prescale")(x, norm_scale, eps, eps_mode, work, overwrite)
    del x
    pr = _products(backend, xm.device, work, operands)
    r = pr.gram(xm) if gram is None else gram
    acc: torch.Tensor | None = None
    last = len(coefficients) - 1
    for t, (a, b, c) in enumerate(coefficients):
        if t in restarts and acc is not None:
            xm = pr.mm(acc, xm)  # X <- Q X, then a fresh R
            r, acc = pr.gram(xm), None
        factor = pr.poly(r, b, c)  # Z = b R + c R^2
        factor.diagonal(dim1=-2, dim2=-1).add_(a)  # F = a I + Z
        acc = factor if acc is None else pr.mm(acc, factor)
        if t < last and t + 1 not in restarts:
            r = pr.mm(factor, pr.mm(r, factor))  # R <- F R F
    assert acc is not None  # coefficients hold at least one triple
    out = pr.mm(acc, xm)
    return out.mT if transpose else out


def newton_schulz(
    x: torch.Tensor,
    coefficients: CoefficientSet,
    *,
    norm_scale: float = 1.0,
    eps: float = 1e-7,
    eps_mode: NsEpsMode = "add",
    prescale: Prescale = "frobenius",
    compute: torch.dtype | None = None,
    backend: Backend = "auto",
) -> torch.Tensor:
    """`newton_schulz_stack` of ``x`` (``[..., m, n]``, batched over the leading dims; not written), in
    ``compute`` (default ``x.dtype``), with ``x``'s shape."""
    check_ndim(x.shape, "x")
    stack = x.reshape(-1, x.shape[-2], x.shape[-1])
    out = newton_schulz_stack(
        [stack],
        backend,
        coefficients=coefficients,
        norm_scale=norm_scale,
        eps=eps,
        eps_mode=eps_mode,
        prescale=prescale,
        compute=compute,
    )
    return out.reshape(x.shape)


def polar_factor(x: torch.Tensor) -> torch.Tensor:
    """Exact polar factor ``U V^T`` of the thin SVD, per matrix, in ``x.dtype`` (float32 or float64 SVD).

    Singular values ``<= max(m, n) * eps_dtype * sigma_max`` count as zero (the reference's rank rule), so
    ``polar_factor(0) = 0``.
    """
    check_ndim(x.shape, "x")
    work = x.to(wide_dtype(x.dtype))
    svd = torch.linalg.svd(work, full_matrices=False)
    u: torch.Tensor = svd[0]
    s: torch.Tensor = svd[1]
    vh: torch.Tensor = svd[2]
    smax = s.amax(dim=-1, keepdim=True)
    tol = max(x.shape[-2], x.shape[-1]) * torch.finfo(work.dtype).eps * smax
    keep = (s > tol).to(work.dtype)
    return ((u * keep.unsqueeze(-2)) @ vh).to(x.dtype)


StackFn = Callable[[list[torch.Tensor], Backend, bool], torch.Tensor]
"""``Orth`` of the ``[B, m, n]`` stack in a one-element list (taken out, so its memory goes as soon as it is
used), in ``spec.compute_dtype``; arguments: the list, the backend, whether the stack may be overwritten (the
caller's temporary)."""


def _iteration_keywords(spec: MuonSpec) -> dict[str, Any]:
    """The keywords both Newton-Schulz stack functions take from ``spec``."""
    return {
        "coefficients": spec.schedule,
        "norm_scale": spec.norm_scale,
        "eps": spec.eps,
        "eps_mode": spec.eps_mode,
        "prescale": spec.prescale,
        "compute": compute_dtype(spec),
        "operands": lookup(_DTYPES, spec.compute_dtype, "compute_dtype")[1],
    }


def _newton_schulz(spec: MuonSpec) -> StackFn:
    return partial(newton_schulz_stack, **_iteration_keywords(spec))


def _gram_newton_schulz(spec: MuonSpec) -> StackFn:
    return partial(gram_newton_schulz_stack, restarts=spec.gram_restarts, **_iteration_keywords(spec))


def _svd(spec: MuonSpec) -> StackFn:
    dtype = compute_dtype(spec)

    def polar(box: list[torch.Tensor], backend: Backend, overwrite: bool) -> torch.Tensor:
        return polar_factor(box.pop().to(dtype))

    return polar


ORTHOGONALIZERS: dict[Orthogonalizer, Callable[[MuonSpec], StackFn]] = {
    "newton_schulz": _newton_schulz,
    "gram_newton_schulz": _gram_newton_schulz,
    "svd": _svd,
}
"""``spec.orthogonalizer`` -> the `StackFn` of ``spec`` (the one place the choice is made on this side; the
reference's table is `muonlab.reference.orthogonalize.ORTHOGONALIZERS`)."""


def _dual_norm(n: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    o = o.to(n.dtype)  # <N, O> in N's (the state's) dtype, as optax computes it in the input's
    return o.mul_((n * o).sum(dim=(-2, -1), keepdim=True))


MAGNITUDES: dict[Magnitude, Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None] = {
    "none": None,
    "dual_norm": _dual_norm,
}
"""``spec.magnitude`` -> ``(N, O) -> O'`` on ``[B, m, n]`` stacks (None: ``O`` unchanged); the math is
`muonlab.reference.orthogonalize.MAGNITUDES`."""


def orthogonalizer(spec: MuonSpec) -> StackFn:
    """``Orth`` of ``spec`` on a stack, by `ORTHOGONALIZERS` (resolved once per group by the step)."""
    return lookup(ORTHOGONALIZERS, spec.orthogonalizer, "orthogonalizer")(spec)


def orthogonalize(x: torch.Tensor, spec: MuonSpec | str, *, backend: Backend = "auto") -> torch.Tensor:
    """``O = Orth(x)`` per ``spec`` (as `muonlab.reference.orthogonalize`), computed in ``spec.compute_dtype``
    and returned in ``x.dtype`` with ``x``'s shape.

    ``x`` must have at least 2 dims. Leading dims are a batch; ``ndim >= 4`` follows ``spec.nd_mode``.
    """
    s = resolve_spec(spec)
    check_backend(backend)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if not (x.is_floating_point()):
        raise ValueError(f"x: expected a floating-point tensor, got dtype {x.dtype}")
    mats, restore = as_matrices(x, s, "x")
    if mats.numel() == 0:
        raise ValueError(f"x must not be empty, got shape {tuple(x.shape)}")
    return restore(orthogonalizer(s)([mats], backend, False).to(x.dtype))
