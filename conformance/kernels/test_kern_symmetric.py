"""`xxt` and `ba_plus_caa` (Triton; interpreted on CPU) against float64 math and against their torch twins.

Shapes are small and odd (not multiples of the 16-wide interpreter blocks, several blocks per side, batched)
so every masking and mirroring path runs. float32 accumulates in float32 (relative error ~1e-6); a bf16
result rounds once, so every entry lies within half a bf16 ulp (plus the float32 accumulation error) of the
float64 product of the same bf16 inputs.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from kernelhelpers import BF16_HALF_ULP, DEVICE, FP32_EPS, randn, rel_fro

from muonlab.fast.kernels import _common
from muonlab.fast.kernels._common import interpreter_loop_problem
from muonlab.fast.kernels.symmetric import ba_plus_caa, ba_plus_caa_torch, xxt, xxt_torch

SHAPES = [(1, 5), (5, 1), (7, 3), (16, 16), (33, 70), (40, 17), (3, 33, 20), (2, 1, 9)]
DTYPES = [torch.float32, torch.bfloat16]
KELLER = (3.4445, -4.7750, 2.0315)


def _gram64(x: torch.Tensor) -> torch.Tensor:
    xd = x.double()
    return xd @ xd.mT


def _accum_bound(x: torch.Tensor) -> torch.Tensor:
    """A float32 accumulation bound per entry: ``K eps32 (|X| |X|^T)``."""
    xa = x.double().abs()
    return x.shape[-1] * FP32_EPS * (xa @ xa.mT)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_xxt_matches_float64(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    x = randn(*shape, seed=sum(shape), dtype=dtype)
    y = xxt(x)
    ref = _gram64(x)
    assert y.shape == ref.shape and y.dtype == dtype
    if dtype == torch.float32:
        assert rel_fro(y, ref) <= 1e-5
    else:
        err = (y.double() - ref).abs()
        assert bool((err <= BF16_HALF_ULP * ref.abs() + _accum_bound(x)).all())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_xxt_matches_twin_and_is_exactly_symmetric(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    x = randn(*shape, seed=7 + sum(shape), dtype=dtype)
    y, t = xxt(x), xxt_torch(x)
    assert torch.equal(y, y.mT)
    assert torch.equal(t, t.mT)
    if dtype == torch.float32:
        assert rel_fro(y, t) <= 1e-5
    else:
        # Both round the same float32-accumulated value once; accumulation order may move it by one ulp.
        assert bool(((y.double() - t.double()).abs() <= 2 * BF16_HALF_ULP * t.double().abs() + _accum_bound(x)).all())


def test_xxt_out_argument_strided_input_and_wider_output() -> None:
    x = randn(3, 21, 18, seed=1)
    out = torch.full((3, 21, 21), float("nan"), device=DEVICE)
    res = xxt(x, out=out)
    assert res is out
    assert rel_fro(out, _gram64(x)) <= 1e-5
    # A transposed (non-contiguous) view is read through its strides.
    xt = randn(3, 18, 21, seed=2).mT
    assert rel_fro(xxt(xt), _gram64(xt)) <= 1e-5
    # bf16 input into a float32 output: one rounding of the float32 accumulator, i.e. float32 accuracy.
    xb = randn(25, 19, seed=3, dtype=torch.bfloat16)
    o32 = xxt(xb, out=torch.empty(25, 25, device=DEVICE))
    assert o32.dtype == torch.float32 and rel_fro(o32, _gram64(xb)) <= 1e-5


def test_xxt_degenerate_shapes() -> None:
    assert xxt(torch.empty(0, 4, 5, device=DEVICE)).shape == (0, 4, 4)
    assert xxt(torch.empty(0, 5, device=DEVICE)).shape == (0, 0)
    z = xxt(torch.empty(4, 0, device=DEVICE))
    assert torch.equal(z, torch.zeros(4, 4, device=DEVICE))


def test_xxt_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="x"):
        xxt(torch.ones(3, device=DEVICE))
    with pytest.raises(TypeError, match="x"):
        xxt(torch.ones(3, 3, dtype=torch.int64, device=DEVICE))
    with pytest.raises(ValueError, match="out"):
        xxt(torch.ones(3, 4, device=DEVICE), out=torch.empty(4, 4, device=DEVICE))
    with pytest.raises(ValueError, match="a"):
        ba_plus_caa(torch.ones(3, 4, device=DEVICE), 1.0, 1.0)
    with pytest.raises(TypeError, match="b"):
        ba_plus_caa(torch.ones(3, 3, device=DEVICE), "1", 1.0)  # type: ignore[arg-type]


def _symmetric_input(shape: tuple[int, ...], seed: int, dtype: torch.dtype) -> torch.Tensor:
    """``X X^T`` of a Frobenius-normalized ``X`` (as in Newton-Schulz): symmetric, eigenvalues in [0, 1]."""
    x = randn(*shape, seed=seed)
    x = x / torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True)
    return xxt_torch(x).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 3), (7, 3), (33, 70), (3, 19, 40), (2, 17, 5)])
def test_ba_plus_caa_matches_float64_and_twin(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    a = _symmetric_input(shape, seed=11 + sum(shape), dtype=dtype)
    _, b, c = KELLER
    z, t = ba_plus_caa(a, b, c), ba_plus_caa_torch(a, b, c)
    ad = a.double()
    ref = b * ad + c * (ad @ ad)
    bound = a.shape[-1] * FP32_EPS * (abs(b) * ad.abs() + abs(c) * (ad.abs() @ ad.abs()))
    assert z.shape == a.shape and z.dtype == dtype
    assert torch.equal(z, z.mT)
    if dtype == torch.float32:
        assert rel_fro(z, ref) <= 1e-5
        assert rel_fro(z, t) <= 1e-5
    else:
        assert bool(((z.double() - ref).abs() <= BF16_HALF_ULP * ref.abs() + bound).all())
        assert bool(((z.double() - t.double()).abs() <= 2 * BF16_HALF_ULP * ref.abs() + bound).all())


def test_one_newton_schulz_iteration_matches_float64() -> None:
    """``a X + (b A + c A A) X`` with the kernels equals the float64 quintic on a batch of wide matrices."""
    x = randn(3, 20, 45, seed=5)
    x = x / torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True)
    a, b, c = KELLER
    got = torch.baddbmm(x, ba_plus_caa(xxt(x), b, c), x, beta=a)
    xd = x.double()
    ad = xd @ xd.mT
    ref = a * xd + (b * ad + c * ad @ ad) @ xd
    assert rel_fro(got, ref) <= 1e-5


@pytest.mark.skipif(DEVICE.type == "cuda", reason="checks the CPU-without-interpreter error")
def test_cpu_tensor_without_interpreter_is_a_runtime_error() -> None:
    code = (
        "import torch\n"
        "from muonlab.fast.kernels.symmetric import xxt\n"
        "try:\n"
        "    xxt(torch.ones(3, 4))\n"
        "except RuntimeError as e:\n"
        "    assert 'TRITON_INTERPRET' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("triton_version", "numpy_version", "refused"),
    [("3.6.0", "2.4.6", True), ("3.6.1", "2.5.0rc1", True), ("3.6.0", "2.3.5", False), ("3.6.0", "1.26.0", False),
     ("3.7.1", "2.4.6", False), ("3.9.0", "2.5.0", False)],
)  # fmt: skip
def test_interpreter_loop_problem_names_the_versions(triton_version: str, numpy_version: str, refused: bool) -> None:
    """triton 3.6's interpreter cannot take a runtime loop bound under numpy >= 2.4 (docs/install.md)."""
    problem = interpreter_loop_problem(triton_version, numpy_version)
    if refused:
        assert problem is not None
        assert f"triton {triton_version}" in problem and f"numpy {numpy_version}" in problem
        assert "numpy < 2.4 or triton >= 3.7" in problem
    else:
        assert problem is None
    with pytest.raises(ValueError, match="version"):
        interpreter_loop_problem("nightly", numpy_version)


