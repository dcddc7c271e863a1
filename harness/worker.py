"""A sweep worker: ``python -m muonlab.harness.worker`` trains one run described by a JSON job on stdin
(harness/workers.py writes it) and exits 0 once the run's metrics.json is written (any status).

Ctrl-C / SIGTERM are turned into a clean stop (harness/interrupt.py) before torch is imported, so a signal
that arrives while the worker starts up cannot kill it half-way through writing the run dir.
"""

from __future__ import annotations

import signal
import sys

from .interrupt import request_stop


def _stop(signum: int, frame: object) -> None:
    request_stop(f"interrupted ({signal.Signals(signum).name})")


def main() -> int:
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _stop)
    import json
    from pathlib import Path

    import torch

    from .config import validate_run
    from .sweep import train_run

    job = json.loads(sys.stdin.read())
    torch.set_num_threads(int(job["threads"]))  # a config's own train.threads still wins (train.train)
    summary = train_run(
        validate_run(job["config"]),
        Path(job["run_dir"]),
        data_dir=Path(job["data_dir"]) if job.get("data_dir") else None,
        progress=False,
        max_minutes=job.get("max_minutes"),
    )
    print(f"{job['run_dir']}: {summary['status']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
