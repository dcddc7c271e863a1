"""MoE expert banks and ``matrix_dims`` layouts under `muonlab.fast.Muon(distributed=...)` on the CPU (gloo, 2
processes): `_moe_worker.py` runs every check on every rank; each test asserts one of them on all ranks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from distlaunch import launch

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


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, list[Any]]]:
    return launch(WORKER, WORLD, tmp_path_factory.mktemp("moe"))


@pytest.mark.parametrize("check", CHECKS)
def test_check(results: list[dict[str, list[Any]]], check: str) -> None:
    for rank, res in enumerate(results):
        assert check in res, f"rank {rank} did not run {check}"
        ok, detail = res[check]
        assert ok, f"rank {rank}: {check}: {detail}"


def test_every_worker_check_is_asserted(results: list[dict[str, list[Any]]]) -> None:
    assert sorted(results[0]) == sorted(CHECKS)
