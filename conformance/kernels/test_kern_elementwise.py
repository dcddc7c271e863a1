"""`fused_momentum` and `fused_apply` (Triton; interpreted on CPU) against float64 math and their torch twins.

float32 results are one or two roundings away from float64 (elementwise bounds of a few float32 ulps of the
magnitudes involved); bf16 stores round once to nearest, so they lie within half a bf16 ulp (plus the float32
error) of the float64 value computed from the same inputs.
"""

from __future__ import annotations

import pytest
import torch
from kernelhelpers import BF16_HALF_ULP, DEVICE, FP32_EPS, randn

from muonlab.fast.kernels.elementwise import (
    fused_apply,
    fused_apply_torch,
    fused_momentum,
    fused_momentum_torch,
)

SHAPES = [(1, 5), (7, 3), (33, 70), (3, 9, 11), (300,), (2, 3, 5, 7)]


def _momentum64(
    m: torch.Tensor, g: torch.Tensor, beta: float, form: str, nesterov: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    md, gd = m.double(), g.double()
    if form == "ema":
        m_new = beta * md + (1 - beta) * gd
        n = (1 - beta) * gd + beta * m_new if nesterov else m_new
    else:
        m_new = beta * md + gd
        n = gd + beta * m_new if nesterov else m_new
    return m_new, n


def _close(x: torch.Tensor, ref: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> bool:
    """``|x - ref| <= rel |ref| + 8 eps32 scale`` elementwise, ``rel`` half an ulp of ``dtype`` (0 for fp32)."""
    rel = BF16_HALF_ULP if dtype == torch.bfloat16 else 0.0
    return bool(((x.double() - ref).abs() <= rel * ref.abs() + 8 * FP32_EPS * scale).all())


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("form", ["ema", "sum"])
@pytest.mark.parametrize("shape", SHAPES)
def test_momentum_matches_float64_and_twin(shape: tuple[int, ...], form: str, nesterov: bool) -> None:
    m0, g = randn(*shape, seed=1), randn(*shape, seed=2)
    g_copy = g.clone()
    beta = 0.95
    buf, twin_buf = m0.clone(), m0.clone()
    n = fused_momentum(buf, g, beta=beta, form=form, nesterov=nesterov)
    nt = fused_momentum_torch(twin_buf, g, beta=beta, form=form, nesterov=nesterov)
    m_ref, n_ref = _momentum64(m0, g, beta, form, nesterov)
    scale = m0.double().abs() + g.double().abs()
    assert _close(buf, m_ref, scale, torch.float32)
    assert _close(n, n_ref, scale, torch.float32)
    assert _close(buf, twin_buf.double(), scale, torch.float32)
    assert _close(n, nt.double(), scale, torch.float32)
    assert torch.equal(g, g_copy)
    assert n.dtype == buf.dtype and n.shape == buf.shape and n.data_ptr() != buf.data_ptr()


@pytest.mark.parametrize("grad_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("buf_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("form", ["ema", "sum"])
def test_momentum_dtypes(form: str, buf_dtype: torch.dtype, grad_dtype: torch.dtype) -> None:
    m0, g = randn(33, 70, seed=3, dtype=buf_dtype), randn(33, 70, seed=4, dtype=grad_dtype)
    buf, twin_buf = m0.clone(), m0.clone()
    n = fused_momentum(buf, g, beta=0.9, form=form, nesterov=True)
    nt = fused_momentum_torch(twin_buf, g, beta=0.9, form=form, nesterov=True)
    m_ref, n_ref = _momentum64(m0, g, 0.9, form, True)
    scale = m0.double().abs() + g.double().abs()
    assert buf.dtype == n.dtype == buf_dtype
    assert _close(buf, m_ref, scale, buf_dtype)
    assert _close(n, n_ref, scale, buf_dtype)
    if buf_dtype == torch.bfloat16:
        # Both round once to nearest from float32 values that may differ by an ulp: one bf16 ulp apart.
        assert _close(buf, twin_buf.double(), scale + 2 * twin_buf.double().abs(), torch.bfloat16)
    else:
        assert _close(n, nt.double(), scale, buf_dtype)


@pytest.mark.parametrize("form", ["ema", "sum"])
def test_momentum_tensor_beta_equals_float_beta(form: str) -> None:
    """A 0-D tensor beta is read in the kernel; for a beta whose ``1 - beta`` is exact it matches bit for bit."""
    m0, g = randn(7, 45, seed=5), randn(7, 45, seed=6)
    b1, b2 = m0.clone(), m0.clone()
    n1 = fused_momentum(b1, g, beta=0.75, form=form, nesterov=True)
    n2 = fused_momentum(b2, g, beta=torch.tensor(0.75), form=form, nesterov=True)
    assert torch.equal(b1, b2) and torch.equal(n1, n2)


def test_momentum_rejects_bad_input_without_writing() -> None:
    buf, g = randn(4, 5, seed=7), randn(4, 5, seed=8)
    before = buf.clone()
    with pytest.raises(ValueError, match="form"):
        fused_momentum(buf, g, beta=0.9, form="optax", nesterov=True)
    with pytest.raises(ValueError, match="grad"):
        fused_momentum(buf, g[:3], beta=0.9, form="ema", nesterov=True)
    with pytest.raises(ValueError, match="beta"):
        fused_momentum(buf, g, beta=torch.ones(2), form="ema", nesterov=True)
    with pytest.raises(ValueError, match="buf"):
        fused_momentum(randn(5, 4, seed=9).mT, g, beta=0.9, form="ema", nesterov=True)
    assert torch.equal(buf, before)


def _apply64(
    w: torch.Tensor, u: torch.Tensor, lr: float, d: float, cautious: str, scale: torch.Tensor | None
) -> torch.Tensor:
    wd, ud = w.double(), u.double()
    if scale is not None:
        ud = ud * scale.double()
    mask = (
        torch.ones_like(wd) if cautious == "off" else ((ud * wd >= 0) if cautious == "ge" else (ud * wd > 0)).double()
    )
    return wd - d * mask * wd - lr * ud


def _scales(shape: tuple[int, ...]) -> list[torch.Tensor | None]:
    if len(shape) < 2:
        return [None]
    row = randn(*shape[:-1], 1, seed=10).abs() + 0.5
    col = randn(*((1,) * (len(shape) - 2)), 1, shape[-1], seed=11).abs() + 0.5
    return [None, row, col]


@pytest.mark.parametrize("cautious", ["off", "ge", "gt"])
@pytest.mark.parametrize("shape", SHAPES)
def test_apply_matches_float64_and_twin(shape: tuple[int, ...], cautious: str) -> None:
    w0, u = randn(*shape, seed=12), randn(*shape, seed=13)
    u_copy = u.clone()
    lr, d = 0.05, 0.01
    for scale in _scales(shape):
        w, wt = w0.clone(), w0.clone()
        fused_apply(w, u, lr_update=lr, decay_factor=d, cautious=cautious, scale=scale)
        fused_apply_torch(wt, u, lr_update=lr, decay_factor=d, cautious=cautious, scale=scale)
        ref = _apply64(w0, u, lr, d, cautious, scale)
        bound = w0.double().abs() + 3 * lr * u.double().abs()
        # The mask is exact (u*w never sits within rounding of 0 for these Gaussian draws).
        assert _close(w, ref, bound, torch.float32)
        assert _close(w, wt.double(), bound, torch.float32)
    assert torch.equal(u, u_copy)


def test_apply_bf16_param_rounds_once() -> None:
    w0 = randn(3, 17, 40, seed=14, dtype=torch.bfloat16)
    u = randn(3, 17, 40, seed=15, dtype=torch.bfloat16)
    scale = randn(3, 17, 1, seed=16).abs()
    w, wt = w0.clone(), w0.clone()
    fused_apply(w, u, lr_update=0.1, decay_factor=0.02, cautious="ge", scale=scale)
    fused_apply_torch(wt, u, lr_update=0.1, decay_factor=0.02, cautious="ge", scale=scale)
    ref = _apply64(w0, u, 0.1, 0.02, "ge", scale)
    bound = w0.double().abs() + u.double().abs()
    assert w.dtype == torch.bfloat16
    assert _close(w, ref, bound, torch.bfloat16)
    assert _close(w, wt.double(), bound + 2 * wt.double().abs(), torch.bfloat16)


@pytest.mark.parametrize("cautious", ["ge", "gt"])
def test_apply_cautious_mask_at_exact_zeros(cautious: str) -> None:
    """``u w = 0`` decays under ``"ge"`` and not under ``"gt"``; ``u w < 0`` never decays; all exact."""
    w0 = torch.tensor([[1.0, -2.0, 0.0, 3.0, -4.0, 0.0, 5.0]], device=DEVICE)
    u = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0, 0.0, -1.0]], device=DEVICE)
    lr, d = 0.25, 0.5
    w = w0.clone()
    fused_apply(w, u, lr_update=lr, decay_factor=d, cautious=cautious)
    decayed = w0 - w0 * d
    keep_zero = cautious == "ge"
    expected = torch.tensor(
        [
            [
                decayed[0, 0] if keep_zero else 1.0,  # u = 0, w > 0
                decayed[0, 1] if keep_zero else -2.0,  # u = 0, w < 0
                -lr,  # w = 0: decay of 0 is 0 either way
                decayed[0, 3] - lr,  # u w > 0: decayed
                -4.0 - lr,  # u w < 0: not decayed
                0.0,  # both 0
                5.0 + lr,  # u w < 0: not decayed
            ]
        ],
        device=DEVICE,
    )
    assert torch.equal(w, expected)
    wt = w0.clone()
    fused_apply_torch(wt, u, lr_update=lr, decay_factor=d, cautious=cautious)
    assert torch.equal(wt, expected)


