"""MuonClip in the harness: the model records each attention head's largest pre-softmax logit during the
training forward passes of a step, and a post-step hook logs them and applies QK-Clip
(`muonlab.fast.qk_clip_`; docs/variants.md "QK-Clip (MuonClip)").

``[train] max_logits = true`` records and logs only (metrics.jsonl ``max_logit``: one value per layer, the
max over its heads); ``[train] qk_clip_tau`` also clips (and logs ``qk_clipped``, the number of heads clipped
that step). The recorded statistic is ``S_max^h = max_{i <= j} q_i^h . k_j^h * scale`` over every micro-batch
of the step (the causal logits that enter the softmax, after QK-norm and RoPE); under torchrun the hook takes
the max over the ranks first, so every rank clips alike. QK-norm normalizes q and k per head, which undoes
any rescale of ``W_q`` and ``W_k``: a clip with ``model.qk_norm`` (or nGPT) is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from .config import TrainSection
from .model import GPT, Block

__all__ = ["PostStepHook", "max_logit_hooks"]

PostStepHook = Callable[[int, torch.nn.Module, torch.optim.Optimizer], Mapping[str, Any] | None]


def max_logit_hooks(train_cfg: TrainSection, model: torch.nn.Module) -> list[PostStepHook]:
    """The post-step hook for ``train_cfg``: none unless ``max_logits`` or ``qk_clip_tau`` is set; then the
    model (a `GPT`) records its logits (`GPT.record_max_logits`). Raises `ValueError` for a clip on a model
    whose QK-norm (or nGPT normalization) would undo it."""
    tau = train_cfg.qk_clip_tau
    if not (train_cfg.max_logits or tau is not None):
        return []
    from muonlab.fast import qk_clip_

    if not isinstance(model, GPT):
        raise TypeError(f"model: max-logit recording needs the harness GPT, got {type(model).__name__}")
    cfg = model.cfg
    if tau is not None and (cfg.qk_norm or cfg.ngpt):
        raise ValueError(
            "train.qk_clip_tau: the model normalizes q and k (qk_norm or ngpt), which undoes QK-Clip's rescale; "
            "set model.qk_norm = false (or log only with train.max_logits = true)"
        )
    model.record_max_logits(True)
    attns = [blk.attn for blk in model.blocks if isinstance(blk, Block)]
    alpha, gqa = train_cfg.qk_clip_alpha, train_cfg.qk_clip_gqa

    def hook(step: int, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Mapping[str, Any] | None:
        s = model.pop_max_logits()
        if s is None:
            return None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(s, op=torch.distributed.ReduceOp.MAX)  # every rank clips alike
        out: dict[str, Any] = {"max_logit": [float(v) for v in s.amax(dim=1).tolist()]}
        if tau is not None:
            gamma = qk_clip_(
                [a.q.weight for a in attns],
                [a.k.weight for a in attns],
                s,
                tau=tau,
                n_heads=cfg.n_heads,
                n_kv_heads=cfg.n_kv_heads,
                alpha=alpha,
                gqa=gqa,
            )
            out["qk_clipped"] = int((gamma < 1).sum().item())
        return out

    return [hook]
