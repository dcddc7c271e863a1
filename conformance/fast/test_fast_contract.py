"""The `muonlab.fast.Muon` contract, for every preset in the registry: torch optimizer conventions
(state_dict resume, LR schedulers, tensor lr), never mutating grads, skipping ``None`` grads, the non-finite
policy, AdamW groups, and bad input raising `ValueError` naming the culprit."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from fasthelpers import np64, rel

from muonlab import reference as R
from muonlab.fast import Muon

PRESETS = list(R.PRESETS)


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(6, 4), (4, 6), (6, 4), (3, 4, 5), (4, 2, 3, 3)]
    ps = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    ps.append(torch.nn.Parameter(torch.randn(5, 8, generator=gen).bfloat16()))
    return ps


def _adam_params(seed: int = 1) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in [(7,), (), (3, 5)]]


def _grads(params: list[torch.nn.Parameter], step: int) -> None:
    gen = torch.Generator().manual_seed(1000 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)


def _make(name: str, seed: int = 0, **kw: Any) -> tuple[Muon, list[torch.nn.Parameter]]:
    muon, adam = _params(seed), _adam_params(seed + 1)
    opt = Muon([{"params": muon}, {"params": adam, "algorithm": "adamw"}], name, backend="torch", **kw)
    return opt, muon + adam


def _snapshot(opt: Muon, params: list[torch.nn.Parameter]) -> list[Any]:
    return [p.detach().clone() for p in params] + [copy.deepcopy(opt.state[p]) for p in params]


def _same(a: list[Any], b: list[Any]) -> bool:
    for x, y in zip(a, b, strict=True):
        if isinstance(x, torch.Tensor):
            if not torch.equal(x, y):
                return False
        elif set(x) != set(y) or not all(torch.equal(x[k], y[k]) for k in x):
            return False
    return True


@pytest.mark.parametrize("name", PRESETS)
def test_state_dict_round_trip_resumes_bit_identically(name: str) -> None:
    opt, ps = _make(name)
    for t in range(6):
        _grads(ps, t)
        opt.step()
    opt_a, ps_a = _make(name)
    for t in range(3):
        _grads(ps_a, t)
        opt_a.step()
    saved = copy.deepcopy(opt_a.state_dict())
    saved_params = [p.detach().clone() for p in ps_a]
    opt_b, ps_b = _make(name, seed=5)  # different initial weights: everything must come from the checkpoint
    with torch.no_grad():
        for p, s in zip(ps_b, saved_params, strict=True):
            p.copy_(s)
    opt_b.load_state_dict(saved)
    assert opt_b.state[ps_b[-4]]["momentum_buffer"].dtype == torch.float32  # the bf16 param keeps fp32 state
    for t in range(3, 6):
        _grads(ps_b, t)
        opt_b.step()
    for p, q in zip(ps, ps_b, strict=True):
        assert torch.equal(p, q)
    for p, q in zip(ps, ps_b, strict=True):
        for k, v in opt.state[p].items():
            assert torch.equal(v, opt_b.state[q][k]), k


@pytest.mark.parametrize("name", PRESETS)
def test_lr_scheduler_drives_group_lr(name: str) -> None:
    opt, ps = _make(name)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5**t)
    manual, ps_m = _make(name)
    base = [g["lr"] for g in manual.param_groups]
    for t in range(3):
        _grads(ps, t)
        _grads(ps_m, t)
        for g, b in zip(manual.param_groups, base, strict=True):
            g["lr"] = b * 0.5**t
        opt.step()
        manual.step()
        sched.step()
    for p, q in zip(ps, ps_m, strict=True):
        assert torch.equal(p, q)
    assert opt.param_groups[0]["lr"] == pytest.approx(base[0] * 0.125)


@pytest.mark.parametrize("name", PRESETS)
def test_tensor_lr_equals_float_lr(name: str) -> None:
    spec = R.get_preset(name)
    opt_f, ps_f = _make(name, lr=spec.lr)
    opt_t, ps_t = _make(name, lr=torch.tensor(spec.lr, dtype=torch.float64))
    for t in range(3):
        _grads(ps_f, t)
        _grads(ps_t, t)
        opt_f.step()
        opt_t.step()
    for p, q in zip(ps_f, ps_t, strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", PRESETS)
def test_grads_never_mutated_and_none_grads_skipped(name: str) -> None:
    opt, ps = _make(name)
    _grads(ps, 0)
    opt.step()
    _grads(ps, 1)
    ps[1].grad = None
    ps[-1].grad = None
    grads = [None if p.grad is None else p.grad.clone() for p in ps]
    before = _snapshot(opt, [ps[1], ps[-1]])
    moved = ps[0].detach().clone()
    opt.step()
    for p, g in zip(ps, grads, strict=True):
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    assert _same(before, _snapshot(opt, [ps[1], ps[-1]]))
    assert not torch.equal(moved, ps[0])
    opt.zero_grad()
    assert all(p.grad is None for p in ps)


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_grad_raises_before_any_change(name: str, bad: float) -> None:
    opt, ps = _make(name)
    _grads(ps, 0)
    opt.step()
    _grads(ps, 1)
    ps[3].grad[1, 2, 3] = bad
    before = _snapshot(opt, ps)
    kind = "NaN" if bad != bad else "Inf"
    with pytest.raises(ValueError, match=rf"param_groups\[0\]\['params'\]\[3\] \(shape \(3, 4, 5\)\).*{kind}"):
        opt.step()
    assert _same(before, _snapshot(opt, ps))


@pytest.mark.parametrize("name", PRESETS)
def test_nonfinite_skip_policy(name: str) -> None:
    opt, ps = _make(name, nonfinite="skip")
    _grads(ps, 0)
    opt.step()
    _grads(ps, 1)
    ps[0].grad[0, 0] = float("nan")
    ps[-1].grad[0, 1] = float("-inf")
    before = _snapshot(opt, [ps[0], ps[-1]])
    others = [p.detach().clone() for p in ps[1:-1]]
    opt.step()
    assert _same(before, _snapshot(opt, [ps[0], ps[-1]]))
    assert all(not torch.equal(a, b) for a, b in zip(others, ps[1:-1], strict=True))


@pytest.mark.parametrize("name", PRESETS)
def test_matches_reference_step_with_adamw_group(name: str) -> None:
    spec = R.get_preset(name).replace(compute_dtype="float32")
    muon, adam = _params(0)[:4], _adam_params(1)
    opt = Muon([{"params": muon}, {"params": adam, "algorithm": "adamw"}], spec, backend="torch")
    ws = [np64(p) for p in muon + adam]
    states: list[Any] = [R.init_state(w, spec, use_muon=i < len(muon)) for i, w in enumerate(ws)]
    for t in range(3):
        _grads(muon + adam, t)
        ws, states = R.step(ws, [np64(p.grad) for p in muon + adam], states, spec)  # type: ignore[misc]
        opt.step()
    for p, w in zip(muon + adam, ws, strict=True):
        assert rel(np64(p), w) <= 1e-3
    assert opt.state[adam[0]]["exp_avg"].shape == adam[0].shape


def test_live_group_hyperparameters_are_used() -> None:
    spec = R.get_preset("moonlight").replace(compute_dtype="float32")
    p = torch.nn.Parameter(torch.randn(6, 4))
    w = np64(p)
    opt = Muon([p], spec, backend="torch")
    opt.param_groups[0]["weight_decay"] = 0.3
    opt.param_groups[0]["momentum"] = 0.5
    live = spec.replace(weight_decay=0.3, momentum=0.5)
    st = R.init_muon_state(w, live)
    for t in range(3):
        _grads([p], t)
        w, st = R.muon_step(w, np64(p.grad), st, live)
        opt.step()
    assert rel(np64(p), w) <= 1e-5


def test_adamw_group_defaults_follow_spec() -> None:
    a = torch.nn.Parameter(torch.zeros(3))
    opt = Muon(
        [{"params": [torch.nn.Parameter(torch.zeros(2, 2))]}, {"params": [a], "algorithm": "adamw"}], "moonlight"
    )
    g = opt.param_groups[1]
    spec = R.get_preset("moonlight")
    assert g["lr"] == spec.lr and g["betas"] == spec.adam_betas and g["eps"] == spec.adam_eps
    assert g["weight_decay"] == spec.weight_decay  # adam_weight_decay None shares it
    opt2 = Muon([{"params": [a], "algorithm": "adamw"}], "keller", lr=0.5)
    assert opt2.param_groups[0]["lr"] == 3e-4 and opt2.param_groups[0]["weight_decay"] == 0.0


def test_per_group_spec() -> None:
    p, q = torch.nn.Parameter(torch.randn(4, 6)), torch.nn.Parameter(torch.randn(4, 6))
    opt = Muon([{"params": [p]}, {"params": [q], "spec": "modded_normuon"}], "keller", backend="torch")
    _grads([p, q], 0)
    opt.step()
    assert "second_moment" in opt.state[q] and "second_moment" not in opt.state[p]
    assert opt.state[q]["second_moment"].shape == R.normuon_state_shape((4, 6), R.get_preset("modded_normuon"))
    assert opt.param_groups[1]["lr"] == R.get_preset("modded_normuon").lr


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"preset": "nope"}, "preset"),
        ({"bogus_knob": 1}, "bogus_knob"),
        ({"momentum": 1.5}, "momentum"),
        ({"ns_coefficients": "nope"}, "ns_coefficients"),
        ({"lr": -1.0}, "lr"),
        ({"backend": "cuda"}, "backend"),
    ],
)
def test_bad_arguments_raise_naming_the_field(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Muon([torch.nn.Parameter(torch.zeros(3, 3))], **kwargs)


def test_muon_param_with_ndim_below_2_raises_naming_it() -> None:
    ok = torch.nn.Parameter(torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['params'\]\[1\] has shape \(5,\)"):
        Muon(
            [{"params": [ok]}, {"params": [torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(5))]}]
        )
    with pytest.raises(ValueError, match="algorithm"):
        Muon([{"params": [ok], "algorithm": "sgd"}])


def test_state_dict_is_plain_data() -> None:
    opt, ps = _make("modded_normuon")
    _grads(ps, 0)
    opt.step()
    sd = opt.state_dict()
    assert isinstance(sd["param_groups"][0]["spec"], dict)
    import io

    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    opt2, _ = _make("modded_normuon")
    opt2.load_state_dict(loaded)
    assert opt2.param_groups[0]["spec"] == R.get_preset("modded_normuon")
    assert np.isfinite(np64(opt2.state[opt2.param_groups[0]["params"][0]]["momentum_buffer"])).all()


def _dtype_changed(p: torch.nn.Parameter) -> None:
    p.data = p.data.double()  # what model.double() does to an existing parameter
    p.grad = torch.ones_like(p)


def _grad_dtype_differs(p: torch.nn.Parameter) -> None:
    p.grad_dtype = None  # torch refuses a gradient of another dtype unless told to allow it
    try:
        p.grad = p.grad.double()  # type: ignore[union-attr]
    except RuntimeError as err:  # a torch without grad_dtype cannot make this case
        pytest.skip(f"this torch refuses a gradient of another dtype: {err}")


@pytest.mark.parametrize(
    ("index", "corrupt", "match"),
    [
        (2, lambda p: setattr(p, "grad", p.grad.to_sparse()), r"its gradient is torch.sparse_coo \(sparse\)"),
        (6, lambda p: setattr(p, "grad", p.grad.to_sparse()), r"its gradient is torch.sparse_coo \(sparse\)"),
        (0, _dtype_changed, r"its dtype changed from torch.float32 to torch.float64"),
        (1, _grad_dtype_differs, r"its gradient is torch.float64 \(4, 6\), the parameter torch.float32"),
    ],
)
def test_bad_gradients_raise_naming_the_parameter_before_any_change(index: int, corrupt: Any, match: str) -> None:
    """Sparse gradients, a parameter whose dtype changed since it was added and a gradient of another dtype are
    refused from their metadata, naming ``param_groups[i]['params'][j]``; weights and state stay as they were."""
    opt, ps = _make("keller", compute_dtype="float32")
    _grads(ps, 0)
    opt.step()
    _grads(ps, 1)
    before = _snapshot(opt, ps)
    corrupt(ps[index])
    group, j = (0, index) if index < 6 else (1, index - 6)
    with pytest.raises(
        ValueError, match=rf"param_groups\[{group}\]\['params'\]\[{j}\] .*{match}.*no parameter or state"
    ):
        opt.step()
    if index != 0:  # the dtype change itself rewrote that parameter
        assert _same(before, _snapshot(opt, ps))


def test_meta_and_zero_size_parameters_raise_naming_them() -> None:
    ok = torch.nn.Parameter(torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[1\] has shape \(0, 5\): a zero-size matrix"):
        Muon([ok, torch.nn.Parameter(torch.zeros(0, 5))])
    Muon(
        [{"params": [ok], "algorithm": "adamw"}, {"params": [torch.nn.Parameter(torch.zeros(0))], "algorithm": "adamw"}]
    )
    meta = torch.nn.Parameter(torch.zeros(4, 5, device="meta"))
    opt = Muon([meta], compute_dtype="float32")  # a model may be materialized after its optimizer is built
    meta.grad = torch.zeros(4, 5, device="meta")
    with pytest.raises(
        ValueError, match=r"param_groups\[0\]\['params'\]\[0\] \(shape \(4, 5\)\): it lives on the meta"
    ):
        opt.step()
    assert not opt.state
