"""Peers: ``torch.optim.Muon`` (torch 2.13, ``adjust_lr_fn`` None / "original" / "match_rms_adamw") against
the ``torch`` / ``torch_match_rms_adamw`` presets, and ``optax.contrib.muon`` against the ``optax`` preset.

torch.optim.Muon casts its NS to bf16 unconditionally, and so does the ``torch`` preset, so each step's
update is held to the bf16 bounds (rel <= 8e-2, cosine >= 0.998) over 5 steps on 2-D params, and the final
weights to rel 1e-3 (the updates are small next to the weights). optax runs in fp32 like the ``optax`` preset:
the net displacement after 5 steps is held to rel 1e-3. optax stores ``[in, out]``; the test transposes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from fasthelpers import BF16_COS, BF16_REL, cos, np64, rel

from muonlab import reference as R
from muonlab.fast import Muon, from_upstream

SHAPES = [(16, 32), (32, 16), (24, 24)]


@pytest.mark.peer
@pytest.mark.parametrize(
    ("adjust", "preset"), [(None, "torch"), ("original", "torch"), ("match_rms_adamw", "torch_match_rms_adamw")]
)
@pytest.mark.parametrize("shape", SHAPES)
def test_torch_optim_muon(adjust: str | None, preset: str, shape: tuple[int, int]) -> None:
    peer_cls = getattr(torch.optim, "Muon", None)
    if peer_cls is None:
        pytest.skip("torch.optim.Muon not available")
    gen = torch.Generator().manual_seed(3)
    w0 = torch.randn(shape, generator=gen)
    p_peer = torch.nn.Parameter(w0.clone())
    p_ours = torch.nn.Parameter(w0.clone())
    spec = R.get_preset(preset)
    peer = peer_cls([p_peer], lr=spec.lr, weight_decay=spec.weight_decay, adjust_lr_fn=adjust)
    ours = Muon([p_ours], preset, backend="torch")
    for _ in range(5):
        g = torch.randn(shape, generator=gen)
        before_peer, before_ours = np64(p_peer), np64(p_ours)
        p_peer.grad, p_ours.grad = g.clone(), g.clone()
        peer.step()
        ours.step()
        d_peer = before_peer * (1 - spec.lr * spec.weight_decay) - np64(p_peer)
        d_ours = before_ours * (1 - spec.lr * spec.weight_decay) - np64(p_ours)
        assert rel(d_ours, d_peer) <= BF16_REL
        assert cos(d_ours, d_peer) >= BF16_COS
    assert rel(np64(p_ours), np64(p_peer)) <= 1e-3
    # Same state layout as the peer: the momentum buffer.
    torch.testing.assert_close(
        ours.state[p_ours]["momentum_buffer"], peer.state[p_peer]["momentum_buffer"], rtol=1e-3, atol=1e-4
    )


def _optax_gap(tx: Any, spec: Any, shape: tuple[int, int], gen: torch.Generator, steps: int = 5) -> float:
    """Relative gap between ``W_T - W_0`` of `Muon` with ``spec`` and of the optax transformation ``tx``, both
    stepped ``steps`` times from the same weights with the same gradients (optax stores ``[in, out]``)."""
    import jax.numpy as jnp
    import optax

    w0 = torch.randn(shape, generator=gen)
    p = torch.nn.Parameter(w0.clone())
    ours = Muon([p], spec, backend="torch")
    params = {"w": jnp.asarray(w0.numpy().T)}
    state = tx.init(params)
    for _ in range(steps):
        g = torch.randn(shape, generator=gen)
        p.grad = g.clone()
        ours.step()
        updates, state = tx.update({"w": jnp.asarray(g.numpy().T)}, state, params)
        params = optax.apply_updates(params, updates)
    peer = np.asarray(params["w"], dtype=np.float64).T
    return rel(np64(p) - np64(w0), peer - np64(w0))


@pytest.mark.peer
@pytest.mark.parametrize("shape", [(16, 32), (32, 16)])
def test_optax_contrib_muon(shape: tuple[int, int]) -> None:
    pytest.importorskip("optax")
    import jax
    import optax

    jax.config.update("jax_enable_x64", False)
    spec = R.get_preset("optax")
    gen = torch.Generator().manual_seed(4)
    tx = optax.contrib.muon(learning_rate=spec.lr, beta=spec.momentum, eps=spec.eps, nesterov=spec.nesterov)
    assert _optax_gap(tx, spec, shape, gen) <= 1e-3


@pytest.mark.peer
@pytest.mark.parametrize("x64", [True, False])
@pytest.mark.parametrize("pre", ["frobenius", "spectral", "schatten", "aol"])
@pytest.mark.parametrize("shape", [(16, 40), (40, 16), (24, 24)])
def test_optax_orthogonalize_every_preconditioning(x64: bool, pre: str, shape: tuple[int, int]) -> None:
    """optax's own ``orthogonalize_via_newton_schulz`` (optax 0.2.8) against ``from_upstream("optax", ...)`` through
    the float64 reference: 1e-10 with ``jax_enable_x64``, the fp32 tolerance (1e-4) without."""
    pytest.importorskip("optax")
    import jax
    import jax.numpy as jnp
    from optax.contrib import _muon

    jax.config.update("jax_enable_x64", x64)
    try:
        spec = from_upstream("optax", preconditioning=pre, eps=1e-7)
        x = np.random.default_rng(8).standard_normal(shape)
        dtype = jnp.float64 if x64 else jnp.float32
        coeffs = jnp.asarray((3.4445, -4.7750, 2.0315), dtype=dtype)
        got = np.asarray(_muon.orthogonalize_via_newton_schulz(jnp.asarray(x, dtype=dtype), coeffs, 5, pre, 1e-7))
        want = R.orthogonalize(x, spec)
        assert rel(got.astype(np.float64), want) <= (1e-10 if x64 else 1e-4)
    finally:
        jax.config.update("jax_enable_x64", False)


@pytest.mark.peer
@pytest.mark.parametrize(("pre", "adaptive"), [("aol", True), ("schatten", False), ("frobenius", True)])
def test_optax_contrib_muon_options(pre: str, adaptive: bool) -> None:
    """Five steps of ``optax.contrib.muon(preconditioning=..., adaptive=...)`` (float32) against `Muon` with
    ``from_upstream("optax", ...)`` (float32 compute): the fp32 tolerance on ``W_T - W_0``."""
    pytest.importorskip("optax")
    import optax

    shape = (16, 32)
    spec = from_upstream("optax", learning_rate=0.02, preconditioning=pre, adaptive=adaptive)
    tx = optax.contrib.muon(learning_rate=0.02, preconditioning=pre, adaptive=adaptive)
    assert _optax_gap(tx, spec, shape, torch.Generator().manual_seed(6)) <= 1e-3
