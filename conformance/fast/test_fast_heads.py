"""Per-head orthogonalization (param-group key ``"heads"``; dion ``num_heads``, DeepSpeed per-head Muon): a
``[H d, n]`` matrix steps as the batch ``[H, d, n]`` of its row blocks, each orthogonalized and shape-scaled on
its own, which is the reference's step on the reshaped parameter (docs/fast.md, "Per-head Muon")."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from fasthelpers import FP32_REL, np64, rel

import muonlab.reference as R
from muonlab.contract import from_upstream
from muonlab.fast import Muon


def _grads(shape: tuple[int, ...], n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(shape, generator=g) for _ in range(n)]


@pytest.mark.parametrize("preset", ["keller", "moonlight", "modded_normuon"])
@pytest.mark.parametrize("layout", ["linear", "conv1d"])
def test_heads_step_is_the_reference_on_the_row_blocks(preset: str, layout: str) -> None:
    heads, d, n = 4, 6, 20
    spec = R.get_preset(preset).replace(compute_dtype="float32")
    w0 = torch.randn(heads * d, n, generator=torch.Generator().manual_seed(1))
    stored = w0.clone() if layout == "linear" else w0.T.contiguous()  # GPT-2 Conv1D keeps [in, out]
    p = torch.nn.Parameter(stored)
    group = {"params": [p], "heads": [heads]}
    if layout == "conv1d":
        group["matrix_dims"] = [(1, 0)]
    opt = Muon([group], spec, backend="torch")
    whole = torch.nn.Parameter(w0.clone())
    opt_whole = Muon([whole], spec, backend="torch")
    w = w0.double().numpy().reshape(heads, d, n)
    state = R.init_muon_state(w, spec)
    for g in _grads((heads * d, n), 3):
        p.grad = g.clone() if layout == "linear" else g.T.contiguous()
        whole.grad = g.clone()
        opt.step()
        opt_whole.step()
        w, state = R.muon_step(w, g.double().numpy().reshape(heads, d, n), state, spec, lr=spec.lr)
    got = np64(p.detach() if layout == "linear" else p.detach().T)
    w0n = np64(w0)
    assert rel(got - w0n, w.reshape(heads * d, n) - w0n) <= FP32_REL
    # a different map from the whole-matrix step (the polar factor of a stack is not the stack of polar factors)
    assert rel(np64(whole.detach()) - w0n, got - w0n) > 1e-2


def test_heads_state_round_trips() -> None:
    spec = R.get_preset("modded_normuon").replace(compute_dtype="float32")

    def run(opt: Muon, p: torch.nn.Parameter, grads: list[torch.Tensor]) -> None:
        for g in grads:
            p.grad = g.clone()
            opt.step()

    grads = _grads((12, 8), 4)
    p1 = torch.nn.Parameter(torch.randn(12, 8, generator=torch.Generator().manual_seed(2)))
    p2 = torch.nn.Parameter(p1.detach().clone())
    o1 = Muon([{"params": [p1], "heads": [3]}], spec, backend="torch")
    run(o1, p1, grads)
    o2 = Muon([{"params": [p2], "heads": [3]}], spec, backend="torch")
    run(o2, p2, grads[:2])
    saved = copy.deepcopy(o2.state_dict())
    assert tuple(saved["state"][0]["momentum_buffer"].shape) == (3, 4, 8)  # the state has the view's shape
    o3 = Muon([{"params": [p2], "heads": [3]}], spec, backend="torch")
    o3.load_state_dict(saved)
    run(o3, p2, grads[2:])
    assert torch.equal(p1, p2)


def test_heads_are_validated() -> None:
    p = torch.nn.Parameter(torch.randn(12, 8))
    with pytest.raises(ValueError, match=r"heads'\]\[0\]: 5 heads do not divide the 12 rows"):
        Muon([{"params": [p], "heads": [5]}])
    with pytest.raises(ValueError, match="only Muon groups"):
        Muon([{"params": [p], "heads": [3], "algorithm": "adamw"}])
    with pytest.raises(ValueError, match="is a batch"):
        Muon([{"params": [torch.nn.Parameter(torch.randn(2, 12, 8))], "heads": [3]}])
    with pytest.raises(ValueError, match="parallel to 'params'"):
        Muon([{"params": [p], "heads": [3, 3]}])
    with pytest.raises(ValueError, match="'heads' group option"):
        from_upstream("deepspeed", num_heads=12)
    np.testing.assert_equal(Muon([{"params": [p], "heads": [1]}]).param_groups[0]["heads"], [None])
