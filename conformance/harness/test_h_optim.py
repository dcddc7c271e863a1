"""Optimizer construction, lr schedules and manifold statistics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from muonlab.harness.config import OptimizerSection, ScheduleSection
from muonlab.harness.manifold import ManifoldTracker
from muonlab.harness.optim import build_optimizer, build_scheduler, lr_lambda, needs_manual_normalize


def test_schedule_shapes() -> None:
    f = lr_lambda(ScheduleSection(warmup_frac=0.1, cooldown_frac=0.5, cooldown="linear", final_lr_frac=0.0), 10)
    # warmup 1 step, cooldown over the last 5 steps reaching 0 at the last step
    assert [f(t) for t in range(10)] == pytest.approx([1.0, 1.0, 1.0, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2, 0.0])
    g = lr_lambda(ScheduleSection(warmup_frac=0.4, cooldown_frac=0.2, cooldown="cosine", final_lr_frac=0.1), 10)
    assert [g(t) for t in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert g(8) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert g(9) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="total_steps"):
        lr_lambda(ScheduleSection(), 0)


def _model(ngpt: bool = False) -> nn.Module:
    import dataclasses

    from muonlab.harness.model import GPT, MODEL_CONFIGS

    base = MODEL_CONFIGS["tiny_ngpt" if ngpt else "tiny"]
    torch.manual_seed(0)
    return GPT(
        dataclasses.replace(
            base, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64, seq_len=16, vocab_size=64
        )
    )


def test_adamw_no_decay_on_vectors() -> None:
    model = _model()
    opt = build_optimizer(model, OptimizerSection(name="adamw", lr=1e-3, weight_decay=0.1))
    assert isinstance(opt, torch.optim.AdamW)
    for g in opt.param_groups:
        assert all((p.ndim >= 2) == (g["weight_decay"] == 0.1) for p in g["params"])


def test_muon_groups_and_lr_scale() -> None:
    model = _model()
    cfg = OptimizerSection(name="muon", preset="keller", lr=0.01, lr_scale=3.0, weight_decay=0.05, adam_lr=0.004)
    opt = build_optimizer(model, cfg)
    muon = [g for g in opt.param_groups if g["algorithm"] == "muon"]
    adamw = [g for g in opt.param_groups if g["algorithm"] == "adamw"]
    assert muon and adamw
    assert all(g["lr"] == pytest.approx(0.03) and g["weight_decay"] == 0.05 for g in muon)
    assert all(g["lr"] == pytest.approx(0.004) for g in adamw)
    sched = build_scheduler(opt, ScheduleSection(warmup_frac=0.5), 4)
    assert muon[0]["lr"] == pytest.approx(0.015)  # LambdaLR applied step 0's factor 1/2
    opt.step()  # no gradients: nothing moves
    sched.step()
    assert muon[0]["lr"] == pytest.approx(0.03)


def test_ngpt_sphere_groups_follow_model_axes() -> None:
    model = _model(ngpt=True)
    cfg = OptimizerSection(name="muon", preset="ngpt", overrides={"sphere": "geodesic", "angle_mode": "exp"})
    opt = build_optimizer(model, cfg)
    ids = {id(p): n for n, p in model.named_parameters()}
    axes = model.ngpt_sphere_axes()
    seen = 0
    for g in opt.param_groups:
        if g["algorithm"] != "muon":
            continue
        for p in g["params"]:
            name = ids[id(p)]
            assert g["spec"].sphere == "geodesic" and g["spec"].sphere_axis == axes.get(name, "row")
            seen += 1
    assert seen >= 6
    assert needs_manual_normalize(model) and not needs_manual_normalize(_model())


def test_update_alignment_of_constant_updates_is_one() -> None:
    lin = nn.Linear(4, 3, bias=False)
    tracker = ManifoldTracker(lin, every=2, rank_fn=lambda w: 1.0)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    x = torch.ones(1, 4)
    records = []
    for step in range(1, 5):
        opt.zero_grad()
        lin.weight.grad = torch.ones_like(lin.weight)  # the same gradient every step
        tracker.before_update(step)
        opt.step()
        r = tracker.after_update(step, tokens=step)
        if r:
            records += r
    del x
    assert [r["step"] for r in records] == [2, 4]
    assert all(r["update_alignment"] == pytest.approx(1.0) for r in records)
    assert records[0]["grad_norm"] == pytest.approx(math.sqrt(12))
    # opposite consecutive updates: alignment -1
    tracker = ManifoldTracker(lin, every=2, rank_fn=lambda w: 1.0)
    for step in range(1, 3):
        lin.weight.grad = torch.ones_like(lin.weight) * (1 if step % 2 else -1)
        tracker.before_update(step)
        opt.step()
        r = tracker.after_update(step, tokens=step)
    assert r is not None and r[0]["update_alignment"] == pytest.approx(-1.0)


@pytest.mark.parametrize(
    ("overrides", "want", "source"),
    [
        ({}, "float32", "CPU default (the preset's is bfloat16)"),
        ({"compute_dtype": "bfloat16"}, "bfloat16", "config"),
        ({"compute_dtype": "float64"}, "float64", "config"),
    ],
)
def test_cpu_runs_compute_newton_schulz_in_float32_unless_the_config_says(
    overrides: dict[str, str], want: str, source: str
) -> None:
    """keller's preset computes in bf16 (for GPUs); a CPU run takes fp32 unless the config names a dtype."""
    from muonlab.harness.optim import muon_compute_dtype

    model = _model()
    cfg = OptimizerSection(name="muon", preset="keller", overrides=overrides)
    assert muon_compute_dtype(cfg, torch.device("cpu")) == {"compute_dtype": want, "source": source}
    specs = {g["spec"].compute_dtype for g in build_optimizer(model, cfg).param_groups}
    assert specs == {want}
    if not overrides:  # on a GPU the preset's numerics stand
        assert muon_compute_dtype(cfg, torch.device("cuda", 0)) == {"compute_dtype": "bfloat16", "source": "preset"}
    assert muon_compute_dtype(OptimizerSection(name="adamw", lr=1e-3), torch.device("cpu")) is None


