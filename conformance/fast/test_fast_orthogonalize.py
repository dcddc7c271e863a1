"""`muonlab.fast.orthogonalize` against the float64 reference `muonlab.reference.orthogonalize`.

fp32: relative Frobenius error <= 1e-3 on every shape and preset. bf16: <= 8e-2 with cosine >= 0.998
(DESIGN.md), and never worse than 2x plain torch bf16 Newton-Schulz math (the yardstick, median over draws).

Finding (measured, see test_polar_express_bf16_rank1_is_chaotic): with the Polar Express sets in bf16,
rank-1 inputs (1xN, Nx1) and small matrices exceed 8e-2 for *any* bf16 implementation, the plain-torch
yardstick included (up to ~0.27 on rank-1, a magnitude error with cosine ~1): the first quintic has slope
~16 at sigma = 1/1.02 and the iterates overshoot to ~1.3, so the map is chaotic under bf16 rounding. The
absolute bf16 bound is therefore asserted for PE sets on matrices of 16x32 and larger only.

Likewise, small near-square Gaussian matrices have singular values near 0, where the quintic's gain
(~485 for NS5) amplifies bf16 rounding: on 6x6, 1% of draws give cosine < 0.998 here and 4% with the
yardstick (measured over 200 draws). The absolute bound is asserted where ``max(m, n) >= 2 min(m, n)`` or
``min(m, n) >= 16`` (the design's measurements were on 64x64 and larger); the yardstick check runs everywhere.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from fasthelpers import BF16_COS, BF16_REL, FP32_REL, SHAPES, cos, np64, plain_bf16_ns, rel

from muonlab import reference as R
from muonlab.fast import orthogonalize
from muonlab.fast.orthogonalize import matrix_view_shape, newton_schulz

PRESET_NAMES = list(R.PRESETS)
LARGE = [(16, 32), (32, 16), (2, 16, 24)]


def _pe(spec: R.MuonSpec) -> bool:
    return max(abs(t[0]) for t in spec.coefficients) > 5.0


def _abs_bound_applies(spec: R.MuonSpec, shape: tuple[int, ...]) -> bool:
    m, n = matrix_view_shape(shape, spec)[-2:]
    if min(m, n) >= 16:
        return True
    return not _pe(spec) and max(m, n) >= 2 * min(m, n)


def _seed(*key: object) -> int:
    return zlib.crc32(repr(key).encode())


@pytest.mark.parametrize("name", PRESET_NAMES)
@pytest.mark.parametrize("shape", SHAPES + LARGE)
def test_fp32_matches_reference(name: str, shape: tuple[int, ...]) -> None:
    spec = R.get_preset(name).replace(compute_dtype="float32")
    gen = torch.Generator().manual_seed(_seed(name, shape))
    x = torch.randn(shape, generator=gen)
    out = orthogonalize(x, spec, backend="torch")
    assert out.shape == x.shape and out.dtype == x.dtype
    assert rel(np64(out), R.orthogonalize(np64(x), spec)) <= FP32_REL


@pytest.mark.parametrize("name", PRESET_NAMES)
@pytest.mark.parametrize("shape", SHAPES + LARGE)
def test_bf16_matches_reference(name: str, shape: tuple[int, ...]) -> None:
    spec = R.get_preset(name).replace(compute_dtype="bfloat16")
    gen = torch.Generator().manual_seed(_seed(name, shape, 1))
    ours, yard = [], []
    # Rank-1 PE results are bimodal (~0.05 or ~0.22, by how sigma rounds); more draws keep the median stable.
    draws = 41 if min(shape[-2:]) == 1 else 9
    for _ in range(draws):
        x = torch.randn(shape, generator=gen)
        ref = R.orthogonalize(np64(x), spec)
        o = np64(orthogonalize(x, spec, backend="torch"))
        mats = x.reshape(-1, *matrix_view_shape(shape, spec)[-2:])
        y = np64(plain_bf16_ns(mats, spec).reshape(shape))
        ours.append(rel(o, ref))
        yard.append(rel(y, ref))
        if _abs_bound_applies(spec, shape):
            assert rel(o, ref) <= BF16_REL
            assert cos(o, ref) >= BF16_COS
    assert float(np.median(ours)) <= 2.0 * float(np.median(yard))


@pytest.mark.parametrize("name", ["modded_normuon", "dion"])
def test_polar_express_bf16_rank1_is_chaotic(name: str) -> None:
    """Documents the finding in the module docstring: the yardstick itself breaks 8e-2 on rank-1 inputs,
    while the direction is exact (cosine ~1) and our median error stays at the yardstick's."""
    spec = R.get_preset(name).replace(compute_dtype="bfloat16")
    gen = torch.Generator().manual_seed(7)
    ours, yard, coss = [], [], []
    for _ in range(60):
        x = torch.randn(1, 7, generator=gen)
        ref = R.orthogonalize(np64(x), spec)
        o = np64(orthogonalize(x, spec, backend="torch"))
        ours.append(rel(o, ref))
        yard.append(rel(np64(plain_bf16_ns(x, spec)), ref))
        coss.append(cos(o, ref))
    assert max(yard) > BF16_REL
    assert min(coss) >= 0.9999
    assert float(np.median(ours)) <= 2.0 * float(np.median(yard))