@pytest.mark.skipif(DEVICE.type == "cuda", reason="the interpreter's version check")
def test_interpreter_with_a_broken_loop_bound_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a triton/numpy pair whose interpreter cannot run the kernel, the wrappers raise before launching
    (a clear message instead of the interpreter's TypeError deep in the kernel)."""
    monkeypatch.setattr(_common.triton, "__version__", "3.6.0")
    monkeypatch.setattr(_common.np, "__version__", "2.4.0")
    with pytest.raises(RuntimeError, match=r"xxt: triton 3\.6\.0's interpreter .* numpy 2\.4\.0"):
        xxt(randn(2, 3, 4, seed=0))
    with pytest.raises(RuntimeError, match=r"ba_plus_caa: triton 3\.6\.0's interpreter"):
        ba_plus_caa(randn(3, 3, seed=1), 1.0, 1.0)


def test_out_dtype_is_the_input_dtype_or_float32() -> None:
    """A launch table has a variant per (input, output) pair it admits: the input's dtype or float32."""
    x = randn(5, 7, seed=4)
    with pytest.raises(TypeError, match="out"):
        xxt(x, out=torch.empty(5, 5, dtype=torch.bfloat16, device=DEVICE))
    with pytest.raises(TypeError, match="out"):
        xxt_torch(x, out=torch.empty(5, 5, dtype=torch.float16, device=DEVICE))
    with pytest.raises(TypeError, match="x"):
        xxt(x.double())
