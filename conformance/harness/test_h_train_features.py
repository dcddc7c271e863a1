"""Training-loop features: FLOPs / MFU accounting, gradient accumulation, post-step hooks, time budget."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from muonlab.harness import rundir as rd
from muonlab.harness.cli import main
from muonlab.harness.config import ConfigError, validate_run
from muonlab.harness.model import MODEL_CONFIGS, count_params
from muonlab.harness.perf import flops_per_token, mfu, peak_flops
from muonlab.harness.train import train


def test_flops_per_token_of_the_88m_model() -> None:
    m = MODEL_CONFIGS["88m"]
    n = count_params(m)
    assert n == 89_220_352
    assert flops_per_token(m, 2048) == 6 * n + 12 * 22 * 512 * 2048 == 812_146_176
    import dataclasses

    untied = dataclasses.replace(m, tie_embeddings=False)
    # an untied head adds a V x d matmul; the input embedding is a lookup and costs nothing
    assert flops_per_token(untied, 2048) == flops_per_token(m, 2048)
    with pytest.raises(ValueError, match="seq_len"):
        flops_per_token(m, 0)


def test_peak_and_mfu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MUONLAB_PEAK_TFLOPS", raising=False)
    assert peak_flops(torch.device("cpu"), "bfloat16") is None
    monkeypatch.setenv("MUONLAB_PEAK_TFLOPS", "100")
    assert peak_flops(torch.device("cpu"), "float32") == 100e12
    monkeypatch.setenv("MUONLAB_PEAK_TFLOPS", "fast")
    with pytest.raises(ValueError, match="MUONLAB_PEAK_TFLOPS"):
        peak_flops(torch.device("cpu"), "float32")
    assert mfu(1000.0, 1e9, 1e13) == pytest.approx(0.1)
    assert mfu(None, 1e9, 1e13) is None and mfu(1000.0, 1e9, None) is None


def test_micro_batches_match_the_whole_batch(tmp_path: Path, text_file: Path, data_dir: Path, micro: Any) -> None:
    """Batch 4 in micro-batches of 1 (each loss / 4) is the same step as batch 4 at once, up to fp32 rounding."""
    whole = validate_run(micro(text_file, tmp_path / "cache", train={"steps": 6, "checkpoint_every": None}))
    split = validate_run(
        micro(text_file, tmp_path / "cache", train={"steps": 6, "checkpoint_every": None, "micro_batch_size": 1})
    )
    train(whole, tmp_path / "whole", data_dir=data_dir, progress=False)
    train(split, tmp_path / "split", data_dir=data_dir, progress=False)
    assert json.loads((tmp_path / "split" / rd.CONFIG).read_text())["micro_batches"] == 4
    a = rd.read_jsonl(tmp_path / "whole" / rd.METRICS)
    b = rd.read_jsonl(tmp_path / "split" / rd.METRICS)
    assert len(a) == len(b) == 6
    for ra, rb in zip(a, b, strict=True):
        assert math.isclose(ra["train_loss"], rb["train_loss"], rel_tol=1e-6), (ra, rb)  # measured <= 1.4e-7
        assert "mfu" in rb and rb["mfu"] is None  # CPU: no peak known
        assert rb["tokens_per_s"] > 0
    assert a[-1]["train_loss"] < a[0]["train_loss"] - 0.1  # the steps did something
    with pytest.raises(ConfigError, match=r"train\.micro_batch_size: 3 does not divide batch_size 4"):
        validate_run(micro(text_file, tmp_path / "cache", train={"micro_batch_size": 3}))


def test_post_step_hooks_run_after_the_optimizer_step(
    tmp_path: Path, text_file: Path, data_dir: Path, micro: Any
) -> None:
    cfg = validate_run(micro(text_file, tmp_path / "cache", train={"steps": 5, "log_every": 1}))
    seen: list[tuple[int, bool]] = []

    def hook(step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        seen.append((step, len(optimizer.state) > 0))  # optimizer state exists only once it has stepped
        return {"q_norm": float(model.get_parameter("blocks.0.attn.q.weight").norm())}

    train(cfg, tmp_path / "run", data_dir=data_dir, progress=False, post_step_hooks=[hook])
    assert seen == [(s, True) for s in range(1, 6)]
    recs = rd.read_jsonl(tmp_path / "run" / rd.METRICS)
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5]
    assert all(r["q_norm"] > 0 for r in recs)
    assert len({r["q_norm"] for r in recs}) == 5  # measured after each update


def test_max_minutes_is_validated(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for bad in ("0", "-1", "soon", "inf"):
        with pytest.raises(SystemExit) as exc:
            main(["train", "tiny_sweep", "--out", str(tmp_path / "r"), "--max-minutes", bad])
        assert exc.value.code == 2
        assert "--max-minutes" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
