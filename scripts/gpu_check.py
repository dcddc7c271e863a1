"""The GPU check of `muonlab.fast`: one script, at most 8 minutes on one H100/H200, printing one markdown table.

    python scripts/gpu_check.py                    # on a CUDA machine (Triton kernels compiled)
    python scripts/gpu_check.py --device cpu       # the dry run CI uses: small sizes, Triton interpreted
    python scripts/gpu_check.py --out gpu.md       # also write the table to a file

Rows (each section is timed and isolated: an error becomes a FAIL row with its message, and the run goes on):

1. ``envcheck``: scripts/envcheck.py (versions inside the supported ranges), when it exists. When muonlab is not
   installed it first runs ``pip install --no-index --no-deps --no-build-isolation -e .`` (offline).
2. ``kernel``: each Triton kernel against float64 math and its torch twin (``xxt``, ``ba_plus_caa``,
   ``fused_momentum``; fp32 and bf16).
3. ``conformance``: three steps of ``muonlab.fast.Muon`` (backend ``"torch"`` and ``"triton"``) on a few presets
   against the float64 reference (`muonlab.reference.muon_step`): relative Frobenius error of the weight change,
   fp32 compute <= 1e-3, bf16 compute <= 8e-2 with cosine >= 0.998 (docs/variants.md section 12).
4. ``step``: the whole step on GPT-2 small's 72 hidden matrices (bf16 and fp32 parameters): median time of
   ``muonlab.fast.Muon`` (``preset="torch"``, both backends) and ``torch.optim.Muon``, their ratio, the transient
   ``torch.cuda.max_memory_allocated`` of one step over the parameter bytes, and the FLOP-floor ratio: step time
   over the Newton-Schulz matmul FLOPs (``5 x (4 m^2 n + 2 m^3)`` per ``m <= n`` matrix) at the GPU's peak dense
   bf16 rate (a table of known parts, else a measured 8192^3 bf16 matmul).
5. ``xxt``: the symmetric Triton ``X X^T`` vs ``torch.bmm(X, X^T)`` (bf16).

The last line says whether the Triton path passed every correctness row (``kernel``, and ``conformance`` with
``backend="triton"``): the condition for making the kernels the default on CUDA; the timing rows say whether it pays.
Exit status 0 when every row passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
INSTALL = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation", "-e", str(ROOT)]

# Peak dense bf16 tensor throughput (FLOP/s, no sparsity) by device name substring, most specific first.
PEAK_BF16: list[tuple[str, float]] = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
]

GPT2_LAYER = [(768, 768)] * 4 + [(3072, 768), (768, 3072)]


@dataclass
class Row:
    section: str
    check: str
    value: str
    target: str
    ok: bool | None  # None: informational

    def cells(self) -> list[str]:
        verdict = "-" if self.ok is None else ("PASS" if self.ok else "**FAIL**")
        return [self.section, self.check, self.value, self.target, verdict]


@dataclass
class Config:
    device: str
    scale: int  # divisor of GPT-2 small's dimensions
    layers: int
    steps: int  # timed calls per measurement
    warmup: int  # untimed calls before them
    conf_shapes: list[tuple[int, int]]
    conf_presets: tuple[str, ...]
    conf_steps: int
    kernel_shapes: list[tuple[int, int, int]]
    deadline: float


def _fmt_s(seconds: float) -> str:
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


# -- setup ------------------------------------------------------------------------------------------------
def _shim() -> str:
    """Import muonlab from this checkout without installing it: a temporary ``muonlab`` folder of links to the
    source folders (the layout pyproject.toml maps), first on ``sys.path``."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="muonlab-shim-")) / "muonlab"
    root.mkdir()
    for name, source in (("fast", "fast"), ("reference", "reference"), ("contract", "contract")):
        (root / name).symlink_to(ROOT / source, target_is_directory=True)
    sys.path.insert(0, str(root.parent))
    importlib.invalidate_caches()
    return str(root)


