"""The command line: entry points, corpus verification, overrides reaching the config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from muonlab.harness.cli import main, resolve_config_path


def test_module_entry_point_runs() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "muonlab.harness", "--help"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0
    for cmd in ("train", "sweep", "report", "corpus"):
        assert cmd in res.stdout


def test_shipped_config_names_resolve() -> None:
    assert resolve_config_path("tiny_sweep").name == "tiny_sweep.toml"
    with pytest.raises(ValueError, match="no such file"):
        resolve_config_path("no_such_config")


def test_corpus_verify_only(tmp_path: Path, data_dir: Path) -> None:
    if not (data_dir / "corpus-debian-v1.txt.xz").is_file():
        pytest.skip("no corpus in the data dir")
    assert main(["corpus", "build", "--verify-only", "--data-dir", str(data_dir)]) == 0
    bad = tmp_path / "corpus-debian-v1.txt.xz"
    bad.write_bytes(b"not the corpus")
    assert main(["corpus", "build", "--verify-only", "--out", str(bad), "--sums", str(data_dir / "SHA256SUMS")]) == 1


def test_train_overrides_reach_config(tmp_path: Path, text_file: Path, data_dir: Path, micro: Any) -> None:
    import yaml

    cfg_file = tmp_path / "micro.yaml"
    cfg_file.write_text(yaml.safe_dump(micro(text_file, tmp_path / "cache", train={"steps": 3})))
    run = tmp_path / "run"
    rc = main(
        [
            "train",
            str(cfg_file),
            "-o",
            "optimizer.weight_decay=0.05",
            "-o",
            "train.steps=2",
            "--out",
            str(run),
            "--data-dir",
            str(data_dir),
            "--no-progress",
        ]
    )
    assert rc == 0
    conf = json.loads((run / "config.json").read_text())
    assert conf["config"]["optimizer"]["weight_decay"] == 0.05 and conf["total_steps"] == 2
    assert (
        main(
            [
                "train",
                str(cfg_file),
                "-o",
                "optimizer.weight_decay=oops",
                "--out",
                str(tmp_path / "r2"),
                "--data-dir",
                str(data_dir),
            ]
        )
        == 2
    )


def _all_parsers(parser: Any) -> list[Any]:
    import argparse

    out = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out.extend(_all_parsers(sub))
    return out


def test_every_argument_has_help_and_real_defaults() -> None:
    import argparse

    from muonlab.harness.cli import build_parser

    parsers = _all_parsers(build_parser())
    assert len(parsers) == 7  # muonlab, train, sweep, report, export, corpus, corpus build
    for p in parsers:
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and action.help.strip(), f"{p.prog}: {action.dest} has no help"
    res = subprocess.run(
        [sys.executable, "-m", "muonlab.harness", "train", "--help"], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0
    assert "default_data_dir" not in res.stdout
    from muonlab.harness.data import default_data_dir

    try:
        expected = str(default_data_dir())
    except FileNotFoundError:
        expected = "none found here"
    assert expected in " ".join(res.stdout.split())
    assert "--max-minutes" in res.stdout and "[--resume | --force]" in res.stdout
