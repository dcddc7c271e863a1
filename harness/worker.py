"""A sweep worker: ``python -m muonlab.harness.worker`` trains the runs described by JSON lines on its stdin
(harness/workers.py writes them), one after the other, and answers each with one JSON line on its stdout,
``{"ok": true}`` once the run's metrics.json is written (any status) or ``{"ok": false, "error": ...}``.
A run's own output goes to the job's ``log`` file. End of input ends the worker; so does a stop request.

Ctrl-C / SIGTERM are turned into a clean stop (harness/interrupt.py) before torch is imported, so a signal
that arrives while the worker starts up cannot kill it half-way through writing a run dir.
"""

from __future__ import annotations

import os
import signal
import sys

from .interrupt import request_stop, stop_requested


def _stop(signum: int, frame: object) -> None:
    request_stop(f"interrupted ({signal.Signals(signum).name})")


def _minutes_left(deadline: float | None) -> float | None:
    """What is left of the sweep's budget (a ``time.time()`` deadline); at least one step's worth."""
    import time

    return None if deadline is None else max((deadline - time.time()) / 60.0, 1e-6)


def main() -> int:
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _stop)
    import json
    import traceback
    from pathlib import Path

    import torch

    from .config import validate_run
    from .runs import train_run

    answer = os.fdopen(os.dup(1), "w", buffering=1)  # the sweep's channel; fds 1 and 2 go to each run's log
    for line in sys.stdin:
        job = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        result: dict[str, object] = {"ok": True}
        try:
            torch.set_num_threads(int(job["threads"]))  # a config's own train.threads still wins (train.train)
            summary = train_run(
                validate_run(job["config"]),
                Path(job["run_dir"]),
                data_dir=Path(job["data_dir"]) if job.get("data_dir") else None,
                progress=False,
                max_minutes=_minutes_left(job.get("deadline")),
                track=job.get("track"),
                track_group=tuple(job["track_group"]) if job.get("track_group") else None,
            )
            print(f"{job['run_dir']}: {summary['status']}", file=sys.stderr, flush=True)
        except Exception as exc:
            traceback.print_exc()
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.flush()
        sys.stderr.flush()
        answer.write(json.dumps(result) + "\n")
        if stop_requested():
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