def _load_new_install() -> bool:
    """Make a package pip installed after start-up importable here. An editable install is a ``.pth`` file
    (a path entry or an import hook) in site-packages, and `site` reads ``.pth`` files only at start-up, so
    they are read again for every directory pip may have written to."""
    import site
    import sysconfig

    paths = sysconfig.get_paths()
    for directory in dict.fromkeys([paths["purelib"], paths["platlib"], site.getusersitepackages()]):
        if Path(directory).is_dir():
            site.addsitedir(directory)
    importlib.invalidate_caches()
    return importlib.util.find_spec("muonlab") is not None


def ensure_installed() -> tuple[str, bool]:
    """Make ``import muonlab.fast`` work: the installed package, else the offline editable install, else a
    source shim (`_shim`; envcheck then fails for want of metadata). Returns (what was done, installed)."""
    if importlib.util.find_spec("muonlab") is not None:
        return "installed", True
    proc = subprocess.run(INSTALL, capture_output=True, text=True, check=False)
    if proc.returncode == 0 and _load_new_install():
        return "installed now: " + " ".join(INSTALL[2:]), True
    if proc.returncode == 0:
        why = "installed, but not importable in this process"
    else:
        why = ((proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[-1][:120]
    return f"offline install failed ({why}); imported from the checkout via {_shim()}", False


def envcheck_row() -> Row:
    script = ROOT / "scripts" / "envcheck.py"
    if not script.exists():
        return Row("envcheck", "scripts/envcheck.py", "absent", "-", None)
    proc = subprocess.run(
        [sys.executable, str(script), "--extras", "fast"], capture_output=True, text=True, check=False
    )
    last = (proc.stdout + proc.stderr).strip().splitlines()
    return Row("envcheck", "versions in the supported ranges", last[-1] if last else "", "exit 0", proc.returncode == 0)


# -- timing -----------------------------------------------------------------------------------------------
def timed(fn: Callable[[], object], steps: int, device: str, warmup: int = 2) -> float:
    """Median wall seconds per call over ``steps`` calls after ``warmup`` calls (the device synchronized before and
    after each, so host overhead and launch latency count, as in training)."""
    import torch

    for _ in range(warmup):
        fn()
    times: list[float] = []
    for _ in range(steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_transient(fn: Callable[[], object], device: str) -> int | None:
    """Bytes allocated at the peak of one call beyond what was allocated before it (CUDA), else None."""
    import torch

    if device != "cuda":
        return None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - before)


def peak_bf16(device: str) -> tuple[float, str]:
    """(FLOP/s, source): the known peak of this GPU, else a measured large bf16 matmul."""
    import torch

    if device != "cuda":
        return 1e12, "nominal 1 TFLOP/s (CPU dry run)"
    name = torch.cuda.get_device_name()
    for key, rate in PEAK_BF16:
        if key in name:
            return rate, f"{name}: {rate / 1e12:.0f} TFLOP/s dense bf16 (datasheet)"
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    t = timed(lambda: a @ a, 10, "cuda")
    return 2 * n**3 / t, f"{name}: measured {2 * n**3 / t / 1e12:.0f} TFLOP/s (8192^3 bf16 matmul)"


def ns_flops(shapes: Sequence[tuple[int, int]], steps: int = 5) -> float:
    """Matmul FLOPs of ``steps`` Newton-Schulz iterations on each matrix, as ``m <= n`` after the transpose:
    ``X X^T`` (2 m^2 n), ``A A`` (2 m^3), ``B X`` (2 m^2 n)."""
    total = 0.0
    for a, b in shapes:
        m, n = min(a, b), max(a, b)
        total += steps * (4 * m * m * n + 2 * m**3)
    return total


# -- sections -----------------------------------------------------------------------------------------------
def rel(x: Any, ref: Any) -> float:
    d = float((x.double() - ref.double()).norm())
    r = float(ref.double().norm())
    return d / r if r else d


def kernel_rows(cfg: Config) -> list[Row]:
    import torch

    from muonlab.fast.kernels import elementwise as ew
    from muonlab.fast.kernels import symmetric as sym

    dev = torch.device(cfg.device)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for b, m, k in cfg.kernel_shapes:
        x64 = torch.randn(b, m, k, generator=gen, dtype=torch.float64) / math.sqrt(k)
        gram64 = x64 @ x64.mT
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2.0**-8)):
            x = x64.to(device=dev, dtype=dtype)
            got = sym.xxt(x)
            twin = sym.xxt_torch(x)
            err, err_twin = rel(got.cpu(), gram64), rel(got, twin)
            name = f"xxt {b}x{m}x{k} {str(dtype)[6:]}"
            rows.append(Row("kernel", name, f"vs fp64 {err:.1e}, vs twin {err_twin:.1e}", f"<= {tol:.0e}", err <= tol))
            a = got
            a64 = a.double().cpu()
            ref = -4.7750 * a64 + 2.0315 * (a64 @ a64)
            poly = sym.ba_plus_caa(a, -4.7750, 2.0315)
            ptwin = sym.ba_plus_caa_torch(a, -4.7750, 2.0315)
            err, err_twin = rel(poly.cpu(), ref), rel(poly, ptwin)
            rows.append(
                Row(
                    "kernel",
                    f"ba_plus_caa {b}x{m}x{m} {str(dtype)[6:]}",
                    f"vs fp64 {err:.1e}, vs twin {err_twin:.1e}",
                    f"<= {tol:.0e}",
                    err <= tol,
                )
            )
    m, n = cfg.kernel_shapes[0][1], cfg.kernel_shapes[0][2]
    for gdtype in (torch.float32, torch.bfloat16):
        for form, nesterov in (("ema", True), ("sum", False)):
            buf = torch.randn(m, n, generator=gen).to(dev)
            grad = torch.randn(m, n, generator=gen).to(device=dev, dtype=gdtype)
            b1, b2 = buf.clone(), buf.clone()
            out = ew.fused_momentum(b1, grad, beta=0.95, form=form, nesterov=nesterov)
            twin = ew.fused_momentum_torch(b2, grad, beta=0.95, form=form, nesterov=nesterov)
            err = max(rel(out, twin), rel(b1, b2))
            rows.append(
                Row("kernel", f"fused_momentum {form} nesterov={nesterov} grad {str(gdtype)[6:]}", f"vs twin {err:.1e}",
                    "<= 1e-6", err <= 1e-6)
            )  # fmt: skip
    return rows


