"""Where a sweep's runs train (docs/harness.md "Parallel sweeps"): `InProcess` (``--jobs 1``, one run at a
time in the sweep's own process) or `LocalWorkers` (``--jobs N``, up to N worker processes at once).

Both take a phase's runs in order, skip those an earlier invocation finished, start the rest and call
``on_done(spec, summary)`` for each run that ends complete or aborted. A run that ends ``stopped`` (Ctrl-C,
SIGTERM or the sweep's ``--max-minutes``) sets ``stopped`` and no further run starts; the sweep then stops
(`sweep.SweepStopped`) and running it again resumes every run from its last checkpoint.

Workers are ``python -m muonlab.harness.worker`` processes, one per slot, kept from run to run, in their own
session (so a terminal's Ctrl-C reaches only the sweep, which passes it on once); each run's output goes to
``SWEEP_DIR/logs/<run>.log``. On the CPU the cores are split between the workers (``torch threads = cores //
jobs``, recorded as ``torch_threads`` in the run's config.json; a config's ``train.threads`` wins); on CUDA
each worker slot is pinned to one device through ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from . import rundir as rd
from .interrupt import request_stop, stop_requested
from .progress import SweepProgress
from .results import FINISHED
from .runs import Budget, OnDone, RunOptions, RunSpec, finish_detail, run_one, skip_finished, start_action

STOP_GRACE_S = 120.0
"""How long a stopping sweep waits for its workers' last step and checkpoint before killing them."""


class Executor(Protocol):
    jobs: int
    stopped: str | None
    """Why the sweep must stop (interrupt, time budget), else None."""

    def describe(self, tracker: SweepProgress) -> None: ...

    def run(self, specs: list[RunSpec], tracker: SweepProgress, on_done: OnDone) -> None: ...

    def close(self) -> None: ...


def _stop_reason(budget: Budget) -> str:
    return stop_requested() or "time budget (--max-minutes) spent"


class InProcess:
    """One run at a time in this process (with its own step progress bar)."""

    def __init__(self, opts: RunOptions, *, progress: bool) -> None:
        self.jobs = 1
        self.stopped: str | None = None
        self.opts = opts
        self.sweep_dir = opts.sweep_dir
        self.data_dir = opts.data_dir
        self.progress = progress
        self.budget = opts.budget

    def describe(self, tracker: SweepProgress) -> None:
        pass

    def close(self) -> None:
        pass

    def run(self, specs: list[RunSpec], tracker: SweepProgress, on_done: OnDone) -> None:
        for spec in specs:
            if stop_requested() or self.budget.spent():
                self.stopped = _stop_reason(self.budget)
                return
            summary = run_one(
                spec,
                self.sweep_dir / "runs" / spec.name,
                data_dir=self.data_dir,
                progress=self.progress,
                tracker=tracker,
                max_minutes=self.budget.left_minutes(),
                track=self.opts.track,
                track_group=self.opts.track_group(spec),
            )
            if summary["status"] not in FINISHED:
                self.stopped = _stop_reason(self.budget)
                return
            on_done(spec, summary)


def cpu_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def visible_devices() -> list[str]:
    """The CUDA devices this process sees, as CUDA_VISIBLE_DEVICES entries ([] without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    listed = [d.strip() for d in env.split(",") if d.strip()] if env else []
    return listed[: torch.cuda.device_count()] or [str(i) for i in range(torch.cuda.device_count())]


def parse_devices(text: str) -> list[int]:
    """``"0,1"`` -> ``[0, 1]`` (indices into the visible devices); `ValueError` naming --devices."""
    try:
        out = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--devices: expected comma-separated device indices like 0,1, got {text!r}") from None
    if not out or any(d < 0 for d in out) or len(set(out)) != len(out):
        raise ValueError(f"--devices: expected distinct non-negative device indices like 0,1, got {text!r}")
    return out


class _Worker:
    """A worker process: jobs go in as JSON lines on its stdin, one result line per job comes back on its
    stdout (the run's own output goes to the run's log; harness/worker.py)."""

    def __init__(self, slot: int, proc: subprocess.Popen[bytes]) -> None:
        self.slot = slot
        self.proc = proc
        self.spec: RunSpec | None = None
        self.log = ""
        self._buf = b""
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)

    def send(self, job: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(job) + "\n").encode())
        self.proc.stdin.flush()

    def result(self) -> dict[str, Any] | None:
        """The finished job's result line, None while it runs; a dead worker's exit as a failure."""
        assert self.proc.stdout is not None
        try:
            chunk = self.proc.stdout.read()
        except BlockingIOError:
            chunk = None
        self._buf += chunk or b""
        if b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            out: dict[str, Any] = json.loads(line)
            return out
        if self.proc.poll() is not None:
            return {"ok": False, "error": f"the worker process exited with status {self.proc.returncode}"}
        return None

    def close(self) -> None:
        """No more jobs: end of input, the worker exits."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()


