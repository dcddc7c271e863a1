"""Manifold statistics of the matrix weights, logged every ``stats_every`` steps to manifold_stats.jsonl.

Per matrix parameter ``W`` (``ndim >= 2``) at a stats step ``s`` (completed optimizer steps):

* ``weight_norm``: ``||W_s||_F``;
* ``grad_norm``: ``||G_s||_F`` of the gradient the step-``s`` update consumed (after clipping);
* ``effective_rank``: ``exp(H(sigma / sum sigma))`` (`muonlab.harness.model.effective_rank`);
* ``update_alignment``: ``cos(dW_s, dW_{s-1})`` with ``dW_t = W_t - W_{t-1}``, the total change of the weight
  at step ``t`` (optimizer step plus any renormalization), i.e. how consistently the optimizer moves.

Only the two steps around a stats step pay for the weight snapshots.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def _cosine(a: Tensor, b: Tensor) -> float | None:
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return None
    return float((a.flatten().double() @ b.flatten().double()) / (na.double() * nb.double()))


class ManifoldTracker:
    def __init__(self, model: nn.Module, every: int, rank_fn: Any = None) -> None:
        if every <= 0:
            raise ValueError(f"every: must be positive, got {every!r}")
        self.every = every
        self.params = [(n, p) for n, p in model.named_parameters() if p.ndim >= 2]
        if rank_fn is None:
            from .model import effective_rank as rank_fn
        self.rank_fn = rank_fn
        self._snap: dict[str, Tensor] | None = None
        self._grad_norms: dict[str, float] = {}
        self.prev_update: dict[str, Tensor] | None = None

    def before_update(self, step: int) -> None:
        """Call after backward (and clipping), before the optimizer step that completes ``step``."""
        if step % self.every in (0, self.every - 1):
            self._snap = {n: p.detach().clone() for n, p in self.params}
        if step % self.every == 0:
            self._grad_norms = {n: float(p.grad.detach().norm()) if p.grad is not None else 0.0 for n, p in self.params}

    @torch.no_grad()
    def after_update(self, step: int, tokens: int) -> list[dict[str, Any]] | None:
        """Call once the weights of ``step`` are final; returns the per-layer records at a stats step."""
        delta: dict[str, Tensor] | None = None
        if self._snap is not None:
            delta = {n: p.detach() - self._snap[n] for n, p in self.params}
            self._snap = None
        records = None
        if step % self.every == 0:
            records = []
            for n, p in self.params:
                align = None
                if delta is not None and self.prev_update is not None and n in self.prev_update:
                    align = _cosine(delta[n], self.prev_update[n])
                records.append(
                    {
                        "step": step,
                        "tokens": tokens,
                        "layer": n,
                        "weight_norm": float(p.detach().norm()),
                        "grad_norm": self._grad_norms.get(n),
                        "effective_rank": float(self.rank_fn(p.detach().float())),
                        "update_alignment": align,
                    }
                )
        self.prev_update = delta if (step + 1) % self.every == 0 else None
        return records

    def state_dict(self) -> dict[str, Any]:
        return {"prev_update": None if self.prev_update is None else {k: v.cpu() for k, v in self.prev_update.items()}}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        prev = state.get("prev_update")
        self.prev_update = None if prev is None else {k: v.to(device) for k, v in prev.items()}
