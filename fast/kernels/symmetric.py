"""Symmetric Gram kernels of the Newton-Schulz / Polar Express iteration (docs/variants.md 0.2, 3.5, 8.3).

One quintic iteration on a wide ``X`` is ``A = X X^T``, ``B = b A + c A A``, ``X <- a X + B X``. Both ``A``
and ``B`` are symmetric, so `xxt` and `ba_plus_caa` compute only the output blocks on or below the
diagonal and store each block a second time into its mirror position: about half the FLOPs of a plain
matmul (modded-nanogpt ``triton_kernels.py`` ``XXT`` / ``ba_plus_cAA`` by @byronxu99; dion
``newton_schulz_triton.py`` ``ns_line_1`` / ``ns_line_2``).

Numerics: products accumulate in float32 and round once to the output dtype at store. Element ``(i, j)``
with ``i >= j`` is stored from the block that computed it and element ``(j, i)`` receives the same value,
so the output is exactly symmetric. float32 inputs use IEEE products, or TF32 when
``torch.backends.cuda.matmul.allow_tf32`` is set (the same switch torch's own matmul follows).

Each kernel has a torch twin (``<name>_torch``) with the same signature and semantics: float32 matmul,
one rounding, and the lower triangle mirrored onto the upper one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

import torch
import triton
import triton.language as tl

from ._common import (
    Family,
    Variant,
    check_launchable,
    device_family,
    round_bf16,
    triton_type,
)

__all__ = [
    "CONFIGS",
    "SymConfig",
    "ba_plus_caa",
    "ba_plus_caa_torch",
    "launch_table",
    "supports",
    "variants",
    "xxt",
    "xxt_torch",
]

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def supports(dtype: torch.dtype) -> bool:
    """Whether `xxt` / `ba_plus_caa` take inputs of ``dtype`` (float32, bfloat16, float16; float64 goes to
    the torch twins: Triton's ``tl.dot`` has no float64 tensor-core path)."""
    return dtype in _DTYPES


def _sym_kernel_impl(
    x_ptr: tl.tensor,
    a_ptr: tl.tensor,
    out_ptr: tl.tensor,
    M: tl.tensor,
    K: tl.tensor,
    sxb: tl.tensor,
    sxm: tl.tensor,
    sxk: tl.tensor,
    sab: tl.tensor,
    sam: tl.tensor,
    san: tl.tensor,
    sob: tl.tensor,
    som: tl.tensor,
    son: tl.tensor,
    alpha: tl.tensor,
    beta: tl.tensor,
    EPILOGUE: tl.constexpr,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
    ROUND_BF16: tl.constexpr,
    BM: tl.constexpr,
    BN: tl.constexpr,
    BK: tl.constexpr,
) -> None:
    """``out[b] = X[b] X[b]^T`` (``EPILOGUE`` false) or ``alpha X[b] X[b]^T + beta A[b]`` (``EPILOGUE`` true;
    ``A`` read on and below the diagonal), block ``(pid_m, pid_n)`` of batch ``program_id(1)``."""
    pid = tl.program_id(0)
    bat = tl.program_id(1).to(tl.int64)
    num_pid_n = tl.cdiv(M, BN)
    pid_m = pid // num_pid_n
    pid_n = pid % num_pid_n
    m0 = pid_m * BM
    n0 = pid_n * BN
    # Blocks entirely above the diagonal hold no element (i, j) with i >= j: their mirror does the work.
    if m0 + BM <= n0:
        return
    offs_m = m0 + tl.arange(0, BM)
    offs_n = n0 + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    x_base = x_ptr + bat * sxb
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        kk = k0 + offs_k
        lhs = tl.load(
            x_base + offs_m[:, None] * sxm + kk[None, :] * sxk,
            mask=(offs_m[:, None] < M) & (kk[None, :] < K),
            other=0.0,
        )
        rhs = tl.load(
            x_base + offs_n[None, :] * sxm + kk[:, None] * sxk,
            mask=(offs_n[None, :] < M) & (kk[:, None] < K),
            other=0.0,
        )
        if UPCAST:
            lhs = lhs.to(tl.float32)
            rhs = rhs.to(tl.float32)
        acc = tl.dot(lhs, rhs, acc, input_precision="ieee") if IEEE else tl.dot(lhs, rhs, acc)
    inside = (offs_m[:, None] < M) & (offs_n[None, :] < M)
    if EPILOGUE:
        a_blk = tl.load(
            a_ptr + bat * sab + offs_m[:, None] * sam + offs_n[None, :] * san,
            mask=inside & (offs_m[:, None] >= offs_n[None, :]),
            other=0.0,
        )
        acc = alpha * acc + beta * a_blk.to(tl.float32)
    res = round_bf16(acc) if ROUND_BF16 else acc.to(out_ptr.dtype.element_ty)
    out_base = out_ptr + bat * sob
    # On/below the diagonal in place; strictly below also into the mirror position (j, i).
    tl.store(
        out_base + offs_m[:, None] * som + offs_n[None, :] * son,
        res,
        mask=inside & (offs_m[:, None] >= offs_n[None, :]),
    )
    tl.store(
        out_base + offs_n[None, :] * som + offs_m[:, None] * son,
        res,
        mask=inside & (offs_m[:, None] > offs_n[None, :]),
    )


_sym_kernel = triton.jit(_sym_kernel_impl)


@dataclass(frozen=True)
class SymConfig:
    """Tile and launch shape of the symmetric kernel: ``BM x BN`` output blocks, ``BK`` deep K steps."""

    bm: int
    bn: int
    bk: int
    num_warps: int
    num_stages: int


CONFIGS: Mapping[Family, Mapping[str, SymConfig]] = {
    # 16-wide blocks keep the interpreter fast (it runs the program instances one by one on the CPU).
    "interpret": {kind: SymConfig(16, 16, 16, 1, 1) for kind in ("ieee", "tf32", "16bit")},
    # Shared memory of the pipelined loop: stages-1 buffers of (BM + BN) x BK operands (64 KiB for the 16-bit
    # and TF32 tiles), inside the 99 KiB of sm_86 / sm_89 / sm_120, so one table serves every non-Hopper part.
    # IEEE float32 runs on FMA units (no tensor cores): a 64 x 64 tile over 8 warps keeps the accumulator and
    # operands in registers (BK = 32 or 4 warps spill on triton 3.6 or sit at 254 registers on 3.9).
    "sm80": {
        "ieee": SymConfig(64, 64, 16, 8, 3),
        "tf32": SymConfig(128, 128, 32, 8, 3),
        "16bit": SymConfig(128, 128, 64, 8, 3),
    },
    # modded-nanogpt's H100 tile for bf16 (128, 128, 64; 8 warps, 4 stages: 128 KiB); TF32 halves BK so its
    # float32 tiles need the same bytes; IEEE float32 as on sm80.
    "sm90": {
        "ieee": SymConfig(64, 64, 16, 8, 3),
        "tf32": SymConfig(128, 128, 32, 8, 4),
        "16bit": SymConfig(128, 128, 64, 8, 4),
    },
}
"""Per family and operand kind (``"ieee"`` float32, ``"tf32"`` float32, ``"16bit"`` bf16/fp16) the tiles the
wrappers launch; their shared memory and registers are checked by ``conformance/kernels/test_kern_compile.py``."""

LaunchKey = tuple[torch.dtype, torch.dtype, bool, bool]
"""``(input dtype, output dtype, epilogue, tf32)``: what selects a variant of the symmetric kernel."""


def _operand_kind(dtype: torch.dtype, tf32: bool) -> str:
    if dtype == torch.float32:
        return "tf32" if tf32 else "ieee"
    return "16bit"


@cache
def launch_table(family: Family) -> Mapping[LaunchKey, tuple[Mapping[str, int | bool], SymConfig]]:
    """Every launch `xxt` / `ba_plus_caa` can make on ``family``: ``(constexprs, config)`` per `LaunchKey`.

    The output is the input's dtype or float32 (a wider accumulator store); ``tf32`` only for float32 inputs.
    In the interpreter 16-bit operands are upcast to float32 (triton 3.9 multiplies interpreted 16-bit floats as
    their raw integer bits; products of 16-bit floats are exact in float32) and bfloat16 stores round in the
    kernel (`round_bf16`).
    """
    interpret = family == "interpret"
    table: dict[LaunchKey, tuple[Mapping[str, int | bool], SymConfig]] = {}
    for dtype in _DTYPES:
        for out_dtype in dict.fromkeys((dtype, torch.float32)):
            for tf32 in (False, True) if dtype == torch.float32 else (False,):
                for epilogue in (False, True):
                    cfg = CONFIGS[family][_operand_kind(dtype, tf32)]
                    upcast = interpret and dtype != torch.float32
                    constexprs: dict[str, int | bool] = {
                        "EPILOGUE": epilogue,
                        "IEEE": upcast or (dtype == torch.float32 and not tf32),
                        "UPCAST": upcast,
                        "ROUND_BF16": interpret and out_dtype == torch.bfloat16,
                        "BM": cfg.bm,
                        "BN": cfg.bn,
                        "BK": cfg.bk,
                    }
                    table[(dtype, out_dtype, epilogue, tf32)] = (constexprs, cfg)
    return table


_INTS = ("M", "K", "sxb", "sxm", "sxk", "sab", "sam", "san", "sob", "som", "son")


def variants(family: Family) -> tuple[Variant, ...]:
    """The compiled forms of the symmetric kernel on ``family``: every `launch_table` entry, with the unit
    strides Triton specializes for the layouts the wrappers see (row-major ``X``; ``xxt`` also a transposed
    view, as Newton-Schulz passes for tall matrices; contiguous ``A`` and output). Other integers are ``i32``."""
    out: list[Variant] = []
    for (dtype, out_dtype, epilogue, tf32), (constexprs, cfg) in launch_table(family).items():
        layouts = (
            {"row": ("sxk", "san", "son")} if epilogue else {"row": ("sxk", "san", "son"), "col": ("sxm", "sam", "son")}
        )
        for layout, units in layouts.items():
            sig: dict[str, str] = {
                "x_ptr": "*" + triton_type(dtype),
                "a_ptr": "*" + triton_type(dtype),
                "out_ptr": "*" + triton_type(out_dtype),
            }
            sig.update({name: "constexpr" if name in units else "i32" for name in _INTS})
            sig.update({"alpha": "fp32", "beta": "fp32"})
            sig.update({name: "constexpr" for name in constexprs})
            name = (
                f"{'ba_plus_caa' if epilogue else 'xxt'}-{triton_type(dtype)}"
                f"{'-tf32' if tf32 else ''}-to-{triton_type(out_dtype)}-{layout}"
            )
            out.append(
                Variant(
                    name=name,
                    kernel=_sym_kernel,
                    signature=sig,
                    constexprs={**dict.fromkeys(units, 1), **constexprs},
                    num_warps=cfg.num_warps,
                    num_stages=cfg.num_stages,
                )
            )
    return tuple(out)


def _as_batch(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim not in (2, 3):
        raise ValueError(f"{name}: expected shape [M, K] or [B, M, K], got {tuple(x.shape)}")
    if x.dtype not in _DTYPES:
        raise TypeError(f"{name}: expected float32, bfloat16 or float16, got {x.dtype}")
    return x if x.ndim == 3 else x.unsqueeze(0)


def _out_batch(out: torch.Tensor | None, like: torch.Tensor, shape: tuple[int, ...], name: str) -> torch.Tensor:
    """``out`` checked against ``shape`` (a ``[B, M, M]`` view of it), or a new tensor."""
    if out is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"out: expected a torch.Tensor or None, got {type(out).__name__}")
    full = shape if like.ndim == 3 else shape[1:]
    if tuple(out.shape) != full:
        raise ValueError(f"out: expected shape {full} for {name} of shape {tuple(like.shape)}, got {tuple(out.shape)}")
    if out.dtype not in (like.dtype, torch.float32):
        raise TypeError(f"out: expected dtype {like.dtype} or torch.float32 (as the input {name}), got {out.dtype}")
    if out.device != like.device:
        raise ValueError(f"out: expected device {like.device}, got {out.device}")
    return out if out.ndim == 3 else out.unsqueeze(0)


def _launch(x3: torch.Tensor, a3: torch.Tensor | None, out3: torch.Tensor, alpha: float, beta: float) -> None:
    batch, m, k = x3.shape
    family = device_family(_sym_kernel, x3.device)
    tf32 = x3.dtype == torch.float32 and bool(torch.backends.cuda.matmul.allow_tf32)
    entry = launch_table(family).get((x3.dtype, out3.dtype, a3 is not None, tf32))
    if entry is None:
        raise TypeError(f"out: expected dtype {x3.dtype} or torch.float32 for a {x3.dtype} input, got {out3.dtype}")
    if batch == 0 or m == 0:
        return
    constexprs, cfg = entry
    a = x3 if a3 is None else a3
    grid = (triton.cdiv(m, cfg.bm) * triton.cdiv(m, cfg.bn), batch)
    _sym_kernel[grid](
        x3,
        a,
        out3,
        m,
        k,
        *x3.stride(),
        *a.stride(),
        *out3.stride(),
        alpha,
        beta,
        **constexprs,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )


def xxt(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``X X^T`` for ``x`` of shape ``[M, K]`` or ``[B, M, K]`` (docs/variants.md 3.5 ``XXT``).

    Accumulates in float32 and rounds once to ``out.dtype`` (default ``x.dtype``); computes the blocks on or
    below the diagonal only and mirrors them, so the result is exactly symmetric. Returns ``out``.
    """
    x3 = _as_batch(x, "x")
    check_launchable(_sym_kernel, x3, "xxt", runtime_loop=True)
    batch, m, _ = x3.shape
    res = _out_batch(out, x, (batch, m, m), "x")
    _launch(x3, None, res, 1.0, 0.0)
    return res if x.ndim == 3 else res[0]


def _check_square(a: torch.Tensor) -> torch.Tensor:
    a3 = _as_batch(a, "a")
    if a3.shape[-1] != a3.shape[-2]:
        raise ValueError(f"a: expected square (symmetric) matrices, got shape {tuple(a.shape)}")
    return a3


def _check_coef(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a Python float, got {type(value).__name__}")
    return float(value)


def ba_plus_caa(a: torch.Tensor, b: float, c: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """``b A + c A A`` for symmetric ``a`` of shape ``[M, M]`` or ``[B, M, M]`` (docs/variants.md 3.5
    ``ba_plus_cAA``). ``A A`` is computed as ``A A^T`` (equal for symmetric ``A``) with the symmetric trick
    of `xxt`; ``b A`` is added in float32 in the epilogue and the sum rounds once. Only the lower triangle
    of ``a`` is read for the ``b A`` term. Returns ``out`` (default: a new tensor of ``a.dtype``).
    """
    a3 = _check_square(a)
    bf, cf = _check_coef(b, "b"), _check_coef(c, "c")
    check_launchable(_sym_kernel, a3, "ba_plus_caa", runtime_loop=True)
    res = _out_batch(out, a, tuple(a3.shape), "a")
    _launch(a3, a3, res, cf, bf)
    return res if a.ndim == 3 else res[0]


def _mirror_lower(r: torch.Tensor) -> torch.Tensor:
    """The lower triangle of ``r`` (diagonal included) mirrored onto the upper one: exactly symmetric."""
    return torch.tril(r) + torch.tril(r, -1).mT


def _store(r: torch.Tensor, out: torch.Tensor | None, like: torch.Tensor, name: str) -> torch.Tensor:
    shape = tuple(r.shape) if r.ndim == 3 else (1, *r.shape)
    res = _out_batch(out, like, shape, name)
    res.copy_(r.reshape(res.shape))
    return res if like.ndim == 3 else res[0]


def xxt_torch(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Torch twin of `xxt`: float32 ``X X^T``, lower triangle mirrored, one rounding to the output dtype."""
    x3 = _as_batch(x, "x")
    xf = x3.float()
    r = _mirror_lower(torch.bmm(xf, xf.mT))
    return _store(r if x.ndim == 3 else r[0], out, x, "x")


def ba_plus_caa_torch(a: torch.Tensor, b: float, c: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """Torch twin of `ba_plus_caa`: float32 ``c A A^T + b A`` on the lower triangle, mirrored, one rounding."""
    a3 = _check_square(a)
    bf, cf = _check_coef(b, "b"), _check_coef(c, "c")
    af = a3.float()
    r = _mirror_lower(cf * torch.bmm(af, af.mT) + bf * af)
    return _store(r if a.ndim == 3 else r[0], out, a, "a")
