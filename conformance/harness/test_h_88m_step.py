"""The 88M model trains: two optimizer steps of the shipped ``wd_dose_response`` config on the CPU.

The run is built by the harness itself (`build_run`: tokenizer, shards, seeded ``88m`` model, Muon with the
config's preset / lr / decay, schedule), with only the batch shape changed to fit a CPU: 2 sequences of 128
tokens per step in micro-batches of 1 (gradient accumulation over 2). The same batch is used for both
steps, so the loss must fall: ``loss(step 1) > loss(step 2) > loss after step 2``.
Time and peak memory on the development machine are in docs/harness.md ("The 88M model on a CPU").
"""

from __future__ import annotations

import math
import resource
import time
from pathlib import Path

import pytest
import torch

from muonlab.harness import torchrun as dd
from muonlab.harness.cli import resolve_config_path
from muonlab.harness.config import load_run_config
from muonlab.harness.model import MODEL_CONFIGS
from muonlab.harness.train import build_run, evaluate, train_step

pytestmark = pytest.mark.slow


def test_88m_two_steps_with_gradient_accumulation(tmp_path: Path, data_dir: Path) -> None:
    if not (data_dir / "gpt2.tiktoken").is_file():
        pytest.skip("data dir lacks gpt2.tiktoken")
    text = tmp_path / "text.txt"
    text.write_text("Muon orthogonalizes the momentum of every matrix parameter before the update. " * 200)
    cfg = load_run_config(
        resolve_config_path("wd_dose_response"),
        {
            "data.sources": [str(text)],
            "data.cache_dir": str(tmp_path / "cache"),
            "data.val_fraction": 0.5,
            "train.device": "cpu",
            "train.dtype": "float32",
            "train.batch_size": 2,
            "train.micro_batch_size": 1,
            "train.seq_len": 128,
            "train.token_budget": None,
            "train.steps": 100,  # only sets the schedule: warmup 2 steps, so the lr multipliers are 0.5, 1
            "train.eval_batches": 1,
        },
    )
    assert cfg.model.base == "88m" and cfg.model.overrides() == {}
    t0 = time.perf_counter()
    run = build_run(cfg, tmp_path / "run", data_dir, env=dd.DistEnv(), device=torch.device("cpu"), progress=False)
    assert run.mcfg == MODEL_CONFIGS["88m"] and run.micro_batches == 2
    assert 85e6 < run.config_record["n_params"] < 92e6
    x, y = run.shards.batch_at("train", 2, 128, seed=0, step=0)
    losses = []
    for step in range(2):
        result = train_step(run, x, y, step)
        assert result.finite, f"step {step + 1}: loss {result.loss}"
        losses.append(result.loss)
    after = evaluate(run.model, [(x, y)], run.device, run.autocast)
    seconds = time.perf_counter() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"88M: losses {losses[0]:.4f} {losses[1]:.4f} -> {after:.4f}; {seconds:.1f} s; peak RSS {peak_mib:.0f} MiB")
    assert math.isfinite(after)
    assert abs(losses[0] - math.log(run.mcfg.vocab_size)) < 1.0  # a fresh model is near-uniform
    assert losses[0] > losses[1] > after
    assert all(torch.isfinite(p).all() for p in run.model.parameters())
    assert run.scheduler.get_last_lr()[0] == pytest.approx(cfg.optimizer.lr)  # warmup done after 2 steps