@pytest.mark.parametrize("cautious", ["off", "ge", "gt"])
def test_apply_tensor_scalars_equal_float_scalars(cautious: str) -> None:
    w0, u = randn(33, 70, seed=17), randn(33, 70, seed=18)
    w1, w2 = w0.clone(), w0.clone()
    fused_apply(w1, u, lr_update=0.037, decay_factor=0.0021, cautious=cautious)
    fused_apply(w2, u, lr_update=torch.tensor(0.037), decay_factor=torch.tensor(0.0021), cautious=cautious)
    assert torch.equal(w1, w2)
    # The tensor's current value is what the kernel reads.
    lr = torch.tensor(0.037)
    w3, w4 = w0.clone(), w0.clone()
    lr.fill_(0.5)
    fused_apply(w3, u, lr_update=lr, decay_factor=0.0, cautious=cautious)
    fused_apply(w4, u, lr_update=0.5, decay_factor=0.0, cautious=cautious)
    assert torch.equal(w3, w4)


def test_apply_float64_keeps_float64_scalars() -> None:
    w0, u = randn(5, 9, seed=19, dtype=torch.float64), randn(5, 9, seed=20, dtype=torch.float64)
    w = w0.clone()
    fused_apply(w, u, lr_update=0.1, decay_factor=0.01, cautious="off")
    ref = w0 - w0 * 0.01 - u * 0.1
    assert torch.allclose(w, ref, rtol=1e-14, atol=1e-15)


