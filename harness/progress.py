"""Progress of a sweep as a whole: run k of n, elapsed time and an ETA (docs/harness.md "Sweeps").

The ETA is the mean wall time of the runs trained by this process times the runs left, divided by the
number of workers; runs skipped because an earlier invocation finished them take no time and do not enter
the mean. Every event is a log line (``[sweep] run 3/6 muon_wd0_s1: training; 2m10s elapsed, ETA 4m20s``),
so logs without a terminal carry it too; with ``bar=True`` a tqdm bar shows the same counts and, with
several workers, each worker's run and step (`SweepProgress.show_workers`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def fmt_duration(seconds: float | None) -> str:
    """``1h02m03s`` / ``4m05s`` / ``7s``; ``unknown`` for None."""
    if seconds is None:
        return "unknown"
    s = max(0, round(seconds))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m{sec:02d}s"
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


class SweepProgress:
    """Counts the runs of one sweep invocation (``total`` may be revised when a top-k phase is resolved);
    ``workers`` runs may be under way at once."""

    def __init__(
        self,
        total: int,
        *,
        log: Callable[[str], Any] = print,
        bar: bool = False,
        clock: Callable[[], float] = time.monotonic,
        workers: int = 1,
    ) -> None:
        if total < 0:
            raise ValueError(f"total: must be >= 0, got {total!r}")
        if workers < 1:
            raise ValueError(f"workers: must be >= 1, got {workers!r}")
        self.total = total
        self.done = 0
        self.started = 0
        self.workers = workers
        self.trained_s: list[float] = []
        self._log = log
        self._clock = clock
        self._t0 = clock()
        self._run_t0: dict[str, float] = {}
        self._bar: Any = None
        if bar:
            from tqdm.auto import tqdm  # type: ignore[import-untyped]

            self._bar = tqdm(total=total, desc="sweep", unit="run", dynamic_ncols=True, bar_format=_BAR)
            self._bar.set_postfix_str("ETA unknown")

    def eta_s(self) -> float | None:
        """Seconds left: mean trained-run time x runs left / workers (None before the first trained run)."""
        if not self.trained_s:
            return 0.0 if self.done >= self.total else None
        left = max(self.total - self.done, 0)
        return sum(self.trained_s) / len(self.trained_s) * left / min(self.workers, max(left, 1))

    def _where(self) -> str:
        return f"{fmt_duration(self._clock() - self._t0)} elapsed, ETA {fmt_duration(self.eta_s())}"

    def log(self, msg: str) -> None:
        text = f"[sweep] {msg}"
        if self._bar is not None:
            self._bar.write(text)
        else:
            self._log(text)

    def set_total(self, total: int) -> None:
        self.total = max(total, self.done)
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def start(self, name: str, action: str) -> None:
        """A run begins (``action``: training / resuming, and where)."""
        self._run_t0[name] = self._clock()
        self.started += 1
        self.log(f"run {self.started}/{self.total} {name}: {action}; {self._where()}")

    def finish(self, name: str, detail: str) -> None:
        """Run ``name`` has ended; its wall time enters the ETA."""
        now = self._clock()
        seconds = now - self._run_t0.pop(name, now)
        self.trained_s.append(seconds)
        self._advance()
        self.log(f"run {self.done}/{self.total} {name}: {detail} in {fmt_duration(seconds)}; {self._where()}")

    def skip(self, name: str, why: str) -> None:
        """A run that needs no training (finished by an earlier invocation)."""
        self.started += 1
        self._advance()
        self.log(f"run {self.done}/{self.total} {name}: {why}")

    def show_workers(self, status: dict[int, str]) -> None:
        """The bar's postfix: ETA, then ``w<slot> <run> <step>/<steps>`` for each busy worker."""
        if self._bar is not None:
            busy = " | ".join(f"w{slot} {text}" for slot, text in sorted(status.items()))
            self._bar.set_postfix_str(f"ETA {fmt_duration(self.eta_s())}" + (f"; {busy}" if busy else ""))

    def _advance(self) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(f"ETA {fmt_duration(self.eta_s())}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


_BAR = "{desc}: run {n_fmt}/{total_fmt} |{bar}| {elapsed} elapsed{postfix}"
