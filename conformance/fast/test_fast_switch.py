"""Switching to muonlab mid-run: `Muon.load_state_dict` takes a ``torch.optim.Muon`` or KellerJordan/Muon state
dict (`muonlab.fast.peers`; docs/fast.md, "Switching from torch.optim.Muon / Keller's Muon").

Two claims per peer. The mapping is exact: right after loading, every muonlab buffer equals the peer's (EMA) or
the peer's over ``1 - beta`` (sum form), bit for bit up to that one division. The continuation is the peer's:
k peer steps, the switch, k muonlab steps (same preset) end where 2k peer steps end, within the bounds of
test_fast_peers.py: both peers run Newton-Schulz in bf16, so the Muon weights are held to rel 1e-3 (bf16 NS,
updates small next to the weights) and the Adam weights to rel 1e-5 (fp32 arithmetic in another order: a few
ulps per step on displacements of the lr's size).
"""

from __future__ import annotations

import copy

import peer_keller as K
import pytest
import torch
from fasthelpers import np64, rel

from muonlab.fast import Muon

SHAPES = [(16, 32), (48, 16), (24, 24), (16, 32)]  # not sorted by size, a repeated shape
K_STEPS = 3


def _params(shapes: list[tuple[int, ...]], seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g) * 0.5) for s in shapes]


def _grads(params: list[torch.nn.Parameter], step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(p.shape, generator=g) for p in params]


def _run(opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], steps: range) -> None:
    for t in steps:
        for p, g in zip(params, _grads(params, t), strict=True):
            p.grad = g
        opt.step()


def _clone(params: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(p.detach().clone()) for p in params]


@pytest.mark.peer
def test_switch_from_torch_optim_muon() -> None:
    params = _params(SHAPES, 0)
    peer = torch.optim.Muon(params, lr=1e-2, weight_decay=0.1, momentum=0.9)
    _run(peer, params, range(K_STEPS))
    ours_p = _clone(params)
    ours = Muon(ours_p, "torch", backend="torch")
    sd = copy.deepcopy(peer.state_dict())
    ours.load_state_dict(sd)
    for p, q in zip(params, ours_p, strict=True):
        assert torch.equal(ours.state[q]["momentum_buffer"], peer.state[p]["momentum_buffer"])
    group = ours.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (1e-2, 0.9, 0.1)  # the peer's, as torch loads
    _run(peer, params, range(K_STEPS, 2 * K_STEPS))
    _run(ours, ours_p, range(K_STEPS, 2 * K_STEPS))
    for p, q in zip(params, ours_p, strict=True):
        assert rel(np64(q), np64(p)) <= 1e-3
    loaded = ours.state_dict()  # muonlab's own format from here on: it round-trips
    again = Muon(_clone(ours_p), "torch", backend="torch")
    again.load_state_dict(loaded)


@pytest.mark.peer
def test_sum_form_gets_the_ema_buffer_over_one_minus_beta() -> None:
    """Into a sum-form spec (Moonlight, dion) the EMA buffer becomes ``M / (1 - beta)``; since Newton-Schulz is
    scale-invariant up to eps, the sum form then steps where the EMA form steps (fp32 compute, tight)."""
    params = _params(SHAPES[:3], 1)
    peer = torch.optim.Muon(params, lr=1e-2, weight_decay=0.0, momentum=0.9)
    _run(peer, params, range(K_STEPS))
    sd = peer.state_dict()
    runs = {}
    for form in ("ema", "sum"):
        ps = _clone(params)
        opt = Muon(ps, "torch", backend="torch", compute_dtype="float32", momentum_form=form, eps=1e-30)
        opt.load_state_dict(copy.deepcopy(sd))
        for p, q in zip(params, ps, strict=True):
            want = peer.state[p]["momentum_buffer"] / (1 - 0.9 if form == "sum" else 1.0)
            assert torch.equal(opt.state[q]["momentum_buffer"], want)
        _run(opt, ps, range(K_STEPS, 2 * K_STEPS))
        runs[form] = ps
    for a, b in zip(runs["ema"], runs["sum"], strict=True):
        assert rel(np64(a), np64(b)) <= 1e-5


