"""MoE expert banks and ``matrix_dims`` layouts under `muonlab.fast.Muon(distributed=...)` on the CPU (gloo, 2
processes): `_moe_worker.py` runs every check on every rank; each test asserts one of them on all ranks."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.distributed

WORKER = Path(__file__).with_name("_moe_worker.py")
WORLD = 2
CHECKS = [
    "moe_ddp_replicated_keller",
    "moe_ddp_replicated_conv1d_normuon",
    "moe_banks_sharded_normuon",
    "moe_banks_gathered_keller",
    "moe_banks_in_out_sharded_keller",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, list[Any]]]:
    out = tmp_path_factory.mktemp("moe")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(r), str(WORLD), str(port), str(out / f"{r}.json")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in range(WORLD)
    ]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=150)[0].decode(errors="replace"))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("a rank did not finish in 150 s")
    for r, p in enumerate(procs):
        if p.returncode != 0:
            pytest.fail(f"rank {r} exited with {p.returncode}:\n{logs[r][-4000:]}")
    return [json.loads((out / f"{r}.json").read_text()) for r in range(WORLD)]


@pytest.mark.parametrize("check", CHECKS)
def test_check(results: list[dict[str, list[Any]]], check: str) -> None:
    for rank, res in enumerate(results):
        assert check in res, f"rank {rank} did not run {check}"
        ok, detail = res[check]
        assert ok, f"rank {rank}: {check}: {detail}"


def test_every_worker_check_is_asserted(results: list[dict[str, list[Any]]]) -> None:
    assert sorted(results[0]) == sorted(CHECKS)
