"""QK-Clip on torch tensors, in place, batched over layers: `muonlab.reference.qk_clip` (arXiv 2507.20534;
docs/variants.md "QK-Clip", rules and the grouped-query decision there) for a whole model in one call.

Call it after ``optimizer.step()`` with the per-head max logits the forward recorded (MuonClip = Moonlight
Muon + this; docs/fast.md "MuonClip")::

    gamma = qk_clip_(w_qs, w_ks, max_logits, tau=100.0, n_heads=H, n_kv_heads=K)

The factors of every layer come from one batched computation and one finiteness check (one host sync); the
rows are rescaled with one ``torch._foreach_mul_``. Weights may be any views in the ``nn.Linear`` layout
(``[n_heads * d_head, d_model]``), e.g. ``c_attn.weight[:, :d].T`` for GPT-2's fused ``Conv1D``: the update
lands in the parameter. q/k biases scale with their rows: a second call on ``b_q.unsqueeze(1)``,
``b_k.unsqueeze(1)`` with the same ``max_logits`` keeps the clip exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .state import wide_dtype

__all__ = ["GQA_RULES", "qk_clip_", "qk_clip_factors"]

GQA_RULES = ("query", "split")


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return value


def _real(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected a real number, got {value!r}")
    return float(value)


def qk_clip_factors(
    max_logits: torch.Tensor,
    *,
    tau: float,
    n_heads: int,
    n_kv_heads: int | None = None,
    alpha: float = 0.5,
    gqa: str = "query",
    check_finite: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(gamma, f_q, f_k)`` for ``max_logits`` ``[..., n_heads]``: ``gamma_h = tau / S_max^h`` where
    ``S_max^h > tau`` else 1, and the query / key row factors ``[..., n_heads]`` / ``[..., n_kv_heads]``
    (`muonlab.reference.qk_clip_factors`, batched over the leading dims). ``check_finite`` raises on NaN/Inf
    logits (one host sync)."""
    n_heads = _positive_int(n_heads, "n_heads")
    n_kv = n_heads if n_kv_heads is None else _positive_int(n_kv_heads, "n_kv_heads")
    if n_heads % n_kv:
        raise ValueError(f"n_kv_heads: {n_kv} does not divide n_heads={n_heads}")
    tau = _real(tau, "tau")
    if not (tau > 0.0 and math.isfinite(tau)):
        raise ValueError(f"tau: must be finite and > 0, got {tau!r}")
    alpha = _real(alpha, "alpha")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: must be in [0, 1], got {alpha!r}")
    if gqa not in GQA_RULES:
        raise ValueError(f"gqa: expected one of {', '.join(map(repr, GQA_RULES))}, got {gqa!r}")
    if not isinstance(max_logits, torch.Tensor):
        raise TypeError(f"max_logits: expected a tensor, got {type(max_logits).__name__}")
    if max_logits.ndim < 1 or max_logits.shape[-1] != n_heads:
        raise ValueError(
            f"max_logits: expected shape [..., {n_heads}] (one per query head), got {tuple(max_logits.shape)}"
        )
    if max_logits.is_complex() or max_logits.dtype == torch.bool:
        raise ValueError(f"max_logits: expected real numbers, got dtype {max_logits.dtype}")
    s = max_logits.detach()
    s = s.to(wide_dtype(s.dtype))
    if check_finite and not bool(torch.isfinite(s).all()):
        bad = (~torch.isfinite(s)).nonzero().tolist()
        raise ValueError(f"max_logits: must be finite, got non-finite entries at {bad}")
    over = s > tau
    gamma = torch.where(over, tau / torch.where(over, s, torch.ones_like(s)), torch.ones_like(s))
    g = n_heads // n_kv
    if g == 1:
        return gamma, gamma.pow(alpha), gamma.pow(1.0 - alpha)
    if gqa == "query":
        return gamma, gamma.clone(), torch.ones_like(gamma[..., :n_kv])
    f_k = gamma.reshape(*gamma.shape[:-1], n_kv, g).amin(dim=-1).pow(1.0 - alpha)
    return gamma, gamma.pow(alpha), f_k


