"""Training runs: run dir contents, refusal to overwrite, bit-identical resume, abort marking."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from muonlab.harness import rundir as rd
from muonlab.harness.cli import main
from muonlab.harness.config import validate_run
from muonlab.harness.train import TIMING_FIELDS, train


def _strip(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k not in TIMING_FIELDS}


def test_run_dir_contents(tmp_path: Path, text_file: Path, data_dir: Path, micro: Any) -> None:
    cfg = validate_run(micro(text_file, tmp_path / "cache"))
    run = tmp_path / "run"
    summary = train(cfg, run, data_dir=data_dir, progress=False)
    assert summary["status"] == "complete" and not summary["unstable"]
    conf = json.loads((run / "config.json").read_text())
    assert conf["config_sha256"] == cfg.sha256()
    assert conf["config"]["optimizer"]["name"] == "muon"
    assert set(conf["versions"]) >= {"python", "torch", "numpy", "muonlab"}
    assert "commit" in conf["git"] and "dirty" in conf["git"]
    assert conf["data"]["tokenizer"]["sha256"] and conf["data"]["sources"][0]["sha256"]
    assert conf["muon_compute_dtype"]["compute_dtype"] in ("float32", "float64")  # a CPU run: never the bf16 default
    assert conf["torch_threads"] == torch.get_num_threads()
    metrics = rd.read_jsonl(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 13))
    assert {"step", "tokens", "train_loss", "smoothed_loss", "lr", "elapsed_s", "tokens_per_s"} <= set(metrics[0])
    assert [m["step"] for m in metrics if "val_loss" in m] == [4, 8, 12]
    assert metrics[-1]["tokens"] == 12 * 4 * 16
    stats = rd.read_jsonl(run / "manifold_stats.jsonl")
    assert sorted({s["step"] for s in stats}) == [3, 6, 9, 12]
    layers = {s["layer"] for s in stats}
    assert "blocks.0.attn.q.weight" in layers and "embed.weight" in layers
    later = [s for s in stats if s["step"] > 3]
    assert all(s["update_alignment"] is not None and -1.0 <= s["update_alignment"] <= 1.0 for s in later)
    assert all(s["effective_rank"] > 1.0 and s["grad_norm"] > 0.0 for s in stats)
    summ = json.loads((run / "metrics.json").read_text())
    assert summ == summary
    assert summ["val_loss"] == metrics[-1]["val_loss"]
    assert summ["final_smoothed_loss"] == metrics[-1]["smoothed_loss"]
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]


def test_refuses_to_overwrite(tmp_path: Path, text_file: Path, data_dir: Path, micro: Any) -> None:
    cfg = validate_run(micro(text_file, tmp_path / "cache", train={"steps": 2}))
    run = tmp_path / "run"
    run.mkdir()
    (run / "precious.txt").write_text("keep me")
    # no checkpoint in it: --resume would fail, so only --force is suggested
    with pytest.raises(rd.RunDirError, match=r"not empty; pass --force") as err:
        train(cfg, run, data_dir=data_dir, progress=False)
    assert "--resume" not in str(err.value)
    assert sorted(p.name for p in run.iterdir()) == ["precious.txt"]
    # the CLI reports it as an error and leaves the dir alone too
    cfg_file = tmp_path / "c.json"
    import yaml

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert main(["train", str(cfg_file), "--out", str(run), "--data-dir", str(data_dir), "--no-progress"]) == 2
    assert sorted(p.name for p in run.iterdir()) == ["precious.txt"]
    # --force replaces it
    assert (
        main(["train", str(cfg_file), "--out", str(run), "--data-dir", str(data_dir), "--no-progress", "--force"]) == 0
    )
    assert not (run / "precious.txt").exists() and (run / "metrics.json").is_file()


def test_invalid_config_writes_nothing(
    tmp_path: Path, text_file: Path, data_dir: Path, micro: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg_file = tmp_path / "bad.toml"
    cfg_file.write_text("[train]\nsteps = 2\nbatch_sise = 3\n")
    run = tmp_path / "run"
    assert main(["train", str(cfg_file), "--out", str(run), "--data-dir", str(data_dir), "--no-progress"]) == 2
    assert "train.batch_sise" in capsys.readouterr().err
    assert not run.exists()


def test_resume_is_bit_identical(tmp_path: Path, text_file: Path, data_dir: Path, micro: Any) -> None:
    cfg = validate_run(micro(text_file, tmp_path / "cache"))  # 12 steps, checkpoint every 6
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(cfg, straight, data_dir=data_dir, progress=False)
    first = train(cfg, split, data_dir=data_dir, progress=False, stop_after=6)
    assert first["status"] == "stopped" and first["steps"] == 6
    with pytest.raises(rd.RunDirError, match=r"pass --resume to continue it or pass --force"):
        train(cfg, split, data_dir=data_dir, progress=False)  # neither --resume nor --force
    # a changed config cannot resume the run
    other = validate_run(micro(text_file, tmp_path / "cache", optimizer={"lr": 0.03}))
    with pytest.raises(rd.RunDirError, match="config differs"):
        train(other, split, data_dir=data_dir, resume=True, progress=False)
    done = train(cfg, split, data_dir=data_dir, progress=False, resume=True)
    assert done["status"] == "complete" and done["steps"] == 12
    a = rd.load_checkpoint(rd.latest_checkpoint(straight))  # type: ignore[arg-type]
    b = rd.load_checkpoint(rd.latest_checkpoint(split))  # type: ignore[arg-type]
    assert a["step"] == b["step"] == 12
    for name, t in a["model"].items():
        assert torch.equal(t, b["model"][name]), name
    ma = [_strip(r) for r in rd.read_jsonl(straight / "metrics.jsonl")]
    mb = [_strip(r) for r in rd.read_jsonl(split / "metrics.jsonl")]
    assert ma == mb
    assert rd.read_jsonl(straight / "manifold_stats.jsonl") == rd.read_jsonl(split / "manifold_stats.jsonl")


def test_resume_after_crash_truncates_logs(tmp_path: Path, text_file: Path, data_dir: Path, micro: Any) -> None:
    """Lines written after the last checkpoint (a crash) are replaced, not duplicated."""
    cfg = validate_run(micro(text_file, tmp_path / "cache", train={"steps": 8, "checkpoint_every": 4}))
    run = tmp_path / "run"
    train(cfg, run, data_dir=data_dir, progress=False, stop_after=6)  # checkpoints at 4 and 6
    rd.checkpoint_path(run, 6).unlink()  # as if the run died between step 4's checkpoint and step 6
    train(cfg, run, data_dir=data_dir, progress=False, resume=True)
    steps = [r["step"] for r in rd.read_jsonl(run / "metrics.jsonl")]
    assert steps == list(range(1, 9))


def test_nan_loss_marks_run_unstable(tmp_path: Path, text_file: Path, data_dir: Path, micro: Any) -> None:
    # an absurd learning rate blows the model up; the abort rules must catch it and mark the run
    cfg = validate_run(
        micro(
            text_file,
            tmp_path / "cache",
            optimizer={"name": "adamw", "lr": 1e4, "adam_lr": None},
            train={"steps": 40, "stats_every": 2, "checkpoint_every": None},
            abort={"window": 4, "patience": 2, "early_points": 1},
        )
    )
    summary = train(cfg, tmp_path / "run", data_dir=data_dir, progress=False)
    assert summary["status"] == "aborted" and summary["unstable"] is True
    assert summary["abort_reason"] and summary["steps"] < 40
