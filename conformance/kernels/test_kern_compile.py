"""Every Triton kernel variant the public API can launch compiles for sm_80 and sm_90, fits, and does not spill.

The variants come from the kernel modules' launch tables (``symmetric.variants``, ``elementwise.variants``:
pointer dtypes, constexpr flags, block configs per device family), the same tables the launch wrappers pick
from. Each is compiled with Triton's own compiler down to a cubin (bundled ptxas, no GPU):
``triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=GPUTarget("cuda", cc, 32), ...)``.
A variant fails on a compile error, on shared memory per block over its family's budget
(``_common.SMEM_BUDGET``), or on any register spill (a non-zero stack frame in the cubin, Triton's ``n_spills``).

Kernels are defined interpreted when ``TRITON_INTERPRET=1`` is set at import (as the suite does) and an
interpreted kernel cannot be compiled, so the compiling runs in subprocesses (``aot_compile.py``, one per
family, in parallel) whose environment lacks ``TRITON_INTERPRET``; this process only enumerates the variants
(names do not depend on the interpreter). Compiled kernels land in Triton's cache (``TRITON_CACHE_DIR``), so
a second run takes seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed: there are no Triton kernels to compile")
if importlib.util.find_spec("triton.backends.nvidia") is None:
    pytest.skip("this triton has no NVIDIA backend: cannot compile for sm_80 / sm_90", allow_module_level=True)

from aot_compile import cubin_resources

from muonlab.fast.kernels import _common, elementwise, symmetric

FAMILIES: tuple[_common.Family, ...] = ("sm80", "sm90")
SCRIPT = Path(__file__).resolve().parent / "aot_compile.py"
TIMEOUT_S = 1200


def _variant_names(family: _common.Family) -> list[str]:
    return [v.name for v in (*symmetric.variants(family), *elementwise.variants(family))]


CASES = [(family, name) for family in FAMILIES for name in _variant_names(family)]


@pytest.fixture(scope="module")
def compiled() -> Iterator[dict[str, dict[str, dict[str, Any]]]]:
    """``{family: {variant name: result}}`` from one `aot_compile.py` subprocess per family, run in parallel
    (output to files, not pipes: a failing ptxas prints the whole PTX)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory() as tmp:
        procs: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for family in FAMILIES:
                cmd = [sys.executable, str(SCRIPT), family, str(Path(tmp) / f"{family}.json")]
                with open(Path(tmp) / f"{family}.log", "wb") as log:
                    procs[family] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
            results: dict[str, dict[str, dict[str, Any]]] = {}
            for family, proc in procs.items():
                code = proc.wait(timeout=TIMEOUT_S)
                if code != 0:
                    log_text = (Path(tmp) / f"{family}.log").read_text(encoding="utf-8", errors="replace")
                    pytest.fail(f"aot_compile.py {family} exited {code}:\n{log_text[-4000:]}")
                rows = json.loads((Path(tmp) / f"{family}.json").read_text(encoding="utf-8"))
                results[family] = {r["name"]: r for r in rows}
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        yield results


@pytest.mark.parametrize(
    ("family", "name"), CASES, ids=[f"{name}-sm{_common.FAMILY_ARCH[family]}" for family, name in CASES]
)
def test_variant_compiles_fits_and_does_not_spill(
    compiled: dict[str, dict[str, dict[str, Any]]], family: _common.Family, name: str
) -> None:
    result = compiled[family].get(name)
    assert result is not None, f"{name}: not compiled by aot_compile.py (the variant tables differ between processes)"
    assert "error" not in result, f"{name} on sm_{result['arch']}: {result['error']}"
    budget = _common.SMEM_BUDGET[family]
    assert result["shared"] <= budget, f"{name}: {result['shared']} B of shared memory, budget {budget} B"
    assert result["n_spills"] == 0, f"{name}: {result['frame']} B stack frame per thread (register spills)"


def test_subprocess_compiled_exactly_the_enumerated_variants(compiled: dict[str, dict[str, dict[str, Any]]]) -> None:
    for family in FAMILIES:
        assert sorted(compiled[family]) == sorted(_variant_names(family))


def test_variant_names_are_unique() -> None:
    for family in FAMILIES:
        names = _variant_names(family)
        assert len(names) == len(set(names))


def test_tables_cover_every_dtype_the_wrappers_accept() -> None:
    """Each dtype combination the wrappers' argument checks let through has a table entry (else a launch would
    fail after the checks); float64 reaches only the momentum kernel, which compiles it."""
    floats = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
    for family in ("interpret", *FAMILIES):
        sym = symmetric.launch_table(family)
        for dt in filter(symmetric.supports, floats):
            for out in {dt, torch.float32}:
                for epilogue in (False, True):
                    assert (dt, out, epilogue, False) in sym
            assert ((dt, dt, False, True) in sym) == (dt == torch.float32)
        assert not any(key[0] == torch.float64 or key[1] == torch.float64 for key in sym)
        mom = elementwise.momentum_table(family)
        for a in filter(elementwise.supports, floats):
            for b in filter(elementwise.supports, floats):
                assert (a, b) in mom
    assert not symmetric.supports(torch.float64) and elementwise.supports(torch.float64)


def test_device_families() -> None:
    """Hopper and datacenter Blackwell get the sm90 tiles; everything else the sm80 ones (fit in 99 KiB)."""
    cases = {(8, 0): "sm80", (8, 6): "sm80", (8, 9): "sm80", (9, 0): "sm90", (10, 0): "sm90", (12, 0): "sm80"}
    for capability, family in cases.items():
        assert _common.capability_family(capability) == family
    if _common.interpreted(symmetric._sym_kernel):
        assert _common.device_family(symmetric._sym_kernel, torch.device("cpu")) == "interpret"


def test_cubin_resources_reads_registers_and_frame() -> None:
    """The ``.nv.info`` reader on a hand-made ELF64: REGCOUNT 0x2f and FRAME_SIZE 0x11 entries (EIFMT_SVAL)."""
    info = struct.pack("<BBHII", 4, 0x2F, 8, 7, 168) + struct.pack("<BBH", 3, 0x1B, 255)
    info += struct.pack("<BBHII", 4, 0x11, 8, 7, 24)
    names = b"\0.shstrtab\0.nv.info\0"
    head = bytearray(64)
    head[:5] = b"\x7fELF\x02"
    data_off = 64
    strtab_off = data_off + len(info)
    shoff = strtab_off + len(names)
    sections = [
        (0, 0, 0),
        (1, strtab_off, len(names)),
        (11, data_off, len(info)),
    ]
    struct.pack_into("<Q", head, 0x28, shoff)
    struct.pack_into("<HHH", head, 0x3A, 64, len(sections), 1)
    blob = bytes(head) + info + names
    for name, off, size in sections:
        blob += struct.pack("<IIQQQQIIQQ", name, 0, 0, 0, off, size, 0, 0, 0, 0)
    assert cubin_resources(blob) == (168, 24)
    with pytest.raises(ValueError, match="cubin"):
        cubin_resources(b"not an elf")
