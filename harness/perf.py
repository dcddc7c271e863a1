"""Throughput accounting: model FLOPs per token, the device's peak, and model FLOPs utilization (MFU).

FLOPs per token follow the PaLM convention (Chowdhery et al. 2022, arXiv 2204.02311, appendix B)::

    flops_per_token = 6 N + 12 L d T

``N``: the parameters that take part in a matmul (every parameter, minus the input embedding when the
head is untied: a lookup costs nothing, a tied embedding is the head's matmul); ``L`` layers, width ``d``,
context ``T``: the attention scores and their weighted sum, forward and backward, with the causal mask
*not* halved. ``MFU = tokens/s x flops_per_token / peak``.

The peak is dense bf16 tensor-core throughput from `PEAK_BF16_TFLOPS` (matched against the CUDA device's
name), or ``$MUONLAB_PEAK_TFLOPS`` when set; None (no MFU logged) on the CPU, for float32 runs and for
GPUs not in the table.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

#: Dense bf16 peak in TFLOP/s by a substring of ``torch.cuda.get_device_name()`` (first match wins);
#: vendor data sheets, SXM parts unless named.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("A100", 312.0),
    ("RTX 4090", 165.2),
)


def flops_per_token(mcfg: Any, seq_len: int) -> float:
    """``6 N + 12 L d T`` for a `harness.model.ModelConfig` trained on ``seq_len``-token sequences."""
    from .model import count_params

    if seq_len <= 0:
        raise ValueError(f"seq_len: must be positive, got {seq_len}")
    n = count_params(mcfg)
    if not mcfg.tie_embeddings:
        n -= mcfg.vocab_size * mcfg.d_model
    return float(6 * n + 12 * mcfg.n_layers * mcfg.d_model * seq_len)


def peak_flops(device: torch.device, dtype: str) -> float | None:
    """The device's peak FLOP/s for a run in ``dtype`` (module docstring), or None when unknown."""
    env = os.environ.get("MUONLAB_PEAK_TFLOPS")
    if env:
        try:
            value = float(env)
        except ValueError:
            raise ValueError(f"MUONLAB_PEAK_TFLOPS: expected a number of TFLOP/s, got {env!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"MUONLAB_PEAK_TFLOPS: must be positive, got {env!r}")
        return value * 1e12
    if device.type != "cuda" or dtype != "bfloat16":
        return None
    tflops = peak_tflops_of(torch.cuda.get_device_name(device))
    return None if tflops is None else tflops * 1e12


def peak_tflops_of(device_name: str) -> float | None:
    """The `PEAK_BF16_TFLOPS` entry whose key is in ``device_name`` (first match wins), or None."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in device_name:
            return tflops
    return None


def mfu(tokens_per_s: float | None, flops_per_token: float, peak: float | None) -> float | None:
    """Model FLOPs utilization ``tokens_per_s x flops_per_token / peak`` (None when either is unknown)."""
    if tokens_per_s is None or peak is None:
        return None
    return tokens_per_s * flops_per_token / peak


def predicted_seconds(cfg: Any, device_name: str, mfu: float) -> float:
    """Predicted GPU time of one run of ``cfg`` (a `harness.config.RunConfig`) on the GPU ``device_name`` (a
    `PEAK_BF16_TFLOPS` key, e.g. ``"H100"``) at model FLOPs utilization ``mfu`` (0 < mfu <= 1)::

        steps x batch_size x seq_len x flops_per_token / (peak x mfu)

    Model FLOPs only: Newton-Schulz, evaluations, statistics, checkpoints and compilation come on top
    (docs/harness.md, "Expected wall time of wd_dose_response on one H100 / H200"). A pure function of the config
    (no data, no GPU).
    """
    from .config import resolve_model_config, seq_len_of, total_steps_of

    if not 0 < mfu <= 1:
        raise ValueError(f"mfu: must be in (0, 1], got {mfu}")
    peak = peak_tflops_of(device_name)
    if peak is None:
        raise ValueError(f"device_name: {device_name!r} matches no PEAK_BF16_TFLOPS entry")
    mcfg = resolve_model_config(cfg)
    seq_len = seq_len_of(cfg, mcfg)
    tokens = total_steps_of(cfg, seq_len) * int(cfg.train.batch_size) * seq_len
    return tokens * flops_per_token(mcfg, seq_len) / (peak * 1e12 * mfu)
