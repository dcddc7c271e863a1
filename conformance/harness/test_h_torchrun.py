"""`muonlab train` under torchrun: two CPU processes (gloo) against one process on the same config."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from muonlab.harness import rundir as rd
from muonlab.harness.config import validate_run
from muonlab.harness.train import train

pytestmark = pytest.mark.distributed

STEPS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(config: Path, out: Path, data_dir: Path, nproc: int, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "muonlab.harness",
        "train",
        str(config),
        "--out",
        str(out),
        "--data-dir",
        str(data_dir),
        "--no-progress",
        *extra,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def _config(tmp_path: Path, text_file: Path, micro: Any) -> tuple[Path, dict[str, Any]]:
    data = micro(
        text_file,
        tmp_path / "cache",
        train={"steps": STEPS, "eval_every": 3, "stats_every": 3, "checkpoint_every": 3, "threads": 1},
    )
    path = tmp_path / "micro.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, data


@pytest.mark.parametrize("micro_batch", [None, 1], ids=["whole", "micro1"])
def test_torchrun_two_ranks_match_one_process(
    tmp_path: Path, text_file: Path, data_dir: Path, micro: Any, micro_batch: int | None
) -> None:
    """Two ranks, batch 4 = 2 + 2, train the same trajectory as one process on batch 4.

    With ``micro_batch = 1`` each rank accumulates two micro-batches of 1 (DDP's ``no_sync`` on the first),
    so the gradient all-reduce happens once per step and the result is the same step again.

    Not bit-exact, by construction: one process takes the mean loss over 4 x 16 tokens in one reduction,
    two ranks each take the mean over 2 x 16 and DDP averages the gradients (sum over ranks / 2) and the
    logged loss is all-reduced the same way; the matmuls also see a different batch dimension, so fp32
    summation order differs. The math is identical (equal slices: mean of means = global mean), so the
    losses agree to rounding, which Muon's few steps do not amplify beyond rtol 1e-4.
    """
    config, data = _config(tmp_path, text_file, micro)
    single = tmp_path / "single"
    ref = train(validate_run(data), single, data_dir=data_dir, progress=False)  # also fills the token cache
    assert ref["status"] == "complete"

    run = tmp_path / "ddp"
    extra = ["-o", f"train.micro_batch_size={micro_batch}"] if micro_batch else []
    proc = _launch(config, run, data_dir, 2, *extra)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    conf = json.loads((run / "config.json").read_text())
    assert conf["world_size"] == 2 and conf["tokens_per_step"] == 4 * 16
    assert conf["micro_batches"] == (2 if micro_batch else 1)
    metrics = rd.read_jsonl(run / "metrics.jsonl")
    ref_metrics = rd.read_jsonl(single / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))  # one writer: no duplicated lines
    assert [m["step"] for m in metrics if "val_loss" in m] == [3, 6]
    assert [m["tokens"] for m in metrics] == [m["tokens"] for m in ref_metrics]
    for got, want in zip(metrics, ref_metrics, strict=True):
        assert math.isclose(got["train_loss"], want["train_loss"], rel_tol=1e-4), (got, want)
        assert got["lr"] == want["lr"]
    for step in (3, 6):
        got = next(m for m in metrics if m["step"] == step)["val_loss"]
        want = next(m for m in ref_metrics if m["step"] == step)["val_loss"]
        assert math.isclose(got, want, rel_tol=1e-4), (step, got, want)
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]

    summary = json.loads((run / "metrics.json").read_text())
    assert summary["status"] == "complete" and summary["steps"] == STEPS
    assert math.isclose(summary["final_train_loss"], ref["final_train_loss"], rel_tol=1e-4)
    assert [p.name for p in rd.list_checkpoints(run)] == [p.name for p in rd.list_checkpoints(single)]
    stats = rd.read_jsonl(run / "manifold_stats.jsonl")
    assert sorted({s["step"] for s in stats}) == [3, 6]
    assert len(stats) == len(rd.read_jsonl(single / "manifold_stats.jsonl"))


def test_torchrun_rejects_indivisible_batch(tmp_path: Path, text_file: Path, data_dir: Path, micro: Any) -> None:
    config, _ = _config(tmp_path, text_file, micro)
    run = tmp_path / "ddp"
    proc = _launch(config, run, data_dir, 2, "-o", "train.batch_size=3")
    assert proc.returncode != 0
    assert "train.batch_size: 3 is not divisible by the world size 2" in proc.stderr
    assert not run.exists()


@pytest.mark.parametrize("mode", ["sharded", "gathered"])
def test_fsdp_modes_refused_under_torchrun(
    tmp_path: Path, text_file: Path, data_dir: Path, micro: Any, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    cfg = validate_run(micro(text_file, tmp_path / "cache", train={"distributed": mode}))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match=f"train.distributed: '{mode}' needs FSDP2"):
        train(cfg, tmp_path / "run", data_dir=data_dir, progress=False)
    assert not (tmp_path / "run").exists()
