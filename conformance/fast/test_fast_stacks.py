"""The stacked step of `muonlab.fast.Muon` (docs/fast.md "Speed", "Conventions"): the on-device skip mask, the
stack cap, state kept as views into per-shape stacks, and the one backend decision.

* ``nonfinite="skip"``: a parameter with a non-finite gradient keeps its values and state bit for bit, and the
  others end bit-identical to an optimizer that never had it (per-matrix results do not depend on the batch);
* ``max_stack_bytes``: stacks cut into chunks (a 3-D parameter split across chunks included) give the same
  parameters and state as one stack, bitwise;
* state entries are views into the stacks; replacing them (or loading a checkpoint) rebuilds the stacks;
* `route`: float64 never takes a kernel; a tensor ``lr`` stays the same (moved-once) tensor in its group.
"""

from __future__ import annotations

import pytest
import torch

from muonlab.fast import Muon
from muonlab.fast.backend import route

SHAPES = [(8, 12), (8, 12), (12, 8), (3, 8, 12), (6, 6)]


def _params(seed: int, shapes: list[tuple[int, ...]] = SHAPES) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]


def _grads(params: list[torch.nn.Parameter], seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=gen) for p in params]


@pytest.mark.parametrize("preset", ["keller", "modded_normuon", "moonlight", "optax", "ngpt"])
def test_skip_is_exact_for_skipped_and_healthy_parameters(preset: str) -> None:
    bad = 3  # the 3-D parameter: its matrices share a stack with parameter 0 and 1's shape
    ps = _params(0)
    healthy = [p for i, p in enumerate(_params(0)) if i != bad]
    opt = Muon(ps, preset, backend="torch", nonfinite="skip")
    ref = Muon(healthy, preset, backend="torch")
    for t in range(3):
        gs = _grads(ps, 10 + t)
        for p, g in zip(ps, gs, strict=True):
            p.grad = g
        for p, g in zip(healthy, [g for i, g in enumerate(gs) if i != bad], strict=True):
            p.grad = g.clone()
        if t == 2:
            ps[bad].grad[1, 2, 3] = float("nan")
            before = ps[bad].detach().clone()
            state = {k: v.clone() for k, v in opt.state[ps[bad]].items()}
        opt.step()
        ref.step()
    assert torch.equal(ps[bad], before)
    assert all(torch.equal(v, opt.state[ps[bad]][k]) for k, v in state.items())
    for p, q in zip([p for i, p in enumerate(ps) if i != bad], healthy, strict=True):
        assert torch.equal(p, q)
        assert all(torch.equal(v, ref.state[q][k]) for k, v in opt.state[p].items())


@pytest.mark.parametrize("preset", ["keller", "modded_normuon", "optax"])
@pytest.mark.parametrize("cap", [1, 8 * 12 * 4, 2 * 8 * 12 * 4])
def test_stack_cap_splits_without_changing_results(preset: str, cap: int) -> None:
    whole, cut = _params(1), _params(1)
    a = Muon(whole, preset, backend="torch", max_stack_bytes=10**9)
    b = Muon(cut, preset, backend="torch", max_stack_bytes=cap)
    for t in range(3):
        for p, q, g in zip(whole, cut, _grads(whole, 20 + t), strict=True):
            p.grad, q.grad = g, g.clone()
        a.step()
        b.step()
    for p, q in zip(whole, cut, strict=True):
        assert torch.equal(p, q)
        assert all(torch.equal(v, b.state[q][k]) for k, v in a.state[p].items())


def test_bad_stack_cap_raises_naming_it() -> None:
    for bad in (0, -5, 1.5, True):
        with pytest.raises(ValueError, match="max_stack_bytes"):
            Muon(_params(2), "keller", max_stack_bytes=bad)


def test_state_is_stacked_and_rebuilt_when_replaced() -> None:
    ps = _params(3)
    opt = Muon(ps, "keller", backend="torch")
    for p, g in zip(ps, _grads(ps, 30), strict=True):
        p.grad = g
    opt.step()
    m0, m1 = opt.state[ps[0]]["momentum_buffer"], opt.state[ps[1]]["momentum_buffer"]
    assert m0.untyped_storage().data_ptr() == m1.untyped_storage().data_ptr()  # one [B, m, n] stack
    twin = _params(3)
    ref = Muon(twin, "keller", backend="torch")
    for p, g in zip(twin, _grads(twin, 30), strict=True):
        p.grad = g
    ref.step()
    # a user replacing a state tensor: the next step copies it into new stacks and uses its values
    opt.state[ps[0]]["momentum_buffer"] = m0.clone() * 2.0
    ref.state[twin[0]]["momentum_buffer"].mul_(2.0)
    for p, q, g in zip(ps, twin, _grads(ps, 31), strict=True):
        p.grad, q.grad = g, g.clone()
    opt.step()
    ref.step()
    assert all(torch.equal(p, q) for p, q in zip(ps, twin, strict=True))


def test_route_keeps_float64_on_torch_and_lr_tensor_is_kept() -> None:
    cpu = torch.device("cpu")
    assert not route("triton", cpu, torch.float64)
    assert route("triton", cpu, torch.float32)
    assert not route("torch", cpu, torch.float32)
    assert not route("auto", cpu, torch.bfloat16)
    lr = torch.tensor(0.01)
    opt = Muon(_params(4), "keller", lr=lr, backend="triton")
    assert opt.param_groups[0]["lr"] is lr  # already on the parameters' device: not copied
    ps = [torch.nn.Parameter(torch.randn(6, 10, dtype=torch.float64))]
    ps[0].grad = torch.randn(6, 10, dtype=torch.float64)
    # float64 state and a float64 iteration take the torch ops, even on CPU without the Triton interpreter
    Muon(ps, "keller", backend="triton", compute_dtype="float64").step()
    assert torch.isfinite(ps[0]).all()
