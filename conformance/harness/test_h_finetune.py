"""Fine-tuning (harness/pretrained.py, harness/tasks.py): train.init_from from a muonlab checkpoint or a
safetensors export, fresh or carried optimizer state, the arithmetic task's problems and batches, greedy
exact-match accuracy with its Wilson interval, and a fine-tuning run that resumes bit-identically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from muonlab.harness import rundir as rd
from muonlab.harness import torchrun as dd
from muonlab.harness.config import (
    ConfigError,
    TaskSection,
    load_run_config,
    load_sweep_config,
    shipped_configs_dir,
    validate_run,
)
from muonlab.harness.report import init_from_lines
from muonlab.harness.significance import wilson_interval
from muonlab.harness.tasks import TaskData, arithmetic_problems, greedy_answers, load_task, task_endpoints
from muonlab.harness.train import build_run, train

MODEL = {"seq_len": 64}  # the micro model, long enough for one-step problems
TASK = {"steps": 1, "max_value": 9, "n_train": 60, "n_test": 20}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory, text_file: Path, data_dir: Path, micro: Any) -> Path:
    """A micro run of 6 steps on the text (its checkpoints hold weights and Muon state)."""
    out = tmp_path_factory.mktemp("pre") / "run"
    cfg = micro(text_file, out.parent / "cache", model=MODEL, train={"steps": 6, "checkpoint_every": 3})
    train(validate_run(cfg), out, data_dir=data_dir, progress=False)
    return out


def _finetune(micro: Any, text_file: Path, tmp: Path, **train: Any) -> dict[str, Any]:
    cfg = micro(text_file, tmp / "cache", model=MODEL, train={"steps": 6, "seq_len": 32, **train})
    cfg["task"] = dict(TASK)
    cfg["optimizer"]["lr"] = 0.005  # not the pretraining lr: a carried state keeps this run's hyperparameters
    return cfg


def _build(cfg: dict[str, Any], tmp: Path, data_dir: Path) -> Any:
    return build_run(
        validate_run(cfg), tmp / "run", data_dir, env=dd.DistEnv(), device=torch.device("cpu"), progress=False
    )


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_init_from_a_run_dir_loads_its_newest_checkpoint(
    pretrained: Path, tmp_path: Path, text_file: Path, data_dir: Path, micro: Any
) -> None:
    ckpt_path, ckpt, _ = rd.find_intact_checkpoint(pretrained)
    run = _build(_finetune(micro, text_file, tmp_path, init_from=str(pretrained)), tmp_path, data_dir)
    assert _equal(run.model.state_dict(), ckpt["model"])
    assert not run.optimizer.state  # fresh: no moments
    record = run.config_record["init_from"]
    assert record["kind"] == "checkpoint" and record["file"] == str(ckpt_path)
    assert record["sha256"] == rd.file_sha256(ckpt_path) and record["optimizer"] == "fresh"
    # without init_from the seeded initialization differs
    fresh = _build(_finetune(micro, text_file, tmp_path), tmp_path, data_dir)
    assert not _equal(fresh.model.state_dict(), ckpt["model"]) and "init_from" not in fresh.config_record


def test_carried_optimizer_state_keeps_this_runs_hyperparameters(
    pretrained: Path, tmp_path: Path, text_file: Path, data_dir: Path, micro: Any
) -> None:
    _, ckpt, _ = rd.find_intact_checkpoint(pretrained)
    cfg = _finetune(micro, text_file, tmp_path, init_from=str(pretrained), init_optimizer="carried")
    run = _build(cfg, tmp_path, data_dir)
    saved, loaded = ckpt["optimizer"]["state"], run.optimizer.state_dict()["state"]
    assert saved.keys() == loaded.keys() and saved
    for k in saved:
        assert all(torch.equal(saved[k][n], loaded[k][n]) for n in saved[k] if torch.is_tensor(saved[k][n]))
    assert all(
        g["initial_lr"] == pytest.approx(0.005) for g in run.optimizer.param_groups if g.get("algorithm") == "muon"
    )


def test_safetensors_export_round_trip_is_bit_equal(
    pretrained: Path, tmp_path: Path, text_file: Path, data_dir: Path, micro: Any
) -> None:
    from muonlab.harness.cli import main

    _, ckpt, _ = rd.find_intact_checkpoint(pretrained)
    out = tmp_path / "export"
    assert main(["export", str(pretrained), "--out", str(out)]) == 0
    meta = json.loads((out / "config.json").read_text())
    assert meta["step"] == 6 and meta["muonlab_model_config"]["seq_len"] == 64
    for source in (out, out / "model.safetensors"):
        run = _build(_finetune(micro, text_file, tmp_path, init_from=str(source)), tmp_path, data_dir)
        assert _equal(run.model.state_dict(), ckpt["model"])
        assert run.config_record["init_from"]["kind"] == "safetensors"
    with pytest.raises(ValueError, match=r"train.init_optimizer: 'carried' needs a muonlab checkpoint"):
        _build(_finetune(micro, text_file, tmp_path, init_from=str(out), init_optimizer="carried"), tmp_path, data_dir)
    assert main(["export", str(out), "--out", str(tmp_path / "again")]) == 2  # an export holds no checkpoint
    assert not (tmp_path / "again").exists()
    # the same shapes, another model: 4 heads of 8 instead of 2 of 16; the file alone still says which model it holds
    lone = tmp_path / "lone.safetensors"
    shutil.copy(out / "model.safetensors", lone)
    heads = _finetune(micro, text_file, tmp_path, init_from=str(lone))
    heads["model"].update(n_heads=4, n_kv_heads=2)
    with pytest.raises(ValueError, match=r"train.init_from: model.n_heads is 2 in the pretrained model .* but 4"):
        _build(heads, tmp_path, data_dir)


def test_a_checkpoint_file_loads_and_a_longer_context_is_allowed(
    pretrained: Path, tmp_path: Path, text_file: Path, data_dir: Path, micro: Any
) -> None:
    first = rd.list_checkpoints(pretrained)[0]  # step 3, not the newest
    cfg = _finetune(micro, text_file, tmp_path, init_from=str(first))
    cfg["model"]["seq_len"] = 96  # RoPE has no weights: a fine-tune may change the context (pretrained.ARCH_FREE)
    run = _build(cfg, tmp_path, data_dir)
    assert _equal(run.model.state_dict(), rd.load_checkpoint(first)["model"])
    assert run.config_record["init_from"]["file"] == str(first)


def test_init_from_errors_name_the_key(
    pretrained: Path, tmp_path: Path, text_file: Path, data_dir: Path, micro: Any
) -> None:
    wide = _finetune(micro, text_file, tmp_path, init_from=str(pretrained))
    wide["model"]["d_model"] = 48
    with pytest.raises(ValueError, match=r"train.init_from: model.d_model is 32 in the pretrained model .* but 48"):
        _build(wide, tmp_path, data_dir)
    # a checkpoint file out of its run dir records no model config: the shapes name the parameter
    loose = tmp_path / "loose.pt"
    shutil.copy(rd.find_intact_checkpoint(pretrained)[0], loose)
    wide["train"]["init_from"] = str(loose)
    with pytest.raises(ValueError, match=r"train.init_from: '[\w.]+' is \(\d+, 32\) in .* but \(\d+, 48\)"):
        _build(wide, tmp_path, data_dir)
    ngpt = _finetune(micro, text_file, tmp_path, init_from=str(pretrained))
    ngpt["model"]["base"] = "tiny_ngpt"
    with pytest.raises(ValueError, match=r"train.init_from: model.ngpt is False in the pretrained model"):
        _build(ngpt, tmp_path, data_dir)
    (tmp_path / "damaged.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"train.init_from: .*damaged.pt cannot be read"):
        _build(_finetune(micro, text_file, tmp_path, init_from=str(tmp_path / "damaged.pt")), tmp_path, data_dir)
    with pytest.raises(ValueError, match=r"train.init_from: .*nowhere does not exist"):
        _build(_finetune(micro, text_file, tmp_path, init_from=str(tmp_path / "nowhere")), tmp_path, data_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        ValueError, match=r"train.init_from: .*empty holds no intact checkpoint and no model.safetensors"
    ):
        _build(_finetune(micro, text_file, tmp_path, init_from=str(tmp_path / "empty")), tmp_path, data_dir)
    with pytest.raises(ConfigError, match="init_optimizer: 'carried' needs init_from"):
        validate_run(_finetune(micro, text_file, tmp_path, init_optimizer="carried"))
    assert not (tmp_path / "run").exists()  # refused before the run dir is written


def test_problems_are_deterministic_and_the_splits_disjoint() -> None:
    task = TaskSection(steps=2, max_value=20, n_train=500, n_test=100, seed=3)
    train_a, test_a = arithmetic_problems(task)
    assert (train_a, test_a) == arithmetic_problems(task)
    assert arithmetic_problems(task.model_copy(update={"seed": 4}))[1] != test_a
    assert len(train_a) == 500 and len(test_a) == 100
    assert not {p.prompt for p in train_a} & {p.prompt for p in test_a}
    for p in test_a:  # the answer is the arithmetic of the text
        words = p.prompt.replace(".", " ").split()
        total = int(words[2])
        for i, w in enumerate(words):
            if w in ("buys", "finds", "gets"):
                total += int(words[i + 1])
            elif w in ("away", "loses", "sells"):
                total -= int(words[i + 1])
        assert total >= 0 and str(total) == p.answer
    with pytest.raises(ValueError, match=r"task.n_train: only .* distinct problems"):
        arithmetic_problems(TaskSection(steps=1, max_value=2, n_train=5000, n_test=10))


def test_batches_train_on_the_answer_only(data_dir: Path) -> None:
    from muonlab.harness.tokenizer import load_tokenizer

    data = load_task(TaskSection(**TASK), load_tokenizer("bpe4096", data_dir))
    x, y = data.batch_at("train", 4, 40, seed=0, step=0)
    assert torch.equal(x, data.batch_at("train", 4, 40, seed=0, step=0)[0])
    for row in range(4):
        targets = y[row][y[row] >= 0].tolist()
        assert data.tok.decode(targets).startswith(" ") and data.tok.decode(targets).endswith("\n")
        first = int((y[row] >= 0).nonzero()[0])
        assert data.tok.decode(x[row, : first + 1].tolist()).endswith("Answer:")
    with pytest.raises(ValueError, match=r"train.seq_len: 8 is shorter than the task's longest example"):
        data.batch_at("train", 2, 8, seed=0, step=0)


class _Oracle(torch.nn.Module):
    """Logits that put all mass on the next token of the right answer (looked up by the prompt): a model that
    knows the test set, to score the decoding itself."""

    def __init__(self, data: TaskData, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.answers = {tuple(p): a for p, a in data.encoded["val"]}

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits = torch.zeros(idx.shape[0], idx.shape[1], self.vocab)
        for row, ids in enumerate(idx.tolist()):
            for n in range(len(ids), 0, -1):
                answer = self.answers.get(tuple(ids[:n]))
                if answer is not None:
                    done = len(ids) - n
                    logits[row, -1, answer[done] if done < len(answer) else 0] = 1.0
                    break
        return logits, None


def test_greedy_accuracy_of_an_oracle_and_of_an_untrained_model(data_dir: Path) -> None:
    from muonlab.harness.model import GPT, get_model_config
    from muonlab.harness.tokenizer import load_tokenizer

    data = load_task(TaskSection(**TASK), load_tokenizer("bpe4096", data_dir))
    oracle = _Oracle(data, 4096)
    assert greedy_answers(oracle, data, torch.device("cpu"), 6) == [p.answer for p in data.test]
    scored = task_endpoints(oracle, data, torch.device("cpu"))
    assert scored["task_accuracy"] == 1.0 and scored["task_correct"] == scored["task_total"] == 20
    assert scored["task_accuracy_lo"] == pytest.approx(wilson_interval(20, 20)[0])
    torch.manual_seed(0)
    untrained = GPT(get_model_config("tiny"))
    assert task_endpoints(untrained, data, torch.device("cpu"))["task_accuracy"] <= 0.1


@pytest.mark.parametrize(
    ("correct", "total", "lo", "hi"),
    [(0, 10, 0.0, 0.27754), (5, 10, 0.23659, 0.76341), (10, 10, 0.72246, 1.0), (38, 300, 0.09369, 0.16908)],
)
def test_wilson_interval(correct: int, total: int, lo: float, hi: float) -> None:
    got = wilson_interval(correct, total)
    assert got == pytest.approx((lo, hi), abs=1e-5)
    with pytest.raises(ValueError, match="correct, total"):
        wilson_interval(3, 2)


def test_a_finetuning_run_resumes_bit_identically(
    pretrained: Path, tmp_path: Path, text_file: Path, data_dir: Path, micro: Any
) -> None:
    cfg = validate_run(_finetune(micro, text_file, tmp_path, init_from=str(pretrained), checkpoint_every=3))
    runs = tmp_path / "runs"  # a sweep dir's layout, for the report's init_from line
    whole = train(cfg, runs / "whole", data_dir=data_dir, progress=False)
    train(cfg, runs / "split", data_dir=data_dir, progress=False, stop_after=3)
    split = train(cfg, runs / "split", data_dir=data_dir, progress=False, resume=True)
    lines = [rd.read_jsonl(runs / name / rd.METRICS) for name in ("whole", "split")]
    assert [r["train_loss"] for r in lines[0]] == [r["train_loss"] for r in lines[1]] and len(lines[0]) == 6
    for key in ("task_accuracy", "task_correct", "task_total", "val_loss"):
        assert whole[key] == split[key]
        assert lines[0][-1][key] == lines[1][-1][key] == whole[key]  # the last line carries the same scores
    assert whole["task_total"] == 20
    assert all("task_accuracy" not in r for r in lines[0][:-1])  # scored at the end only (by default)
    record = rd.read_config(runs / "split")["init_from"]
    assert record["kind"] == "checkpoint"
    assert init_from_lines(tmp_path, [{"run": "whole"}, {"run": "split"}]) == [
        f"- init_from: {pretrained} (checkpoint `step_00000006.pt`, sha256 `{record['sha256']}`; optimizer state "
        "fresh; 2 runs)"
    ]


def test_accuracy_at_every_eval(pretrained: Path, tmp_path: Path, text_file: Path, data_dir: Path, micro: Any) -> None:
    cfg = _finetune(micro, text_file, tmp_path, init_from=str(pretrained))
    cfg["task"]["accuracy_every_eval"] = True
    summary = train(validate_run(cfg), tmp_path / "run", data_dir=data_dir, progress=False)
    scored = {r["step"]: r["task_correct"] for r in rd.read_jsonl(tmp_path / "run" / rd.METRICS) if "task_correct" in r}
    assert sorted(scored) == [4, 6] and scored[6] == summary["task_correct"]  # eval_every 4, and the last step
    # left at its default, the option stays out of the config (and its sha256)
    assert "accuracy_every_eval" not in validate_run(_finetune(micro, text_file, tmp_path)).model_dump()["task"]


def test_the_shipped_finetuning_sweep_validates() -> None:
    sweep = load_sweep_config(shipped_configs_dir() / "finetune_normuon_cwd.toml")
    assert sweep.base.task is not None and sweep.base.train.init_from == "sweeps/pretrain_tiny"
    assert [v.name for v in sweep.sweep.variants] == [
        "muon_basic",
        "muon_shape",
        "muon_shape_cwd",
        "normuon_shape_cwd",
        "adamw",
    ]
    assert sweep.sweep.criteria is not None and sweep.sweep.winner_metric == "task_accuracy"
    assert load_run_config(shipped_configs_dir() / "pretrain_tiny.toml").model.base == sweep.base.model.base