def test_svd_polar_factor() -> None:
    for cd in ("float32", "float64"):
        spec = R.get_preset("keller").replace(orthogonalizer="svd", compute_dtype=cd)
        x = torch.randn(3, 5, 8, dtype=torch.float64)
        assert rel(np64(orthogonalize(x, spec)), R.orthogonalize(np64(x), spec)) <= 1e-5
    rank_deficient = torch.zeros(4, 6)
    rank_deficient[0, 0] = 2.0
    out = orthogonalize(rank_deficient, spec)
    assert torch.allclose(out, (rank_deficient > 0).float())


def test_float64_compute_is_tight_and_zero_maps_to_zero() -> None:
    spec = R.get_preset("dion").replace(compute_dtype="float64")
    x = torch.randn(2, 3, 7, 5, dtype=torch.float64)
    assert rel(np64(orthogonalize(x, spec)), R.orthogonalize(np64(x), spec)) <= 1e-12
    assert torch.equal(orthogonalize(torch.zeros(4, 6), "keller"), torch.zeros(4, 6))


def test_batched_equals_one_by_one_and_transpose_rule() -> None:
    spec = R.get_preset("keller").replace(compute_dtype="float32")
    x = torch.randn(5, 9, 4)
    stacked = orthogonalize(x, spec)
    single = torch.stack([orthogonalize(m, spec) for m in x])
    torch.testing.assert_close(stacked, single, rtol=1e-5, atol=1e-6)
    coeffs = R.schedule(spec.ns_coefficients, spec.ns_steps)
    assert torch.allclose(newton_schulz(x.mT, coeffs), newton_schulz(x, coeffs).mT, atol=1e-6)


def test_nd_modes_and_input_dtype_kept() -> None:
    x = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    for mode in ("flatten", "batch"):
        spec = R.get_preset("keller").replace(nd_mode=mode, compute_dtype="float32")
        out = orthogonalize(x, spec)
        assert out.dtype == torch.float64
        assert rel(np64(out), R.orthogonalize(np64(x), spec)) <= FP32_REL
    assert orthogonalize(x.bfloat16(), "keller").dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (torch.randn(5), "at least 2 dims"),
        (torch.zeros(0, 3), "empty"),
        (torch.ones(2, 2, dtype=torch.int64), "floating"),
    ],
)
def test_bad_input_raises(x: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        orthogonalize(x, "keller")


def test_bad_backend_and_preset_raise() -> None:
    with pytest.raises(ValueError, match="backend"):
        orthogonalize(torch.randn(3, 3), "keller", backend="cuda")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="preset"):
        orthogonalize(torch.randn(3, 3), "nope")
