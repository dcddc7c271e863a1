"""Shared fixtures of the harness tests: a micro model config on a few KB of text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

SAMPLE = (
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.\n"
    "To be or not to be, that is the question. All that glitters is not gold.\n"
    "In the beginning the Universe was created. This has made a lot of people very angry.\n"
)


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    from muonlab.harness.data import default_data_dir

    try:
        d = default_data_dir()
    except FileNotFoundError:
        pytest.skip("no data dir (set MUONLAB_DATA_DIR)")
    if not (d / "bpe4096.json").is_file():
        pytest.skip("data dir lacks bpe4096.json")
    return d


@pytest.fixture(scope="session")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("text") / "sample.txt"
    p.write_text(SAMPLE * 40)  # ~12 KB
    return p


@pytest.fixture(scope="session")
def micro() -> Any:
    """The `micro_config` factory."""
    return micro_config


def micro_config(text_file: Path, cache_dir: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A run config dict for a ~0.15M-parameter model, 16-token sequences, on ``text_file``."""
    cfg: dict[str, Any] = {
        "name": "micro",
        "seed": 0,
        "model": {
            "base": "tiny",
            "d_model": 32,
            "n_layers": 1,
            "n_heads": 2,
            "n_kv_heads": 1,
            "ffn_dim": 64,
            "seq_len": 32,
        },
        "data": {"tokenizer": "bpe4096", "sources": [str(text_file)], "val_fraction": 0.1, "cache_dir": str(cache_dir)},
        "optimizer": {"name": "muon", "preset": "keller", "lr": 0.02, "adam_lr": 0.01},
        "train": {
            "batch_size": 4,
            "seq_len": 16,
            "steps": 12,
            "device": "cpu",
            "log_every": 1,
            "eval_every": 4,
            "eval_batches": 2,
            "stats_every": 3,
            "checkpoint_every": 6,
        },
    }
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    return cfg


def par_sweep_dict(text_file: Path, cache: Path, steps: int = 300) -> dict[str, Any]:
    """A 4-run sweep (AdamW pilot and Muon, seeds 0 and 1) of the micro model, one torch thread per run in
    every mode, so a run's arithmetic does not depend on how the sweep runs."""
    base = micro_config(
        text_file,
        cache,
        train={"steps": steps, "threads": 1, "log_every": 10, "eval_every": 100, "stats_every": 50},
    )
    base["train"]["checkpoint_every"] = 100
    base["sweep"] = {
        "name": "par",
        "pilot": "adamw",
        "variants": [
            {
                "name": "adamw",
                "unset": ["optimizer.adam_lr"],
                "set": {"optimizer.name": "adamw", "optimizer.lr": 0.003},
            },
            {"name": "muon"},
        ],
        "phases": [{"name": "main", "seeds": [0, 1]}],
    }
    return base


@pytest.fixture(scope="session")
def par_sweep_file(tmp_path_factory: pytest.TempPathFactory, text_file: Path) -> Path:
    import yaml  # type: ignore[import-untyped]

    d = tmp_path_factory.mktemp("par")
    path = d / "par.yaml"
    path.write_text(yaml.safe_dump(par_sweep_dict(text_file, d / "cache")))
    return path


@pytest.fixture(scope="session")
def par_sequential(par_sweep_file: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference for parallel and Slurm sweeps: `par_sweep_file` run with --jobs 1, in this process."""
    import yaml

    from muonlab.harness.config import validate_sweep
    from muonlab.harness.sweep import run_sweep

    out = tmp_path_factory.mktemp("seq") / "sweep"
    sweep = validate_sweep(yaml.safe_load(par_sweep_file.read_text()))
    run_sweep(sweep, out, data_dir=data_dir, progress=False, log=lambda _: None)
    return out
