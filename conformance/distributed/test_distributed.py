"""Multi-process conformance of `muonlab.fast.distributed` on the CPU with the gloo backend.

One launch per world size (2 and 3 processes) runs every check of `_worker.py` on every rank; each check
below asserts one of those results on all ranks. The checks compare each mode with the single-process
`muonlab.fast.orthogonalize` bit for bit, with the float64 reference (`muonlab.reference.orthogonalize`,
`muon_step`) on the full rank-averaged gradient, and count the matrices each rank orthogonalizes. The
``optimizer_*`` checks drive `muonlab.fast.Muon(distributed=...)`: a DDP-wrapped model (``"replicated"``) and
``Shard(0)`` DTensor parameters (``"sharded"``, ``"gathered"``) against one-process `Muon` bit for bit, and a
per-rank ``torch.save`` checkpoint that resumes bit-exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from distlaunch import launch

pytestmark = pytest.mark.distributed

WORKER = Path(__file__).with_name("_worker.py")
CHECKS = [
    "owners_balanced",
    "shard_rule_matches_dtensor",
    "replicated_bitwise_fp32",
    "replicated_bitwise_bf16",
    "replicated_vs_reference",
    "sharded_bitwise_fp32",
    "sharded_bitwise_bf16",
    "sharded_mixed_dtypes",
    "sharded_vs_reference",
    "gathered_bitwise_and_equals_sharded",
    "sharded_dtensor_in_out",
    "sharded_bad_shard_raises",
    "step_replicated_keller",
    "step_replicated_normuon",
    "step_sharded_normuon",
    "step_sharded_dion_cautious",
    "step_gathered_normuon",
    "step_replicated_dion2",
    "step_replicated_nordion2",
    "step_replicated_namo",
    "step_replicated_adamuon_v1",
    "step_sharded_dion2",
    "step_sharded_nordion2",
    "step_gathered_nordion2",
    "step_sharded_namo",
    "step_gathered_namo",
    "step_sharded_adamuon_v1",
    "step_replicated_nanochat",
    "step_sharded_nanochat",
    "step_gathered_nanochat",
    "step_replicated_adamuon",
    "step_sharded_adamuon",
    "step_sharded_muoneq_rowcol",
    "step_sharded_muon_plus",
    "step_replicated_dual_norm",
    "step_sharded_dual_norm",
    "step_sharded_muonh",
    "step_sharded_normuonh_fixed_radius_decay",
    "step_gathered_muonh",
    "step_sharded_ngpt_col",
    "step_sharded_geodesic_matrix",
    "ddp_accumulation_invariance",
    "optimizer_ddp_replicated_keller",
    "optimizer_ddp_replicated_normuon",
    "optimizer_dtensor_sharded_normuon",
    "optimizer_dtensor_sharded_dion_cautious",
    "optimizer_dtensor_gathered_keller",
    "optimizer_fully_shard_normuon",
    "optimizer_nonfinite_agreed_sharded",
    "optimizer_nonfinite_agreed_sharded_nordion2",
    "optimizer_nonfinite_agreed_sharded_namo",
    "optimizer_nonfinite_agreed_sharded_normuonh",
    "optimizer_fully_shard_muonh",
    "optimizer_fully_shard_nanochat",
    "optimizer_fully_shard_dion2",
    "optimizer_resume_sharded_nordion2",
    "optimizer_resume_replicated_normuon",
    "optimizer_resume_sharded_normuon",
    "optimizer_validation",
    "dcp_fully_shard_normuon",
]


@pytest.fixture(scope="module", params=[2, 3], ids=lambda w: f"world{w}")
def world_results(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> list[dict[str, list[Any]]]:
    return launch(WORKER, int(request.param), tmp_path_factory.mktemp(f"world{request.param}"))


@pytest.mark.parametrize("check", CHECKS)
def test_check(world_results: list[dict[str, list[Any]]], check: str) -> None:
    for rank, res in enumerate(world_results):
        assert check in res, f"rank {rank} did not run {check}"
        ok, detail = res[check]
        assert ok, f"rank {rank}: {check}: {detail}"


def test_every_worker_check_is_asserted(world_results: list[dict[str, list[Any]]]) -> None:
    assert sorted(world_results[0]) == sorted(CHECKS)
