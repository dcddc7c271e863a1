"""Trackers (docs/harness.md "Trackers"): what TensorBoard's and W&B's own files hold equals metrics.jsonl.

TensorBoard's event files are read back with tensorboard's EventAccumulator; W&B's offline run file
(``run-<id>.wandb``, a LevelDB-style log of ``wandb.proto`` Records) with a reader of that framing (checksums
verified) and wandb's own protobuf classes. Skipped, with the reason, where the ``track`` extra is missing.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from muonlab.harness.config import validate_run, validate_sweep
from muonlab.harness.sweep import run_sweep
from muonlab.harness.train import train

NEED = "the 'track' extra is not installed (pip install 'muonlab[track]'; nox -s tests installs it)"


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in ``logdir``, read by tensorboard's own EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def wandb_records(path: Path) -> list[Any]:
    """The protobuf Records of a W&B transaction log (``.wandb``): a 7-byte file header (``:W&B``, magic
    0xBEE1, version), then 32 KiB blocks of chunks, each ``crc32 | length | type`` (FULL=1, FIRST=2, MIDDLE=3,
    LAST=4) with the crc seeded by the type byte."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), (ident, magic, version)
    block, pos, records, partial = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zero padding up to the end of the block
            pos += block - pos % block
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == crc, f"bad checksum at byte {pos}"
        pos += 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            partial = chunk
        elif kind == 3:
            partial += chunk
        else:
            records.append(partial + chunk)
    return [pb.Record.FromString(r) for r in records]


def wandb_history(records: list[Any]) -> dict[int, dict[str, Any]]:
    """step -> {key: value} from the history records."""
    out: dict[int, dict[str, Any]] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in r.history.item}
            out.setdefault(int(items.get("_step", r.history.step.num)), {}).update(items)
    return out


def _expected(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl and manifold_stats.jsonl as the trackers' scalar series (names: harness/track.py)."""
    want: dict[str, list[tuple[int, float]]] = {}
    for rec in _jsonl(run_dir / "metrics.jsonl"):
        for key, value in rec.items():
            if key == "step" or value is None:
                continue
            for k, v in [(f"{key}/{i}", x) for i, x in enumerate(value)] if isinstance(value, list) else [(key, value)]:
                want.setdefault(k, []).append((rec["step"], float(v)))
    for rec in _jsonl(run_dir / "manifold_stats.jsonl"):
        for key in ("weight_norm", "grad_norm", "effective_rank", "update_alignment"):
            if rec.get(key) is not None:
                want.setdefault(f"stats/{rec['layer']}/{key}", []).append((rec["step"], float(rec[key])))
    return want


@pytest.fixture
def micro_run(micro: Any, text_file: Path, tmp_path: Path) -> dict[str, Any]:
    # max_logits: a per-layer list in metrics.jsonl, logged as max_logit/<layer>
    return micro(text_file, tmp_path / "cache", train={"max_logits": True})


def test_tensorboard_holds_metrics_jsonl_across_a_resume(
    micro_run: dict[str, Any], data_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("tensorboard", reason=NEED)
    cfg = validate_run({**micro_run, "train": {**micro_run["train"], "track": "tensorboard"}})
    assert cfg.train.track == ["tensorboard"] and cfg.sha256() == validate_run(micro_run).sha256()
    run = tmp_path / "run"
    train(cfg, run, data_dir=data_dir, progress=False, stop_after=7)  # then a resume: two event files
    train(cfg, run, data_dir=data_dir, progress=False, resume=True)
    got = tensorboard_scalars(run / "tensorboard")
    want = _expected(run)
    assert {
        "train_loss",
        "val_loss",
        "lr",
        "tokens_per_s",
        "max_logit/0",
        "stats/blocks.0.attn.q.weight/weight_norm",
    } <= set(want)
    assert set(got) == set(want)
    for tag, series in want.items():
        # TensorBoard stores float32 scalars: each value is metrics.jsonl's rounded to float32, step for step
        assert got[tag] == [(s, float(np.float32(v))) for s, v in series], tag
    assert len(got["train_loss"]) == 12 and len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2


def test_a_tracker_that_cannot_start_warns_and_the_run_goes_on(
    micro_run: dict[str, Any], data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: Any
) -> None:
    pytest.importorskip("wandb", reason=NEED)
    monkeypatch.setenv("WANDB_MODE", "no-such-mode")  # wandb.init refuses it
    run = tmp_path / "run"
    summary = train(validate_run(micro_run), run, data_dir=data_dir, progress=False, track=["wandb"])
    err = capfd.readouterr().err
    assert "warning: tracker wandb could not start" in err and "the run goes on" in err
    assert summary["status"] == "complete" and len(_jsonl(run / "metrics.jsonl")) == 12


def test_sweep_workers_log_to_wandb_offline_and_tensorboard_grouped_by_sweep_and_arm(
    micro: Any, text_file: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tensorboard", reason=NEED)
    pytest.importorskip("wandb", reason=NEED)
    monkeypatch.delenv("WANDB_MODE", raising=False)  # default: offline, nothing leaves the machine
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    base = micro(text_file, tmp_path / "cache")
    base["sweep"] = {
        "name": "tracked",
        "track": ["tensorboard", "wandb"],
        "variants": [{"name": "muon"}, {"name": "muon_wd", "set": {"optimizer.weight_decay": 0.1}}],
    }
    out = tmp_path / "sweep"
    run_sweep(validate_sweep(base), out, data_dir=data_dir, progress=False, log=lambda _: None, jobs=2)
    for arm in ("muon", "muon_wd"):
        run = out / "runs" / f"{arm}_s0"
        want = _expected(run)
        got_tb = tensorboard_scalars(run / "tensorboard")
        assert got_tb["train_loss"] == [(s, float(np.float32(v))) for s, v in want["train_loss"]]
        (log,) = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
        records = wandb_records(log)
        (meta,) = [r.run for r in records if r.WhichOneof("record_type") == "run"][:1]
        assert (meta.run_group, meta.job_type, meta.display_name) == ("tracked", arm, f"{arm}_s0")
        config = {item.key: json.loads(item.value_json) for item in meta.config.update}
        assert config["config_sha256"] == json.loads((run / "config.json").read_text())["config_sha256"]
        history = wandb_history(records)
        for tag, series in want.items():
            # W&B keeps float64: the values are metrics.jsonl's exactly
            assert [(s, history[s][tag]) for s, _ in series] == series, tag
