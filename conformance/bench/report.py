"""Print a markdown table of the side-by-side benchmarks (medians and ratios) for docs/benchmarks.md.

    python conformance/bench/report.py [--threads N[,N...]] [--rounds R] [--gpt2-cpu] [--only SUBSTRING] [--profile]

Each case's baseline and candidate are timed in alternating rounds (`torch.utils.benchmark.Timer`, one
``timeit`` per round and side), so a load change on a shared machine hits both sides alike; the table gives
the median of the rounds and ``ratio = baseline / candidate`` (above 1: the candidate is faster). CUDA-only
cases are listed as skipped on CPU. ``--gpt2-cpu`` adds the GPT-2 small full step on CPU (seconds per
step; timed over ``--gpt2-rounds`` rounds). ``--threads 1,2`` prints one table per thread count from one process.
``--profile`` then prints, for each selected step case, the top ops of one step of each side by self CPU time
(`torch.profiler`, one thread). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

import torch
import torch.utils.benchmark as tbench

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchcases as bc


def _median_rounds(baseline: bc.Fn, candidate: bc.Fn, rounds: int, number: int) -> tuple[float, float]:
    """Median seconds per call of each side over ``rounds`` alternating rounds of ``number`` calls."""
    base_t, cand_t = [], []
    tb = tbench.Timer(stmt="fn()", globals={"fn": baseline}, num_threads=torch.get_num_threads())
    tc = tbench.Timer(stmt="fn()", globals={"fn": candidate}, num_threads=torch.get_num_threads())
    for _ in range(rounds):
        base_t.append(tb.timeit(number).median)
        cand_t.append(tc.timeit(number).median)
    return statistics.median(base_t), statistics.median(cand_t)


def _fmt(seconds: float) -> str:
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def _environment(dev: torch.device, threads: int) -> list[str]:
    import triton

    lines = [
        f"- device: {dev.type}"
        + (
            f" ({torch.cuda.get_device_name(dev)})"
            if dev.type == "cuda"
            else f" ({platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs)"
        ),
        f"- torch {torch.__version__}, triton {triton.__version__}, Python {platform.python_version()}, "
        f"torch threads {threads}",
    ]
    if hasattr(os, "getloadavg"):
        lines.append(f"- load average at start: {os.getloadavg()[0]:.2f}")
    lines.append(f"- command: `python {' '.join(['conformance/bench/report.py', *sys.argv[1:]])}`")
    return lines


def _profile(cases: list[bc.Case], dev: torch.device, top: int = 8) -> None:
    """Top ops by self CPU time of one step of each side (after a warm-up step), one torch thread."""
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    for case in cases:
        for label, fn in zip((case.baseline_label, case.candidate_label), case.build(dev), strict=True):
            fn()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
            events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
            total = sum(e.self_cpu_time_total for e in events) or 1.0
            events.sort(key=lambda e: -e.self_cpu_time_total)
            ops = ", ".join(
                f"`{e.key[6:]}` {100 * e.self_cpu_time_total / total:.0f}% ({e.count})" for e in events[:top]
            )
            print(f"- {case.name}, {label} (self CPU {_fmt(total * 1e-6)}, 1 thread): {ops}")
            sys.stdout.flush()


def _selected(case: bc.Case, only: str) -> bool:
    """Whether ``case`` is selected by ``--only`` (comma-separated substrings of case names; empty: all)."""
    return not only or any(part in case.name for part in only.split(","))


def _table(args: argparse.Namespace, dev: torch.device) -> None:
    print("| case | baseline | candidate | baseline median | candidate median | ratio (baseline / candidate) | note |")
    print("|---|---|---|---:|---:|---:|---|")
    for case in bc.cases():
        if not _selected(case, args.only):
            continue
        gpt2 = case.name.startswith("step/gpt2")
        if case.cuda_only and dev.type != "cuda":
            print(f"| {case.name} | {case.baseline_label} | {case.candidate_label} | - | - | - | CUDA only |")
            continue
        if gpt2 and dev.type != "cuda" and not args.gpt2_cpu:
            print(f"| {case.name} | {case.baseline_label} | {case.candidate_label} | - | - | - | needs --gpt2-cpu |")
            continue
        baseline, candidate = case.build(dev)
        baseline()
        candidate()
        rounds = args.gpt2_rounds if gpt2 and dev.type != "cuda" else args.rounds
        number = 1 if gpt2 or case.name.startswith("step/") else 3
        b, c = _median_rounds(baseline, candidate, rounds, number)
        note = case.note + ("; " if case.note else "") + f"{rounds} rounds x {number}"
        cells = [case.name, case.baseline_label, case.candidate_label, _fmt(b), _fmt(c), f"{b / c:.2f}x", note]
        print("| " + " | ".join(cells) + " |")
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default=None, help="torch intra-op threads, or a list (1,2): one table each")
    parser.add_argument("--rounds", type=int, default=15, help="alternating rounds per case")
    parser.add_argument("--gpt2-cpu", action="store_true", help="also time the GPT-2 small full steps on CPU")
    parser.add_argument("--gpt2-rounds", type=int, default=3, help="rounds of the GPT-2 small steps on CPU")
    parser.add_argument("--only", default="", help="run the cases whose name contains one of these (comma-separated)")
    parser.add_argument("--profile", action="store_true", help="then profile the selected step cases (1 thread)")
    args = parser.parse_args(argv)
    try:
        thread_counts = [None] if args.threads is None else [int(t) for t in str(args.threads).split(",")]
    except ValueError:
        parser.error(f"--threads: expected N or a comma-separated list of N, got {args.threads!r}")
    if any(t is not None and t < 1 for t in thread_counts):
        parser.error(f"--threads: thread counts must be >= 1, got {args.threads!r}")
    dev = bc.device()
    if dev.type == "cuda":
        os.environ.pop("TRITON_INTERPRET", None)

    for i, threads in enumerate(thread_counts):
        if threads is not None:
            torch.set_num_threads(threads)
        env = _environment(dev, torch.get_num_threads())
        print("\n".join(env if i == 0 else env[1:2]))
        print()
        _table(args, dev)
        print()
    if args.profile:
        steps = [c for c in bc.cases() if c.name.startswith("step/") and _selected(c, args.only)]
        _profile([c for c in steps if not c.cuda_only or dev.type == "cuda"], dev)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
