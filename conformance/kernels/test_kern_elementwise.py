"""`fused_momentum` (Triton; interpreted on CPU) against float64 math and their torch twins.

float32 results are one or two roundings away from float64 (elementwise bounds of a few float32 ulps of the
magnitudes involved); bf16 stores round once to nearest, so they lie within half a bf16 ulp (plus the float32
error) of the float64 value computed from the same inputs.
"""

from __future__ import annotations

import pytest
import torch
from kernelhelpers import BF16_HALF_ULP, DEVICE, FP32_EPS, randn

from muonlab.fast.kernels.elementwise import (
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


def test_empty_tensors() -> None:
    e = torch.empty(0, 5, device=DEVICE)
    assert fused_momentum(e.clone(), e, beta=0.9, form="ema", nesterov=True).shape == (0, 5)