@pytest.mark.peer
@pytest.mark.parametrize("cls", [K.Muon, K.SingleDeviceMuon])
def test_switch_from_keller_muon(cls: type[K._PlainMuon]) -> None:
    """Keller's ``Muon`` keeps its group sorted by size, ``SingleDeviceMuon`` does not; both map back."""
    params = _params(SHAPES, 2)
    peer = cls(list(params), lr=0.02, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.LambdaLR(peer, lambda t: 0.5 ** (t + 1))  # adds "initial_lr" to the group
    _run(peer, params, range(K_STEPS))
    for _ in range(K_STEPS):
        schedule.step()
    ours_p = _clone(params)
    ours = Muon(ours_p, "keller", backend="torch")
    ours.load_state_dict(copy.deepcopy(peer.state_dict()))
    group = ours.param_groups[0]
    assert (group["initial_lr"], group["lr"]) == (0.02, peer.param_groups[0]["lr"])  # the schedule's place
    for p, q in zip(params, ours_p, strict=True):
        assert torch.equal(ours.state[q]["momentum_buffer"], peer.state[p]["momentum_buffer"])
    _run(peer, params, range(K_STEPS, 2 * K_STEPS))
    _run(ours, ours_p, range(K_STEPS, 2 * K_STEPS))
    for p, q in zip(params, ours_p, strict=True):
        assert rel(np64(q), np64(p)) <= 1e-3


@pytest.mark.peer
@pytest.mark.parametrize("cls", [K.MuonWithAuxAdam, K.SingleDeviceMuonWithAuxAdam])
def test_switch_from_keller_muon_with_aux_adam(cls: type[K._Keller]) -> None:
    mats = _params(SHAPES, 3)
    vecs = _params([(16,), (32,)], 4)
    adam = {"params": vecs, "lr": 3e-3, "betas": (0.8, 0.95), "eps": 1e-10, "weight_decay": 0.01, "use_muon": False}
    muon = {"params": mats, "lr": 0.02, "momentum": 0.95, "weight_decay": 0.05, "use_muon": True}
    peer = cls([dict(adam), dict(muon)])
    every = vecs + mats
    _run(peer, every, range(K_STEPS))
    ours_m, ours_v = _clone(mats), _clone(vecs)
    ours = Muon(
        [{"params": ours_v, "algorithm": "adamw"}, {"params": ours_m, "algorithm": "muon"}], "keller", backend="torch"
    )
    ours.load_state_dict(copy.deepcopy(peer.state_dict()))
    for p, q in zip(vecs, ours_v, strict=True):
        st = ours.state[q]
        assert torch.equal(st["exp_avg"], peer.state[p]["exp_avg"]) and float(st["step"]) == K_STEPS
        assert torch.equal(st["exp_avg_sq"], peer.state[p]["exp_avg_sq"])
    assert ours.param_groups[0]["betas"] == (0.8, 0.95) and ours.param_groups[0]["lr"] == 3e-3
    _run(peer, every, range(K_STEPS, 2 * K_STEPS))
    _run(ours, ours_v + ours_m, range(K_STEPS, 2 * K_STEPS))
    for p, q in zip(vecs, ours_v, strict=True):
        assert rel(np64(q), np64(p)) <= 1e-5
    for p, q in zip(mats, ours_m, strict=True):
        assert rel(np64(q), np64(p)) <= 1e-3


def _snapshot(opt: Muon) -> list[tuple[str, torch.Tensor]]:
    return [(k, v.clone()) for p in opt.state for k, v in opt.state[p].items() if isinstance(v, torch.Tensor)]


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("groups", r"has 1 param groups, this optimizer 2"),
        ("algorithm", r"a KellerJordan/Muon adamw group, but param_groups\[0\] is 'muon'"),
        ("shapes", r"fit the group.s parameters .* neither in order nor sorted by size"),
        ("optax", r"momentum_form='optax' needs the step count"),
        ("unknown", r"not a muonlab.fast.Muon state dict .* nor one of torch.optim.Muon, KellerJordan/Muon"),
    ],
)
def test_what_cannot_be_mapped_is_refused(case: str, match: str) -> None:
    params = _params(SHAPES[:2], 5)
    peer = K.SingleDeviceMuon(list(params))
    _run(peer, params, range(2))
    sd = peer.state_dict()
    ours_p = _clone(params)
    groups: list[dict[str, object]] = [{"params": ours_p}]
    preset = {"optax": "optax"}.get(case, "keller")
    if case == "groups":
        groups.append({"params": _clone(_params([(3, 4)], 6))})
    if case == "algorithm":
        sd["param_groups"][0]["use_muon"] = False
        sd["param_groups"][0].update(betas=(0.9, 0.95), eps=1e-8)
        del sd["param_groups"][0]["momentum"]
    if case == "shapes":
        groups = [{"params": _clone(_params([(5, 7), (7, 5)], 7))}]
    if case == "unknown":
        sd["param_groups"][0]["foo"] = 1
    ours = Muon(groups, preset, backend="torch", compute_dtype="float32")
    flat = [p for g in ours.param_groups for p in g["params"]]
    for p in flat:
        p.grad = torch.ones_like(p)
    ours.step()
    before = _snapshot(ours)
    with pytest.raises(ValueError, match=match):
        ours.load_state_dict(sd)
    after = _snapshot(ours)
    assert [k for k, _ in before] == [k for k, _ in after]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(before, after, strict=True))
