"""Compile every Triton kernel variant of `muonlab.fast.kernels` ahead of time for one device family.

Run as ``python conformance/kernels/aot_compile.py FAMILY [OUT.json]`` (``FAMILY`` is ``sm80`` or ``sm90``)
in an environment *without* ``TRITON_INTERPRET=1``: `triton.jit` reads that variable when a kernel module is
imported, and an interpreted kernel cannot be compiled. ``test_kern_compile.py`` starts this script in such a
subprocess, so it works whether or not the suite runs under the interpreter. No GPU is needed: Triton compiles
down to a cubin with the ptxas it bundles.

Each variant comes from the kernel modules' own launch tables (``variants(family)``), the ones the launch
wrappers pick from. Per variant the result holds the error (if any), the shared memory per block
(``metadata.shared``), and from the cubin's ``.nv.info`` attributes the registers per thread and the
per-thread stack frame: Triton's ``n_spills`` is ``CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES / 4``, read from the
driver after loading the cubin (triton 3.6 and 3.9 alike), and that local size is this frame, so it is read
here from the cubin without a driver. The kernels use no local arrays: any frame is a register spill.

With ``--table`` a markdown table of the results is printed instead of JSON.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
from collections.abc import Mapping
from typing import Any

_EIATTR_FRAME_SIZE = 0x11
_EIATTR_REGCOUNT = 0x2F
_EIFMT_SVAL = 0x04


def cubin_resources(cubin: bytes) -> tuple[int, int]:
    """``(registers per thread, stack frame bytes per thread)``: the largest ``EIATTR_REGCOUNT`` and
    ``EIATTR_FRAME_SIZE`` in the ``.nv.info*`` sections of an ELF64 cubin."""
    if cubin[:4] != b"\x7fELF" or cubin[4] != 2:
        raise ValueError("cubin: not an ELF64 file")
    (shoff,) = struct.unpack_from("<Q", cubin, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", cubin, 0x3A)
    sections = [struct.unpack_from("<I4xQ8xQQ", cubin, shoff + i * shentsize) for i in range(shnum)]
    strtab = sections[shstrndx][2]
    regs = frame = 0
    for name_off, _flags, off, size in sections:
        name = cubin[strtab + name_off : cubin.index(b"\0", strtab + name_off)]
        if not name.startswith(b".nv.info"):
            continue
        pos, end = off, off + size
        while pos + 4 <= end:
            fmt, attr = cubin[pos], cubin[pos + 1]
            if fmt != _EIFMT_SVAL:
                pos += 4
                continue
            (length,) = struct.unpack_from("<H", cubin, pos + 2)
            if attr in (_EIATTR_REGCOUNT, _EIATTR_FRAME_SIZE) and length == 8:
                _, value = struct.unpack_from("<II", cubin, pos + 4)
                if attr == _EIATTR_REGCOUNT:
                    regs = max(regs, value)
                else:
                    frame = max(frame, value)
            pos += 4 + length
    return regs, frame


def compile_variant(variant: Any, arch: int) -> dict[str, Any]:
    """Compile one `muonlab.fast.kernels._common.Variant` for ``sm_<arch>``; the result as a JSON-ready dict.

    Pointers are 16-byte aligned and ``i32`` integers multiples of 16 unless the kernel opts out of that
    specialization (``do_not_specialize``): the production case for shapes that are multiples of 16.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend

    target = GPUTarget("cuda", arch, 32)
    kernel = variant.kernel
    names = list(kernel.arg_names)
    plain = {names[i] if isinstance(i, int) else i for i in kernel.do_not_specialize}
    aligned = make_backend(target).parse_attr("D")
    attrs = {
        (names.index(name),): aligned
        for name, ty in variant.signature.items()
        if ty.startswith("*") or (ty == "i32" and name not in plain)
    }
    result: dict[str, Any] = {"name": variant.name, "arch": arch, "num_warps": variant.num_warps}
    start = time.perf_counter()
    try:
        src = ASTSource(kernel, dict(variant.signature), dict(variant.constexprs), attrs)
        options = {"num_warps": variant.num_warps, "num_stages": variant.num_stages}
        compiled = triton.compile(src, target=target, options=options)
        regs, frame = cubin_resources(compiled.asm["cubin"])
        result.update(shared=int(compiled.metadata.shared), regs=regs, frame=frame, n_spills=frame // 4)
    except Exception as err:  # every failure is a finding to report, whatever its type
        result["error"] = f"{type(err).__name__}: {err}"[-4000:]
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result


def all_variants(family: str) -> list[Any]:
    """Every variant of every kernel module for ``family``, in a stable order."""
    from muonlab.fast.kernels import elementwise, symmetric

    return [*symmetric.variants(family), *elementwise.variants(family)]  # type: ignore[arg-type]


def run(family: str) -> list[dict[str, Any]]:
    """Compile every variant of ``family`` for its architecture (`FAMILY_ARCH`)."""
    from muonlab.fast.kernels._common import FAMILY_ARCH

    arch = FAMILY_ARCH[family]  # type: ignore[index]
    return [compile_variant(v, arch) for v in all_variants(family)]


def table(results: Mapping[str, list[dict[str, Any]]]) -> str:
    """Markdown: one row per variant and family with shared memory, registers, stack frame and time."""
    lines = ["| variant | arch | warps | shared B | regs | spill B | s |", "|---|---|---|---|---|---|---|"]
    for rows in results.values():
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['name']} | sm_{r['arch']} | {r['num_warps']} | error | | | {r['seconds']} |")
            else:
                lines.append(
                    f"| {r['name']} | sm_{r['arch']} | {r['num_warps']} | {r['shared']} | {r['regs']} | "
                    f"{r['frame']} | {r['seconds']} |"
                )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("aot_compile: unset TRITON_INTERPRET (interpreted kernels cannot be compiled)", file=sys.stderr)
        return 2
    args = [a for a in argv if a != "--table"]
    if not args or args[0] not in ("sm80", "sm90"):
        print("usage: aot_compile.py {sm80|sm90} [OUT.json] [--table]", file=sys.stderr)
        return 2
    results = run(args[0])
    if "--table" in argv:
        print(table({args[0]: results}))
    if len(args) > 1:
        with open(args[1], "w", encoding="utf-8") as f:
            json.dump(results, f)
    elif "--table" not in argv:
        json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