def conformance_rows(cfg: Config) -> list[Row]:
    import torch

    from muonlab.contract import resolve_spec
    from muonlab.fast import Muon

    try:
        from muonlab import reference as R
    except ImportError as exc:  # numpy missing: the float64 reference cannot run
        return [Row("conformance", "fast vs reference", f"skipped: {exc}", "-", None)]
    rows = []
    lr = 0.02
    for preset in cfg.conf_presets:
        spec = resolve_spec(preset)
        bf16 = spec.compute_dtype == "bfloat16"
        gen = torch.Generator().manual_seed(1)
        w0 = [torch.randn(*s, generator=gen) / math.sqrt(s[1]) for s in cfg.conf_shapes]
        grads = [[torch.randn(*s, generator=gen) for s in cfg.conf_shapes] for _ in range(cfg.conf_steps)]
        refs = []
        for i, w in enumerate(w0):
            wr = w.double().numpy()
            st = R.init_muon_state(wr, spec)
            for g in grads:
                wr, st = R.muon_step(wr, g[i].double().numpy(), st, spec, lr=lr)
            refs.append(torch.from_numpy(wr) - w.double())
        for backend in ("torch", "triton"):
            params = [torch.nn.Parameter(w.clone().to(cfg.device)) for w in w0]
            opt = Muon(params, preset, lr=lr, backend=backend)
            for g in grads:
                for p, gi in zip(params, g, strict=True):
                    p.grad = gi.to(cfg.device)
                opt.step()
            deltas = [p.detach().cpu().double() - w.double() for p, w in zip(params, w0, strict=True)]
            err = max(rel(d, r) for d, r in zip(deltas, refs, strict=True))
            cosine = min(float((d * r).sum() / (d.norm() * r.norm())) for d, r in zip(deltas, refs, strict=True))
            ok = err <= 8e-2 and cosine >= 0.998 if bf16 else err <= 1e-3
            target = "rel <= 8e-2, cos >= 0.998" if bf16 else "rel <= 1e-3"
            rows.append(
                Row("conformance", f"{preset} backend={backend}, {cfg.conf_steps} steps",
                    f"rel {err:.1e}, cos {cosine:.5f}", target, ok)
            )  # fmt: skip
    return rows


