"""The 2026 orthogonalizer stage on torch: Gram Newton-Schulz, the prescales and float16 compute against the float64
reference, the Triton route against the torch route, and half precision's tiny-input behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import muonlab.reference as R
from muonlab.contract import MuonSpec, choices
from muonlab.fast import orthogonalize

# Measured on these inputs (48x160 Gaussian stacks, 3 matrices): float64 <= 3e-14, float32 <= 7e-6 (PE/1.05 under
# the spectral prescale), Gram float16 2.5e-3, bf16 NS 1-2e-2; each bound below leaves a factor >= 3.
# TF32 (float16's 11-bit significand, float32's range) <= 7.1e-3 (AOL, Gram, AVX2).
TOLERANCE = {"float64": 1e-12, "float32": 3e-5, "tfloat32": 2e-2, "float16": 1e-2, "bfloat16": 8e-2}


def _x(shape: tuple[int, ...], seed: int = 1, norm: float | None = None) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(shape)
    return x if norm is None else x * (norm / np.linalg.norm(x))


@pytest.mark.parametrize("prescale", choices("prescale"))
@pytest.mark.parametrize("orth", ["newton_schulz", "gram_newton_schulz"])
@pytest.mark.parametrize("dtype", ["float64", "float32", "tfloat32", "half"])
@pytest.mark.parametrize("shape", [(3, 48, 160), (2, 160, 48), (2, 40, 40)])
def test_fast_matches_reference(prescale: str, orth: str, dtype: str, shape: tuple[int, ...]) -> None:
    half = "float16" if orth == "gram_newton_schulz" else "bfloat16"  # each algorithm's half precision
    compute = half if dtype == "half" else dtype
    spec = MuonSpec(orthogonalizer=orth, prescale=prescale, ns_coefficients="gram_polar_express", compute_dtype=compute)  # type: ignore[arg-type]
    x = _x(shape)
    want = R.orthogonalize(x, spec)
    got = orthogonalize(torch.tensor(x, dtype=torch.float64 if compute == "float64" else torch.float32), spec)
    err = np.linalg.norm(got.double().numpy() - want) / np.linalg.norm(want)
    assert err <= TOLERANCE[compute], err


@pytest.mark.parametrize("prescale", choices("prescale"))
@pytest.mark.parametrize("orth", ["newton_schulz", "gram_newton_schulz"])
def test_triton_route_matches_torch_route(prescale: str, orth: str) -> None:
    """The symmetric kernels (interpreted on CPU) serve ``A``, ``R`` and ``b R + c R^2`` of both algorithms."""
    pytest.importorskip("triton")
    import os

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the Triton route runs on CPU only under TRITON_INTERPRET=1")
    spec = MuonSpec(orthogonalizer=orth, prescale=prescale, compute_dtype="float32")  # type: ignore[arg-type]
    x = torch.tensor(_x((2, 32, 96)), dtype=torch.float32)
    a = orthogonalize(x, spec, backend="torch")
    b = orthogonalize(x, spec, backend="triton")
    assert float((a - b).norm() / a.norm()) <= 1e-5


def test_float16_underflows_where_bfloat16_keeps_the_gain_regime() -> None:
    """``||X||_F = 1e-14``: ``X / (||X|| + 1e-7)`` has entries near 1e-9, below float16's smallest subnormal
    (6e-8), so Gram NS in float16 returns exact zeros (finite, no NaN), where bf16 (float32's exponent range)
    keeps the gain-regime output ``prod(a) X / eps``. At ``||X||_F = 1e-9`` float16 is still accurate."""
    gram16 = MuonSpec(orthogonalizer="gram_newton_schulz", compute_dtype="float16")
    ns_bf16 = MuonSpec(compute_dtype="bfloat16")
    tiny = _x((64, 256), norm=1e-14)
    out16 = orthogonalize(torch.tensor(tiny, dtype=torch.float32), gram16)
    assert torch.isfinite(out16).all() and bool((out16 == 0).all())
    want = R.orthogonalize(tiny, ns_bf16)
    got = orthogonalize(torch.tensor(tiny, dtype=torch.float32), ns_bf16).double().numpy()
    assert np.linalg.norm(got - want) / np.linalg.norm(want) <= TOLERANCE["bfloat16"]
    small = _x((64, 256), norm=1e-9)
    want = R.orthogonalize(small, gram16)
    got = orthogonalize(torch.tensor(small, dtype=torch.float32), gram16).double().numpy()
    assert np.linalg.norm(got - want) / np.linalg.norm(want) <= TOLERANCE["float16"]


def test_tf32_rounds_to_ten_mantissa_bits_to_nearest_ties_away() -> None:
    from muonlab.fast.orthogonalize import tf32

    ulp = 2.0**-10
    x = torch.tensor([1.0, 1 + ulp / 2, 1 + ulp / 2 - 2**-20, 1 + 1.5 * ulp, -(1 + ulp / 2), 2.0**-130, 3.0e38])
    want = [1.0, 1 + ulp, 1.0, 1 + 2 * ulp, -(1 + ulp), 2.0**-130, None]
    got = tf32(x)
    for g, w in zip(got.tolist()[:-1], want[:-1], strict=True):
        assert g == w
    r = tf32(torch.randn(4096) * 1e3)
    bits = r.view(torch.int32)
    assert bool(((bits & 0x1FFF) == 0).all())  # 13 low bits dropped
    src = torch.randn(4096, dtype=torch.float64)
    rel = ((tf32(src.float()).double() - src) / src).abs().max()
    assert float(rel) <= 2.0**-11 * 1.001  # half an ulp of a 10-bit mantissa (and float32's own rounding)


def _tf32_reference(x: np.ndarray, spec: MuonSpec) -> np.ndarray:
    """Newton-Schulz in float64 with each product's operands rounded to TF32 (ties away): an independent
    statement of what ``compute_dtype="tfloat32"`` computes, up to float32 accumulation and storage."""

    def r(a: np.ndarray) -> np.ndarray:
        bits = a.astype(np.float32).view(np.int32).astype(np.int64)
        return (((bits + 0x1000) & ~0x1FFF).astype(np.int32)).view(np.float32).astype(np.float64)

    transpose = x.shape[-2] > x.shape[-1]
    xm = np.swapaxes(x, -2, -1) if transpose else x
    xm = (xm / (np.linalg.norm(xm, axis=(-2, -1), keepdims=True) + spec.eps)).astype(np.float32).astype(np.float64)
    for a, b, c in spec.schedule:
        g = r(xm) @ np.swapaxes(r(xm), -2, -1)
        poly = b * g + c * (r(g) @ r(g))
        xm = a * xm + r(poly) @ r(xm)
    return np.swapaxes(xm, -2, -1) if transpose else xm


@pytest.mark.parametrize("shape", [(2, 48, 160), (2, 160, 48)])
def test_tfloat32_is_float32_with_tf32_operands(shape: tuple[int, ...]) -> None:
    """``compute_dtype="tfloat32"`` (NeMo ``fp32_matmul_prec="high"``) equals the independent TF32 emulation to
    float32 accumulation error, and differs from true float32 by TF32's rounding (so the rounding happened). One
    iteration: after that, float32-level differences flip a few operand roundings (probability ~ 1e-7 / 2^-11 per
    entry, each an error of 2^-11), which the iteration amplifies (measured 3.6e-7 vs 1.2e-5 at one step,
    2.5e-5 vs 1.7e-4 at two); at five steps the whole map is held to the reference above."""
    x = _x(shape, seed=3)
    spec = MuonSpec(compute_dtype="tfloat32", ns_steps=1)
    got = orthogonalize(torch.tensor(x, dtype=torch.float32), spec).double().numpy()
    emulated = _tf32_reference(x, spec)
    fp32 = orthogonalize(torch.tensor(x, dtype=torch.float32), spec.replace(compute_dtype="float32")).double().numpy()
    to_emulated = np.linalg.norm(got - emulated) / np.linalg.norm(emulated)
    to_fp32 = np.linalg.norm(got - fp32) / np.linalg.norm(fp32)
    assert to_emulated <= 2e-6 < 5e-6 <= to_fp32, (to_emulated, to_fp32)


def test_unguarded_norm_is_reduced_in_float64() -> None:
    """``eps_mode="none"`` (NeMo ``normalize_in_double=True``): an all-zero input gives NaN on both sides, as
    upstream; ``||X||_F = 1e-24`` (whose float32 sum of squares underflows to 0) is still orthogonalized, where
    NeMo's default clamp (``eps = 1e-15``) leaves ``X / 1e-15``, far below the unit band."""
    spec = MuonSpec(eps=1e-15, eps_mode="none", compute_dtype="float32")
    zero = np.zeros((8, 24))
    assert np.isnan(R.orthogonalize(zero, spec)).all()
    assert torch.isnan(orthogonalize(torch.zeros(8, 24), spec)).all()
    tiny = _x((8, 24), seed=5, norm=1e-24)
    assert float(torch.tensor(tiny, dtype=torch.float32).square().sum()) == 0.0  # float32 underflows
    want = R.orthogonalize(tiny, spec)
    got = orthogonalize(torch.tensor(tiny, dtype=torch.float32), spec).double().numpy()
    assert np.linalg.norm(got - want) / np.linalg.norm(want) <= TOLERANCE["float32"]
    assert np.linalg.norm(want) > 1.0  # orthogonalized: singular values near 1
    clamped = orthogonalize(torch.tensor(tiny, dtype=torch.float32), spec.replace(eps_mode="clamp"))
    assert float(clamped.double().norm()) < 1e-3
