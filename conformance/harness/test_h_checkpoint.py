"""Checkpoints that survive damage: checksummed, a damaged newest one is named and the newest intact one
resumes the run bit-identically, with the logs cut back to its step; bad input exits 2 without a traceback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from muonlab.harness import rundir as rd
from muonlab.harness.cli import main
from muonlab.harness.config import validate_run
from muonlab.harness.train import TIMING_FIELDS, train


def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _zero(p: Path) -> None:
    p.write_bytes(b"")


def _flip(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, in the middle of the tensor data
    p.write_bytes(bytes(data))


DAMAGE: dict[str, Callable[[Path], None]] = {"truncated": _truncate, "zero_bytes": _zero, "flipped_byte": _flip}


def _strip(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if k not in TIMING_FIELDS}


def test_checkpoint_is_checksummed_and_pruned_to_two(
    tmp_path: Path, text_file: Path, data_dir: Path, micro: Any
) -> None:
    cfg = validate_run(micro(text_file, tmp_path / "cache", train={"steps": 12, "checkpoint_every": 4}))
    run = tmp_path / "run"
    train(cfg, run, data_dir=data_dir, progress=False)
    ckpts = rd.list_checkpoints(run)
    assert [p.name for p in ckpts] == ["step_00000008.pt", "step_00000012.pt"]
    for p in ckpts:
        digest, name = rd.checksum_path(p).read_text().split()
        assert name == p.name and digest == rd.file_sha256(p)  # `sha256sum -c` format
        assert rd.verify_checkpoint(p) is None
    leftovers = [p.name for p in (run / rd.CKPT_DIR).iterdir() if p.name.startswith(".")]
    assert leftovers == [] and not (run / rd.LOCK_FILE).exists()
    with pytest.raises(ValueError, match="keep"):
        rd.save_checkpoint(run, 13, {"step": 13}, keep=1)


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_checkpoint_falls_back(
    damage: str, tmp_path: Path, text_file: Path, data_dir: Path, micro: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = validate_run(micro(text_file, tmp_path / "cache", train={"steps": 12, "checkpoint_every": 4}))
    straight, run = tmp_path / "straight", tmp_path / "run"
    train(cfg, straight, data_dir=data_dir, progress=False)
    train(cfg, run, data_dir=data_dir, progress=False, stop_after=10)  # checkpoints 8 and 10
    newest = rd.checkpoint_path(run, 10)
    DAMAGE[damage](newest)
    problem = rd.verify_checkpoint(newest)
    if damage == "flipped_byte":
        assert problem is not None and "sha256" in problem
    capsys.readouterr()
    done = train(cfg, run, data_dir=data_dir, progress=False, resume=True)
    err = capsys.readouterr().err
    assert f"damaged checkpoint {newest}" in err
    assert "resuming from" in err and "step_00000008.pt (step 8)" in err
    assert (newest.parent / (newest.name + rd.DAMAGED_SUFFIX)).is_file()  # kept aside for inspection
    assert done["status"] == "complete" and done["steps"] == 12
    # the logs were cut back to step 8 (no duplicated lines) and the run equals an uninterrupted one
    assert [_strip(r) for r in rd.read_jsonl(run / rd.METRICS)] == [
        _strip(r) for r in rd.read_jsonl(straight / rd.METRICS)
    ]
    assert rd.read_jsonl(run / rd.STATS) == rd.read_jsonl(straight / rd.STATS)
    a = rd.load_checkpoint(rd.checkpoint_path(straight, 12))
    b = rd.load_checkpoint(rd.checkpoint_path(run, 12))
    for name, t in a["model"].items():
        assert torch.equal(t, b["model"][name]), name


def test_no_intact_checkpoint_exits_2_naming_each(
    tmp_path: Path, text_file: Path, data_dir: Path, micro: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = validate_run(micro(text_file, tmp_path / "cache", train={"steps": 8, "checkpoint_every": 4}))
    run = tmp_path / "run"
    train(cfg, run, data_dir=data_dir, progress=False)
    old, new = rd.list_checkpoints(run)
    _zero(new)
    _truncate(old)
    rd.checksum_path(old).unlink()  # a checkpoint without a checksum is still checked by loading it
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    capsys.readouterr()
    argv = ["train", str(cfg_file), "--out", str(run), "--data-dir", str(data_dir), "--no-progress", "--resume"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("muonlab: error: ") and "Traceback" not in err
    assert f"{new}: is empty (0 bytes)" in err
    assert f"{old}: cannot be loaded" in err
    assert rd.list_checkpoints(run) == [old, new]  # nothing renamed or deleted when nothing can resume


def test_config_mismatch_lists_the_keys(tmp_path: Path, text_file: Path, data_dir: Path, micro: Any) -> None:
    cfg = validate_run(micro(text_file, tmp_path / "cache", train={"steps": 4, "checkpoint_every": 2}))
    run = tmp_path / "run"
    train(cfg, run, data_dir=data_dir, progress=False, stop_after=2)
    other = validate_run(
        micro(text_file, tmp_path / "cache", train={"steps": 4, "checkpoint_every": 2}, optimizer={"lr": 0.03})
    )
    other = other.model_copy(update={"seed": 3})
    with pytest.raises(rd.RunDirError) as err:
        train(other, run, data_dir=data_dir, progress=False, resume=True)
    assert "optimizer.lr: 0.02 -> 0.03; seed: 0 -> 3" in str(err.value)


def test_resume_and_force_exclude_each_other(
    tmp_path: Path, text_file: Path, data_dir: Path, micro: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = validate_run(micro(text_file, tmp_path / "cache", train={"steps": 2}))
    with pytest.raises(rd.RunDirError, match="mutually exclusive"):
        train(cfg, tmp_path / "run", data_dir=data_dir, progress=False, resume=True, force=True)
    with pytest.raises(SystemExit) as exc:
        main(["train", "tiny_sweep", "--out", str(tmp_path / "run"), "--resume", "--force"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_scheduled_momentum_and_decay_resume_bitwise(
    tmp_path: Path, text_file: Path, data_dir: Path, micro: Any
) -> None:
    """nanochat's schedules (momentum and weight decay per step, its LR warmdown) are functions of the step: a run
    stopped and resumed equals an uninterrupted one bit for bit, and the schedules did change the step."""
    sections = {
        "train": {"steps": 12, "checkpoint_every": 4},
        "optimizer": {"name": "muon", "preset": "nanochat", "lr": 0.02, "adam_lr": 0.01, "weight_decay": 0.2},
        "schedule": {
            "warmup_steps": 2,
            "cooldown_frac": 0.5,
            "cooldown": "nanochat",
            "final_lr_frac": 0.05,
            "momentum": "nanochat",
            "weight_decay": "cosine",
        },
    }
    cfg = validate_run(micro(text_file, tmp_path / "cache", **sections))
    plain = validate_run(micro(text_file, tmp_path / "cache", **{**sections, "schedule": {}}))
    straight, run, flat = tmp_path / "straight", tmp_path / "run", tmp_path / "flat"
    train(cfg, straight, data_dir=data_dir, progress=False)
    train(cfg, run, data_dir=data_dir, progress=False, stop_after=6)
    train(cfg, run, data_dir=data_dir, progress=False, resume=True)
    train(plain, flat, data_dir=data_dir, progress=False)
    a = rd.load_checkpoint(rd.checkpoint_path(straight, 12))
    b = rd.load_checkpoint(rd.checkpoint_path(run, 12))
    c = rd.load_checkpoint(rd.checkpoint_path(flat, 12))
    assert all(torch.equal(t, b["model"][name]) for name, t in a["model"].items())
    assert not all(torch.equal(t, c["model"][name]) for name, t in a["model"].items())