def _as_list(w: torch.Tensor | Sequence[torch.Tensor], name: str) -> tuple[list[torch.Tensor], bool]:
    """Per-layer 2-D weights and whether one layer came unbatched."""
    if isinstance(w, torch.Tensor):
        if w.ndim == 2:
            return [w], True
        if w.ndim == 3:
            return list(w.unbind(0)), False
        raise ValueError(f"{name}: expected [rows, d_model], [layers, rows, d_model] or a list, got {tuple(w.shape)}")
    ws = list(w)
    for i, t in enumerate(ws):
        if not isinstance(t, torch.Tensor) or t.ndim != 2:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name}[{i}]: expected a 2-D [rows, d_model] tensor (nn.Linear layout), got {shape}")
    return ws, False


@torch.no_grad()
def qk_clip_(
    w_q: torch.Tensor | Sequence[torch.Tensor],
    w_k: torch.Tensor | Sequence[torch.Tensor],
    max_logits: torch.Tensor,
    *,
    tau: float,
    n_heads: int,
    n_kv_heads: int | None = None,
    alpha: float = 0.5,
    gqa: str = "query",
    check_finite: bool = True,
) -> torch.Tensor:
    """QK-Clip in place on every layer; returns ``gamma`` (``max_logits``' shape; 1 where a head was not clipped).

    ``w_q`` / ``w_k``: one layer's ``[n_heads * d_head, d_model]`` / ``[n_kv_heads * d_head, d_model]`` with
    ``max_logits`` ``[n_heads]``, or ``L`` layers (a ``[L, rows, d_model]`` tensor or a list of 2-D tensors or
    views) with ``max_logits`` ``[L, n_heads]``. Rows are multiplied in float32 (float64 for float64 weights)
    and rounded once to the weight's dtype. Arguments as `muonlab.reference.qk_clip`.
    """
    qs, single = _as_list(w_q, "w_q")
    ks, _ = _as_list(w_k, "w_k")
    if len(ks) != len(qs):
        raise ValueError(f"w_k: {len(ks)} layers for {len(qs)} layers of w_q")
    gamma, f_q, f_k = qk_clip_factors(
        max_logits, tau=tau, n_heads=n_heads, n_kv_heads=n_kv_heads, alpha=alpha, gqa=gqa, check_finite=check_finite
    )
    want = (n_heads,) if single else (len(qs), n_heads)
    if tuple(max_logits.shape) != want:
        raise ValueError(
            f"max_logits: expected shape {want} for {len(qs)} layer(s) of {n_heads} heads, "
            f"got {tuple(max_logits.shape)}"
        )
    f_q = f_q.reshape(len(qs), -1)
    f_k = f_k.reshape(len(qs), -1)
    n_kv = f_k.shape[1]
    views: list[torch.Tensor] = []
    factors: list[torch.Tensor] = []
    for i, (q, k) in enumerate(zip(qs, ks, strict=True)):
        if q.shape[0] % n_heads:
            raise ValueError(f"w_q[{i}]: {q.shape[0]} rows do not split into n_heads={n_heads} heads")
        d_head = q.shape[0] // n_heads
        if tuple(k.shape) != (n_kv * d_head, q.shape[1]):
            raise ValueError(
                f"w_k[{i}]: expected shape ({n_kv * d_head}, {q.shape[1]}) (n_kv_heads={n_kv} heads of "
                f"d_head={d_head}, d_model of w_q), got {tuple(k.shape)}"
            )
        for t, f, label in ((q, f_q[i], "w_q"), (k, f_k[i], "w_k")):
            if not t.is_floating_point():
                raise ValueError(f"{label}[{i}]: expected a floating tensor, got {t.dtype}")
            math_dtype = wide_dtype(t.dtype)
            views.append(t.view(f.shape[0], d_head, t.shape[1]))  # splits dim 0 only: a view of any strides
            factors.append(f.to(device=t.device, dtype=math_dtype)[:, None, None])
    torch._foreach_mul_(views, factors)
    return gamma
