"""QK-Clip (MuonClip's post-step rescale; Kimi K2 tech report, arXiv 2507.20534 Sec. 2.1; Su Jianlin,
kexue.fm/archives/11126). docs/variants.md "QK-Clip" states the rule and the grouped-query decision.

After an optimizer step, every attention head ``h`` whose largest pre-softmax logit over the step's batch,
``S_max^h = max_{i,j} q_i^h . k_j^h / sqrt(d_head)``, exceeds ``tau`` has its query and key projection rows
rescaled by ``gamma_h = min(1, tau / S_max^h)``:

    W_q^h <- gamma_h^alpha W_q^h,        W_k^h <- gamma_h^(1 - alpha) W_k^h          (K2 Eq. for MHA)

so the head's logits scale by exactly ``gamma_h``. Heads at or under ``tau`` are untouched.

Grouped-query attention (``n_kv_heads < n_heads``; query head ``h`` reads key head ``h // (n_heads //
n_kv_heads)``, the ``repeat_kv`` order of transformers' Llama) is outside the paper, which covers MHA and MLA.
``gqa`` picks the rule for a key head shared by ``g = n_heads // n_kv_heads > 1`` query heads:

* ``"query"`` (default): the shared key head is untouched and query head ``h`` takes all of ``gamma_h``
  (``W_q^h <- gamma_h W_q^h``). This is K2's own rule for the one shared key component it has, MLA's rotary
  key ``k^R`` (left untouched while the per-head ``q^R`` takes ``gamma_h``); each head's max logit ends at
  exactly ``min(S_max^h, tau)`` and heads under ``tau`` are untouched.
* ``"split"``: the ``alpha`` split kept: ``W_q^h <- gamma_h^alpha W_q^h`` and the shared key head by
  ``(min_{h in group} gamma_h)^(1 - alpha)``. Every head ends at or under ``tau`` (the group's worst head
  exactly at ``tau``), but the group's other heads are clipped more than they need (the key shrink reaches
  them too).

With ``g == 1`` (MHA) both rules are the paper's. ``alpha`` is unused by ``"query"`` for shared key heads.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from .array import Array

__all__ = ["GQA_RULES", "GqaRule", "qk_clip", "qk_clip_factors"]

GqaRule = Literal["query", "split"]
GQA_RULES: tuple[GqaRule, ...] = ("query", "split")


def _check_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return int(value)


def _check_real(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name}: expected a real number, got {value!r}")
    return float(value)


def qk_clip_factors(
    max_logits: Array,
    *,
    tau: float,
    n_heads: int,
    n_kv_heads: int | None = None,
    alpha: float = 0.5,
    gqa: GqaRule = "query",
) -> tuple[Array, Array]:
    """The row factors of QK-Clip: ``(f_q [n_heads], f_k [n_kv_heads])`` for the query and key heads
    (rules in the module docstring). ``gamma_h = tau / S_max^h`` where ``S_max^h > tau``, else 1."""
    n_heads = _check_int(n_heads, "n_heads")
    n_kv = n_heads if n_kv_heads is None else _check_int(n_kv_heads, "n_kv_heads")
    if n_heads % n_kv:
        raise ValueError(f"n_kv_heads: {n_kv} does not divide n_heads={n_heads}")
    tau = _check_real(tau, "tau")
    if not (tau > 0.0 and math.isfinite(tau)):
        raise ValueError(f"tau: must be finite and > 0, got {tau!r}")
    alpha = _check_real(alpha, "alpha")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: must be in [0, 1], got {alpha!r}")
    if gqa not in GQA_RULES:
        raise ValueError(f"gqa: expected one of {', '.join(map(repr, GQA_RULES))}, got {gqa!r}")
    s = np.asarray(max_logits)
    if s.shape != (n_heads,):
        raise ValueError(f"max_logits: expected shape ({n_heads},) (one per query head), got {s.shape}")
    if not np.issubdtype(s.dtype, np.floating) and not np.issubdtype(s.dtype, np.integer):
        raise ValueError(f"max_logits: expected real numbers, got dtype {s.dtype}")
    s = s.astype(np.float64)
    if not np.all(np.isfinite(s)):
        raise ValueError(
            f"max_logits: must be finite, got non-finite entries at heads {np.flatnonzero(~np.isfinite(s))}"
        )
    gamma = np.ones(n_heads)
    over = s > tau
    gamma[over] = tau / s[over]
    g = n_heads // n_kv
    if g == 1:
        return gamma**alpha, gamma ** (1.0 - alpha)
    if gqa == "query":
        return gamma.copy(), np.ones(n_kv)
    return gamma**alpha, gamma.reshape(n_kv, g).min(axis=1) ** (1.0 - alpha)


def qk_clip(
    w_q: Array,
    w_k: Array,
    max_logits: Array,
    *,
    tau: float,
    n_heads: int,
    n_kv_heads: int | None = None,
    alpha: float = 0.5,
    gqa: GqaRule = "query",
) -> tuple[Array, Array]:
    """QK-Clip on one attention layer (module docstring): new ``(w_q, w_k)``, inputs unchanged.

    ``w_q``: ``[n_heads * d_head, d_model]`` and ``w_k``: ``[n_kv_heads * d_head, d_model]`` (the torch
    ``nn.Linear`` layout, head ``h`` in rows ``h * d_head : (h + 1) * d_head``); ``max_logits``: ``[n_heads]``,
    each head's ``S_max^h`` (scaled by ``1 / sqrt(d_head)``); ``tau > 0``; ``alpha`` in ``[0, 1]``;
    ``n_kv_heads`` defaults to ``n_heads`` (MHA) and must divide it.
    """
    f_q, f_k = qk_clip_factors(max_logits, tau=tau, n_heads=n_heads, n_kv_heads=n_kv_heads, alpha=alpha, gqa=gqa)
    n_kv = f_k.shape[0]
    wq = np.asarray(w_q)
    wk = np.asarray(w_k)
    for arr, label in ((wq, "w_q"), (wk, "w_k")):
        if arr.ndim != 2:
            raise ValueError(
                f"{label}: expected a 2-D [rows, d_model] matrix (nn.Linear layout), got shape {arr.shape}"
            )
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"{label}: expected a floating array, got dtype {arr.dtype}")
    if wq.shape[0] % f_q.shape[0]:
        raise ValueError(f"w_q: {wq.shape[0]} rows do not split into n_heads={f_q.shape[0]} heads")
    d_head = wq.shape[0] // f_q.shape[0]
    if wk.shape != (n_kv * d_head, wq.shape[1]):
        raise ValueError(
            f"w_k: expected shape ({n_kv * d_head}, {wq.shape[1]}) (n_kv_heads={n_kv} heads of d_head={d_head}, "
            f"d_model of w_q), got {wk.shape}"
        )
    new_q = wq.astype(np.float64) * np.repeat(f_q, d_head)[:, None]
    new_k = wk.astype(np.float64) * np.repeat(f_k, d_head)[:, None]
    return new_q, new_k