class LocalWorkers:
    """Up to ``jobs`` runs at once in ``python -m muonlab.harness.worker`` processes, one per slot, each kept
    for the slot's next run (no interpreter and torch start-up per run)."""

    def __init__(self, jobs: int, opts: RunOptions, *, devices: list[int] | None, poll_s: float = 0.1) -> None:
        self.jobs = jobs
        self.stopped: str | None = None
        self.opts = opts
        self.sweep_dir = opts.sweep_dir
        self.data_dir = opts.data_dir
        self.budget = opts.budget
        self.poll_s = poll_s
        self.workers: dict[int, _Worker] = {}
        visible = visible_devices()
        if devices is not None and not visible:
            raise ValueError("--devices: no CUDA device is visible here (the workers split the CPU cores)")
        if devices is not None and max(devices) >= len(visible):
            raise ValueError(f"--devices: {max(devices)} is out of range, {len(visible)} CUDA devices are visible")
        self.devices = [visible[d] for d in devices] if devices is not None else visible
        self.threads = max(1, cpu_cores() // jobs)

    def describe(self, tracker: SweepProgress) -> None:
        where = (
            f"CUDA devices {','.join(self.devices)} (CUDA_VISIBLE_DEVICES per worker)"
            if self.devices
            else f"{self.threads} torch thread(s) each on {cpu_cores()} cores"
        )
        tracker.log(f"{self.jobs} workers, {where}; logs in {self.sweep_dir / 'logs'}")

    def _env(self, slot: int) -> dict[str, str]:
        env = dict(os.environ)
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.threads)
        if self.devices:
            env["CUDA_VISIBLE_DEVICES"] = self.devices[slot % len(self.devices)]
        return env

    def _worker(self, slot: int) -> _Worker:
        w = self.workers.get(slot)
        if w is None or w.proc.poll() is not None:
            proc = subprocess.Popen(
                [sys.executable, "-m", "muonlab.harness.worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=self._env(slot),
                start_new_session=True,  # a terminal's Ctrl-C reaches the sweep only; it forwards one SIGINT
            )
            w = self.workers[slot] = _Worker(slot, proc)
        return w

    def _launch(self, slot: int, spec: RunSpec) -> _Worker:
        logs = self.sweep_dir / "logs"
        logs.mkdir(exist_ok=True)
        w = self._worker(slot)
        w.spec, w.log = spec, os.fspath(logs / f"{spec.name}.log")
        w.send(
            {
                "config": spec.config.model_dump(mode="json"),
                "run_dir": os.fspath(self.sweep_dir / "runs" / spec.name),
                "data_dir": os.fspath(self.data_dir) if self.data_dir is not None else None,
                "log": w.log,
                "threads": self.threads,
                "deadline": self.budget.wall_deadline(),
                "track": self.opts.track,
                "track_group": self.opts.track_group(spec),
            }
        )
        return w

    def run(self, specs: list[RunSpec], tracker: SweepProgress, on_done: OnDone) -> None:
        queue = collections.deque(specs)
        busy: dict[int, _Worker] = {}
        forwarded = False
        try:
            while busy or (queue and self.stopped is None):
                while queue and len(busy) < self.jobs and self.stopped is None:
                    if stop_requested() or self.budget.spent():
                        self.stopped = _stop_reason(self.budget)
                        break
                    spec = queue.popleft()
                    run_dir = self.sweep_dir / "runs" / spec.name
                    summary = skip_finished(spec, run_dir, tracker)
                    if summary is not None:
                        on_done(spec, summary)
                        continue
                    slot = min(set(range(self.jobs)) - set(busy))
                    action = start_action(run_dir)
                    busy[slot] = self._launch(slot, spec)
                    tracker.start(spec.name, f"{action} (worker {slot})")
                if stop_requested() and not forwarded:
                    self.stopped = stop_requested()
                    self._signal(busy.values(), signal.SIGINT)
                    forwarded = True
                for slot, w in list(busy.items()):
                    result = w.result()
                    if result is not None:
                        del busy[slot]
                        self._collect(w, result, tracker, on_done)
                tracker.show_workers({s: self._where(w) for s, w in busy.items()})
                if busy:
                    time.sleep(self.poll_s)
        except BaseException:
            request_stop("the sweep failed or was interrupted")
            self._signal(busy.values(), signal.SIGINT)
            self.close()
            raise

    def _collect(self, w: _Worker, result: dict[str, Any], tracker: SweepProgress, on_done: OnDone) -> None:
        spec, w.spec = w.spec, None
        assert spec is not None
        summary = rd.read_summary(self.sweep_dir / "runs" / spec.name) if result.get("ok") else None
        if summary is not None and summary.get("status") in FINISHED:
            tracker.finish(spec.name, finish_detail(summary))
            on_done(spec, summary)
            return
        if summary is not None and summary.get("status") == "stopped":
            tracker.log(f"{spec.name}: stopped at step {summary.get('steps')} (checkpointed)")
            self.stopped = self.stopped or _stop_reason(self.budget)
            return
        if self.stopped is not None or stop_requested():
            tracker.log(f"{spec.name}: stopped before its first checkpoint ({result.get('error')})")
            return
        raise RuntimeError(f"run {spec.name} failed ({result.get('error')}); its log {w.log}:\n{_tail(w.log)}")

    def _where(self, w: _Worker) -> str:
        assert w.spec is not None
        step = _last_step(self.sweep_dir / "runs" / w.spec.name / rd.METRICS)
        steps = w.spec.config.train.steps
        return f"{w.spec.name} {step if step is not None else '-'}/{steps if steps is not None else '?'}"

    @staticmethod
    def _signal(workers: Any, sig: signal.Signals) -> None:
        for w in workers:
            if w.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):  # it has just exited
                    os.kill(w.proc.pid, sig)

    def close(self) -> None:
        """End every worker: no more input, a run under way finishes its step and checkpoints (it was sent
        SIGINT), then the process exits; one still there after `STOP_GRACE_S` is killed."""
        deadline = time.monotonic() + STOP_GRACE_S
        for w in self.workers.values():
            w.close()
        for w in self.workers.values():
            try:
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
            if w.proc.stdout is not None:
                w.proc.stdout.close()
        self.workers.clear()


