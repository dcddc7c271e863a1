"""MuonClip in the harness (harness/logit_clip.py): the model's opt-in per-head max-logit recording, QK-Clip after
each optimizer step, and the ``max_logit`` / ``qk_clipped`` fields of metrics.jsonl."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from muonlab.fast import qk_clip_
from muonlab.harness import rundir as rd
from muonlab.harness.config import ConfigError, TrainSection, validate_run
from muonlab.harness.logit_clip import max_logit_hooks
from muonlab.harness.model import GPT, get_model_config, head_max_logits
from muonlab.harness.train import train


def _explicit(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """Per-head max causal logit, the whole batch at once (GQA by repeat_interleave)."""
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    logits = (q @ k.transpose(-1, -2)) * scale
    T = q.shape[-2]
    logits = logits.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), -math.inf)
    return logits.amax(dim=(0, 2, 3))


@pytest.mark.parametrize(("h", "h_kv"), [(4, 4), (4, 2), (6, 1)])
def test_head_max_logits_is_the_causal_max(h: int, h_kv: int) -> None:
    g = torch.Generator().manual_seed(h * 10 + h_kv)
    q, k = torch.randn(3, h, 7, 4, generator=g), torch.randn(3, h_kv, 7, 4, generator=g)
    k[:, :, -1] += 50.0  # the last key is only visible to the last query: must not leak into earlier rows
    got = head_max_logits(q, k, 0.5)
    torch.testing.assert_close(got, _explicit(q, k, 0.5), rtol=1e-6, atol=1e-6)
    assert got.dtype == torch.float32 and got.shape == (h,)


def _model(**kw: Any) -> GPT:
    cfg = dataclasses.replace(
        get_model_config("tiny"), d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, seq_len=16, **kw
    )
    torch.manual_seed(0)
    return GPT(cfg)


def test_recording_is_opt_in_training_only_and_pops() -> None:
    model = _model(qk_norm=False)
    x = torch.randint(0, 4096, (2, 16))
    model(x)
    assert model.pop_max_logits() is None  # off by default
    model.record_max_logits(True)
    model.eval()
    model(x)
    assert model.pop_max_logits() is None  # evaluation forwards are not the step's statistics
    model.train()
    model(x)
    model(x[:1])  # a second micro-batch: the running max over both
    s = model.pop_max_logits()
    assert s is not None and s.shape == (2, 4) and bool(torch.isfinite(s).all())
    assert model.pop_max_logits() is None  # reset by the pop


def test_clip_on_the_model_lands_each_head_on_tau() -> None:
    """Record, clip with tau under some heads' max, forward the same batch again: each head's max logit is
    min(S, tau) (RoPE rotates each head's q and k, so the row rescale carries through exactly)."""
    model = _model(qk_norm=False)
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.q.weight.mul_(8.0)  # large logits, as after aggressive training
    model.record_max_logits(True)
    x = torch.randint(0, 4096, (2, 16))
    with torch.no_grad():
        model(x)
    s = model.pop_max_logits()
    assert s is not None
    tau = float(s[0].median())
    gamma = qk_clip_(
        [b.attn.q.weight for b in model.blocks],
        [b.attn.k.weight for b in model.blocks],
        s,
        tau=tau,
        n_heads=4,
        n_kv_heads=2,
    )
    assert 0 < int((gamma[0] < 1).sum()) < s.shape[1]  # layer 0 has heads on both sides of tau
    with torch.no_grad():
        model(x)
    after = model.pop_max_logits()
    assert after is not None
    # layer 0 sees the same input; later layers see layer 0's (changed) output
    torch.testing.assert_close(after[0], torch.minimum(s[0], torch.tensor(tau)), rtol=1e-5, atol=1e-6)


def test_hooks_validate_the_config() -> None:
    assert max_logit_hooks(TrainSection(steps=1), _model(qk_norm=False)) == []
    with pytest.raises(ValueError, match=r"train\.qk_clip_tau: the model normalizes q and k"):
        max_logit_hooks(TrainSection(steps=1, qk_clip_tau=5.0), _model(qk_norm=True))
    # logging alone is allowed with QK-norm
    model = _model(qk_norm=True)
    (hook,) = max_logit_hooks(TrainSection(steps=1, max_logits=True), model)
    model(torch.randint(0, 4096, (1, 16)))
    out = hook(1, model, torch.optim.SGD(model.parameters()))
    assert out is not None and len(out["max_logit"]) == 2 and "qk_clipped" not in out


def test_config_fields(tmp_path: Path, text_file: Path, micro: Any) -> None:
    with pytest.raises(ConfigError, match=r"train\.qk_clip_tau"):
        validate_run(micro(text_file, tmp_path / "c", train={"qk_clip_tau": 0.0}))
    with pytest.raises(ConfigError, match=r"train\.qk_clip_gqa"):
        validate_run(micro(text_file, tmp_path / "c", train={"qk_clip_gqa": "max"}))
    with pytest.raises(ConfigError, match=r"train\.qk_clip_alpha"):
        validate_run(micro(text_file, tmp_path / "c", train={"qk_clip_alpha": 2.0}))


def test_training_logs_max_logits_and_clips(tmp_path: Path, text_file: Path, data_dir: Path, micro: Any) -> None:
    """Two runs from one seed: logging only, and clipping at tau = 0.3; the free run's max logit grows from
    about 0.05 to over 1, the clipped run's stays near tau once clipping starts (the logged value is the
    step's forward, taken before that step's update, which grows the logits by up to about 30% here)."""
    base = {"steps": 16, "log_every": 1, "checkpoint_every": None, "max_logits": True}
    model, opt, tau = {"qk_norm": False}, {"lr": 0.04}, 0.3
    free = validate_run(micro(text_file, tmp_path / "cache", train=base, model=model, optimizer=opt))
    train(free, tmp_path / "free", data_dir=data_dir, progress=False)
    recs = rd.read_jsonl(tmp_path / "free" / rd.METRICS)
    assert [len(r["max_logit"]) for r in recs] == [1] * 16  # one value per layer
    assert all("qk_clipped" not in r for r in recs)
    grown = [r["max_logit"][0] for r in recs]
    assert grown[0] < tau < 3 * tau < grown[-1], grown
    clip = validate_run(
        micro(text_file, tmp_path / "cache", train={**base, "qk_clip_tau": tau}, model=model, optimizer=opt)
    )
    train(clip, tmp_path / "clip", data_dir=data_dir, progress=False)
    recs = rd.read_jsonl(tmp_path / "clip" / rd.METRICS)
    held = [r["max_logit"][0] for r in recs]
    first = next(i for i, r in enumerate(recs) if r["qk_clipped"])
    assert held[: first + 1] == grown[: first + 1]  # identical until the first clip
    assert all(r["qk_clipped"] > 0 for r in recs[first + 1 :])
    assert max(held[first + 1 :]) < 1.5 * tau, (held, grown)