def test_apply_zero_decay_float_skips_decay_term() -> None:
    w0 = torch.tensor([[float("inf"), 1.0]], device=DEVICE)
    u = torch.tensor([[0.0, 1.0]], device=DEVICE)
    w = w0.clone()
    fused_apply(w, u, lr_update=0.5, decay_factor=0.0, cautious="off")
    assert torch.equal(w, torch.tensor([[float("inf"), 0.5]], device=DEVICE))


def test_apply_rejects_bad_input_without_writing() -> None:
    w, u = randn(4, 6, seed=21), randn(4, 6, seed=22)
    before = w.clone()
    with pytest.raises(ValueError, match="cautious"):
        fused_apply(w, u, lr_update=0.1, decay_factor=0.1, cautious="yes")
    with pytest.raises(ValueError, match="update"):
        fused_apply(w, u[:, :5], lr_update=0.1, decay_factor=0.1, cautious="off")
    with pytest.raises(ValueError, match="scale"):
        fused_apply(w, u, lr_update=0.1, decay_factor=0.1, cautious="off", scale=randn(4, 6, seed=23))
    with pytest.raises(ValueError, match="scale"):
        fused_apply(w, u, lr_update=0.1, decay_factor=0.1, cautious="off", scale=randn(3, 1, seed=24))
    with pytest.raises(TypeError, match="lr_update"):
        fused_apply(w, u, lr_update="0.1", decay_factor=0.1, cautious="off")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="param"):
        fused_apply(randn(6, 4, seed=25).mT, u, lr_update=0.1, decay_factor=0.1, cautious="off")
    assert torch.equal(w, before)


def test_empty_tensors() -> None:
    e = torch.empty(0, 5, device=DEVICE)
    fused_apply(e, e.clone(), lr_update=0.1, decay_factor=0.1, cautious="ge")
    assert fused_momentum(e.clone(), e, beta=0.9, form="ema", nesterov=True).shape == (0, 5)
