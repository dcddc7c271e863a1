"""Launch a gloo worker script on ``world`` local processes and collect each rank's JSON results."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the rendezvous port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(worker: Path, world: int, out: Path, timeout: float = 150) -> list[dict[str, list[Any]]]:
    """Run ``worker RANK WORLD PORT OUT/RANK.json`` on every rank (one torch thread each); fail the test with the
    rank's log tail when one times out or exits non-zero."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker), str(r), str(world), str(port), str(out / f"{r}.json")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in range(world)
    ]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=timeout)[0].decode(errors="replace"))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"world {world}: a rank did not finish in {timeout:g} s")
    for r, p in enumerate(procs):
        if p.returncode != 0:
            pytest.fail(f"world {world}: rank {r} exited with {p.returncode}:\n{logs[r][-4000:]}")
    return [json.loads((out / f"{r}.json").read_text()) for r in range(world)]