def _last_step(path: Path) -> int | None:
    """The ``step`` of a metrics.jsonl's last complete line (its tail only), or None."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = f.read().split(b"\n")
    except OSError:
        return None
    for line in reversed(lines[:-1]):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def _tail(path: str, n: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _stored_slurm(sweep_dir: Path) -> bool:
    return (sweep_dir / "slurm" / "executor.json").is_file()


def make_executor(
    jobs: int,
    *,
    devices: list[int] | None,
    sweep_dir: Path,
    data_dir: Path | None,
    progress: bool,
    max_minutes: float | None,
    track: list[str],
    sweep_name: str,
    executor: str | None = None,
    slurm: Any = None,
) -> Executor:
    """`slurm.SlurmJobs` for ``executor="slurm"`` (the default for a sweep dir submitted to Slurm before),
    else `InProcess` for ``jobs == 1`` (and no ``devices``), else `LocalWorkers`; `ValueError` naming the bad
    parameter."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs: must be a positive number of runs at once, got {jobs!r}")
    opts = RunOptions(sweep_dir, data_dir, Budget(max_minutes), track, sweep_name)
    if executor not in (None, "local", "slurm"):
        raise ValueError(f"--executor: must be 'local' or 'slurm', got {executor!r}")
    if executor == "slurm" or (executor is None and (slurm is not None or _stored_slurm(sweep_dir))):
        from .slurm import SlurmJobs, SlurmOptions, stored_options

        if max_minutes is not None:
            raise ValueError("--max-minutes: not for --executor slurm (each job has --slurm-time)")
        options = slurm if slurm is not None else stored_options(sweep_dir) or SlurmOptions()
        return SlurmJobs(opts, options)
    if jobs == 1 and devices is None:
        return InProcess(opts, progress=progress)
    return LocalWorkers(jobs, opts, devices=devices)
