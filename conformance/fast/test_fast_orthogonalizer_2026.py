"""The 2026 orthogonalizer stage on torch: Gram Newton-Schulz, the prescales and float16 compute against the float64
reference, the Triton route against the torch route, and half precision's tiny-input behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import muonlab.reference as R
from muonlab.contract import MuonSpec, choices
from muonlab.fast import Muon, orthogonalize

# Measured on these inputs (48x160 Gaussian stacks, 3 matrices): float64 <= 3e-14, float32 <= 7e-6 (PE/1.05 under
# the spectral prescale), Gram float16 2.5e-3, bf16 NS 1-2e-2; each bound below leaves a factor >= 3.
TOLERANCE = {"float64": 1e-12, "float32": 3e-5, "float16": 1e-2, "bfloat16": 8e-2}


def _x(shape: tuple[int, ...], seed: int = 1, norm: float | None = None) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(shape)
    return x if norm is None else x * (norm / np.linalg.norm(x))


@pytest.mark.parametrize("prescale", choices("prescale"))
@pytest.mark.parametrize("orth", ["newton_schulz", "gram_newton_schulz"])
@pytest.mark.parametrize("dtype", ["float64", "float32", "half"])
@pytest.mark.parametrize("shape", [(3, 48, 160), (2, 160, 48), (2, 40, 40)])
def test_fast_matches_reference(prescale: str, orth: str, dtype: str, shape: tuple[int, ...]) -> None:
    half = "float16" if orth == "gram_newton_schulz" else "bfloat16"  # each algorithm's half precision
    compute = half if dtype == "half" else dtype
    spec = MuonSpec(orthogonalizer=orth, prescale=prescale, ns_coefficients="gram_polar_express", compute_dtype=compute)  # type: ignore[arg-type]
    x = _x(shape)
    want = R.orthogonalize(x, spec)
    got = orthogonalize(torch.tensor(x, dtype=torch.float64 if dtype == "float64" else torch.float32), spec)
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


def test_magnitude_refuses_distributed_modes() -> None:
    p = torch.nn.Parameter(torch.randn(4, 6))
    with pytest.raises(ValueError, match=r"magnitude: 'dual_norm' is not supported with distributed"):
        Muon([p], MuonSpec(magnitude="dual_norm"), distributed="replicated")
