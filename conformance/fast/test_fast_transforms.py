"""Equilibration and post-orthogonalization on torch (`muonlab.fast.transforms`): the nanochat preset's invariant
through `Muon`, and the transforms against the float64 reference (their math: `muonlab.reference.transforms`)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import muonlab.reference as R
from muonlab.contract import MuonSpec, choices, get_preset
from muonlab.fast import Muon
from muonlab.fast.transforms import EQUILIBRATIONS, POST_ORTHS


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (1, 64)])
def test_nanochat_update_norm_is_lr_sqrt_m(shape: tuple[int, int]) -> None:
    """float64 parameters (float64 state and compute): ``||W_new - W||_F = lr sqrt(m)`` to 1e-9, for a normal, a
    tiny (1e-9) and a large gradient."""
    lr = 0.02
    p = torch.nn.Parameter(torch.randn(shape, dtype=torch.float64))
    opt = Muon([p], get_preset("nanochat").replace(compute_dtype="float64"), lr=lr, backend="torch")
    for scale in (1.0, 1e-9, 30.0):
        before = p.detach().clone()
        p.grad = scale * torch.randn(shape, dtype=torch.float64)
        opt.step()
        assert abs(float((p.detach() - before).norm()) - lr * math.sqrt(shape[0])) <= 1e-9


@pytest.mark.parametrize("mode", [m for m in choices("equilibrate") if m != "none"])
def test_equilibrations_match_the_reference(mode: str) -> None:
    spec = MuonSpec(equilibrate=mode, equilibrate_eps=1e-6)  # type: ignore[arg-type]
    x = np.random.default_rng(0).standard_normal((3, 8, 20))
    x[0, 2] = 0.0
    rule = EQUILIBRATIONS[mode]  # type: ignore[index]
    assert rule is not None
    got = rule(torch.tensor(x), spec.equilibrate_exponent, spec.equilibrate_eps).numpy()
    assert np.allclose(got, R.equilibrate(x, spec), rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("mode", [m for m in choices("post_orth") if m != "none"])
def test_post_orths_match_the_reference(mode: str) -> None:
    spec = MuonSpec(post_orth=mode)  # type: ignore[arg-type]
    u = np.random.default_rng(1).standard_normal((3, 8, 20))
    rule = POST_ORTHS[mode]  # type: ignore[index]
    assert rule is not None
    assert np.allclose(rule(torch.tensor(u)).numpy(), R.post_orth(u, spec), rtol=1e-12, atol=0)