def _gpt2(cfg: Config, dtype: Any, seed: int) -> list[Any]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = []
    for m, n in GPT2_LAYER * cfg.layers:
        m, n = m // cfg.scale, n // cfg.scale
        p = torch.nn.Parameter((torch.randn(m, n, generator=gen) / math.sqrt(n)).to(device=cfg.device, dtype=dtype))
        p.grad = torch.randn(m, n, generator=gen).to(device=cfg.device, dtype=dtype)
        out.append(p)
    return out


def step_rows(cfg: Config) -> list[Row]:
    import torch

    from muonlab.fast import Muon

    rate, source = peak_bf16(cfg.device)
    shapes = [(m // cfg.scale, n // cfg.scale) for m, n in GPT2_LAYER * cfg.layers]
    floor = ns_flops(shapes) / rate
    rows = [
        Row("step", "FLOP floor (NS matmuls at peak bf16)", f"{_fmt_s(floor)} ({ns_flops(shapes) / 1e12:.2f} TFLOP)",
            source, None)
    ]  # fmt: skip
    for dtype in (torch.bfloat16, torch.float32):
        dname = str(dtype)[6:]
        ref_params = _gpt2(cfg, dtype, 0)
        pbytes = sum(p.numel() * p.element_size() for p in ref_params)
        ref = torch.optim.Muon(ref_params, lr=1e-3, weight_decay=0.1)
        t_ref = timed(ref.step, cfg.steps, cfg.device, cfg.warmup)
        mem = peak_transient(ref.step, cfg.device)
        mem_s = "-" if mem is None else f"{mem / pbytes:.2f}x param bytes"
        rows.append(Row("step", f"torch.optim.Muon, {len(shapes)} matrices {dname}", _fmt_s(t_ref), mem_s, None))
        del ref, ref_params
        for backend in ("torch", "triton"):
            params = _gpt2(cfg, dtype, 0)
            opt = Muon(params, preset="torch", lr=1e-3, backend=backend, nonfinite="skip")
            t = timed(opt.step, cfg.steps, cfg.device, cfg.warmup)
            mem = peak_transient(opt.step, cfg.device)
            budget = 2.0 if dtype == torch.bfloat16 else 1.0
            mem_ok = None if mem is None else mem / pbytes <= budget
            rows.append(
                Row("step", f"fast backend={backend} {dname}: time, vs torch.optim.Muon, vs FLOP floor",
                    f"{_fmt_s(t)}, {t_ref / t:.2f}x faster, {t / floor:.1f}x floor", ">= 1.3x faster",
                    t_ref / t >= 1.3 if cfg.device == "cuda" else None)
            )  # fmt: skip
            if mem is not None:
                rows.append(
                    Row("step", f"fast backend={backend} {dname}: max_memory_allocated beyond params/grads/state",
                        f"{mem / pbytes:.2f}x param bytes ({mem / 2**20:.0f} MiB)", f"<= {budget:.1f}x", mem_ok)
                )  # fmt: skip
            del opt, params
    return rows


def xxt_rows(cfg: Config) -> list[Row]:
    import torch

    from muonlab.fast.kernels.symmetric import xxt

    rows = []
    gen = torch.Generator().manual_seed(3)
    for b, m, k in cfg.kernel_shapes:
        x = torch.randn(b, m, k, generator=gen).to(device=cfg.device, dtype=torch.bfloat16)
        out = torch.empty(b, m, m, device=cfg.device, dtype=torch.bfloat16)
        t_bmm = timed(partial(torch.bmm, x, x.mT, out=out), cfg.steps, cfg.device, cfg.warmup)
        t_sym = timed(partial(xxt, x, out=out), cfg.steps, cfg.device, cfg.warmup)
        rows.append(
            Row("xxt", f"{b}x{m}x{k} bf16: bmm / symmetric", f"{_fmt_s(t_bmm)} / {_fmt_s(t_sym)} = "
            f"{t_bmm / t_sym:.2f}x", "> 1x", t_bmm / t_sym > 1.0 if cfg.device == "cuda" else None)
        )  # fmt: skip
    return rows


SECTIONS: list[tuple[str, Callable[[Config], list[Row]]]] = [
    ("kernel", kernel_rows),
    ("conformance", conformance_rows),
    ("step", step_rows),
    ("xxt", xxt_rows),
]


def run(cfg: Config, only: Sequence[str]) -> list[Row]:
    rows: list[Row] = []
    for name, section in SECTIONS:
        if only and name not in only:
            continue
        if time.monotonic() > cfg.deadline:
            rows.append(Row(name, "not run", "time budget spent", "-", False))
            continue
        t0 = time.monotonic()
        try:
            rows.extend(section(cfg))
        except Exception as exc:  # a broken section is a FAIL row, the others still run
            rows.append(Row(name, "error", f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}", "-", False))
        rows.append(Row(name, "section time", _fmt_s(time.monotonic() - t0), "-", None))
    return rows


def table(rows: Sequence[Row]) -> str:
    lines = ["| section | check | value | target | result |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r.cells()) + " |" for r in rows]
    return "\n".join(lines)


def config(device: str, budget_s: float) -> Config:
    deadline = time.monotonic() + budget_s
    if device == "cuda":
        return Config("cuda", 1, 12, 20, 3, [(256, 512)] * 3 + [(512, 256), (384, 384)],
                      ("keller", "moonlight", "modded_normuon", "optax"), 3, [(24, 768, 768), (12, 768, 3072)],
                      deadline)  # fmt: skip
    return Config("cpu", 48, 1, 1, 1, [(32, 64)] * 2 + [(64, 32)], ("keller", "optax"), 1, [(2, 32, 64)], deadline)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda")
    parser.add_argument("--dry-run", action="store_true", help="same as --device cpu")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip sections once this many seconds passed")
    parser.add_argument("--only", action="append", default=[], choices=[n for n, _ in SECTIONS])
    parser.add_argument("--skip-envcheck", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    device = "cpu" if args.dry_run else (args.device or "cuda")
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported
    else:
        os.environ.pop("TRITON_INTERPRET", None)
    start = time.monotonic()
    done, installed = ensure_installed()
    rows = [Row("setup", "muonlab", done, "installed", installed)]
    if not args.skip_envcheck:
        rows.append(envcheck_row())
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu for the dry run", file=sys.stderr)
        return 2
    import triton

    where = torch.cuda.get_device_name() if device == "cuda" else "CPU (dry run, Triton interpreted)"
    rows.append(
        Row("setup", "versions", f"torch {torch.__version__}, triton {triton.__version__}, Python "
            f"{sys.version.split()[0]}, {where}", "-", None)
    )  # fmt: skip
    rows += run(config(device, args.budget_s), args.only)
    triton_rows = [r for r in rows if r.ok is not None and (r.section in ("kernel", "xxt") or "triton" in r.check)]
    triton_ok = all(r.ok is not False for r in triton_rows) and any(r.ok for r in triton_rows)
    failed = [r for r in rows if r.ok is False]
    text = table(rows) + (
        f"\n\nTotal {_fmt_s(time.monotonic() - start)}. {len(failed)} failed row(s). Triton path: "
        + ("all checks passed." if triton_ok else "NOT all checks passed: keep the kernels opt-in.")
    )
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
