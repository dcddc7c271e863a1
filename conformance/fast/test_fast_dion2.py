"""Dion2 and the fixed-radius hyperball with decay (NeMo MuonHyperball) on torch: `muonlab.fast.Muon` against the
float64 reference (wide, tall, batched), skipped matrices left unchanged, and the distributed modes' refusal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fasthelpers import FP32_REL, np64, rel

import muonlab.reference as R
from muonlab.fast import Muon


@pytest.mark.parametrize("shape", [(8, 20), (20, 8), (3, 12, 20)])
@pytest.mark.parametrize("fraction", [0.25, 1.0])
@pytest.mark.parametrize("preset", ["dion2", "nordion2"])
def test_fast_dion2_matches_reference(shape: tuple[int, ...], fraction: float, preset: str) -> None:
    spec = R.get_preset(preset).replace(dion2_fraction=fraction, compute_dtype="float32")
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal(shape)
    w, state = w0, R.init_muon_state(w0, spec)
    p = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float32))
    opt = Muon([p], spec, backend="torch")
    for _ in range(4):
        g = rng.standard_normal(shape)
        w, state = R.muon_step(w, g, state, spec)
        p.grad = torch.tensor(g, dtype=torch.float32)
        opt.step()
    assert rel(np64(p.detach()) - w0, w - w0) <= FP32_REL
    np.testing.assert_allclose(np64(opt.state[p]["momentum_buffer"]), state.momentum, rtol=1e-5, atol=1e-5)
    if spec.normuon:
        assert state.second_moment is not None
        np.testing.assert_allclose(np64(opt.state[p]["second_moment"]), state.second_moment, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("preset", ["dion2", "nordion2"])
def test_skipped_matrix_keeps_its_dion2_buffer(preset: str) -> None:
    spec = R.get_preset(preset).replace(compute_dtype="float32", nonfinite="skip")
    p = torch.nn.Parameter(torch.randn(8, 16))
    q = torch.nn.Parameter(torch.randn(8, 16))
    opt = Muon([p, q], spec)
    p.grad, q.grad = torch.randn(8, 16), torch.randn(8, 16)
    opt.step()
    before = {k: v.clone() for k, v in opt.state[p].items()}
    w = p.detach().clone()
    p.grad, q.grad = torch.full((8, 16), float("nan")), torch.randn(8, 16)
    opt.step()
    assert torch.equal(p, w)
    for k, v in before.items():
        assert torch.equal(opt.state[p][k], v), k


@pytest.mark.parametrize("shape", [(8, 14), (3, 14, 8)])
def test_fast_fixed_hyperball_with_decay_matches_reference(shape: tuple[int, ...]) -> None:
    """NeMo's MuonHyperball (fixed radius, decoupled decay before the step) in `muonlab.fast`; a skipped
    parameter stays where it was, undecayed."""
    spec = R.from_upstream(
        "emerging_optimizers_hyperball", hyperball_radius=2.0, lr=0.05, weight_decay=0.3, fp32_matmul_prec="highest"
    ).replace(nonfinite="skip")
    rng = np.random.default_rng(2)
    w0 = rng.standard_normal(shape)
    w, state = w0, R.init_muon_state(w0, spec)
    p = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float32))
    opt = Muon([p], spec, backend="torch")
    for _ in range(4):
        g = rng.standard_normal(shape)
        w, state = R.muon_step(w, g, state, spec)
        p.grad = torch.tensor(g, dtype=torch.float32)
        opt.step()
    assert rel(np64(p.detach()) - w0, w - w0) <= FP32_REL
    before = p.detach().clone()
    p.grad = torch.full(shape, float("nan"))
    opt.step()
    assert torch.equal(p, before)