# nanochat scripts/base_train.py (92d63d4 per docs/variants.md "nanochat"; the three schedule functions as written
# there, with num_iterations T, warmdown_ratio 0.65, warmup_steps 40, final_lr_frac 0.05)
def _nanochat_lr(it: int, T: int, warmup: int = 40, ratio: float = 0.65, final: float = 0.05) -> float:
    warmdown = round(ratio * T)
    if it < warmup:
        return (it + 1) / warmup
    if it <= T - warmdown:
        return 1.0
    progress = (T - it) / warmdown
    return progress * 1.0 + (1 - progress) * final


def _nanochat_momentum(it: int, T: int, ratio: float = 0.65) -> float:
    warmdown = round(ratio * T)
    start = T - warmdown
    if it < 400:
        frac = it / 400
        return (1 - frac) * 0.85 + frac * 0.97
    if it >= start:
        progress = (it - start) / warmdown
        return 0.97 * (1 - progress) + 0.90 * progress
    return 0.97


def test_nanochat_schedules_are_base_trains() -> None:
    from muonlab.harness.optim import DECAY_SCHEDULES, MOMENTUM_SCHEDULES

    T = 2000
    sched = ScheduleSection(warmup_steps=40, cooldown_frac=0.65, cooldown="nanochat", final_lr_frac=0.05)
    f = lr_lambda(sched, T)
    start = T - round(0.65 * T)
    for it in [0, 1, 39, 40, 41, 699, 700, 701, 1000, 1999]:
        assert f(it) == pytest.approx(_nanochat_lr(it, T), rel=0, abs=1e-15), it
        assert MOMENTUM_SCHEDULES["nanochat"](0.95, it, start, T) == pytest.approx(_nanochat_momentum(it, T), abs=1e-15)
        wd = 0.28 * 0.5 * (1 + math.cos(math.pi * it / T))
        assert DECAY_SCHEDULES["cosine"](0.28, it, T) == pytest.approx(wd, abs=1e-15)


def test_muon_schedules_set_the_groups_each_step_and_leave_adamw_alone() -> None:
    from muonlab.harness.optim import apply_muon_schedules

    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    opt = build_optimizer(model, OptimizerSection(name="muon", preset="keller", lr=0.02, weight_decay=0.1))
    sched = ScheduleSection(cooldown_frac=0.5, momentum="nanochat", weight_decay="cosine")
    adam_before = [dict(g) for g in opt.param_groups if g["algorithm"] == "adamw"]
    for t in (0, 200, 600, 999):
        apply_muon_schedules(opt, sched, t, 1000)
        muon = [g for g in opt.param_groups if g["algorithm"] == "muon"]
        assert muon and all(g["momentum"] == pytest.approx(_nanochat_momentum(t, 1000, 0.5)) for g in muon)
        assert all(g["weight_decay"] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * t / 1000))) for g in muon)
        assert all(g["initial_weight_decay"] == 0.1 for g in muon)
    assert [dict(g) for g in opt.param_groups if g["algorithm"] == "adamw"] == adam_before


def test_lr_scale_multiplies_an_adamw_runs_lr() -> None:
    model = torch.nn.Linear(4, 4)
    opt = build_optimizer(model, OptimizerSection(name="adamw", lr=0.002, lr_scale=3.0))
    assert all(g["lr"] == pytest.approx(0.006) for g in opt.param_groups)
