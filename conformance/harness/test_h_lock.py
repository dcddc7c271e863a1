"""One writer per run / sweep dir: a second process is refused at once, a dead holder's lock is taken over.

The holders are real processes (``python -m muonlab.harness train ...`` or a process holding a `DirLock`);
the contenders run in the test process, through the CLI.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from muonlab.harness import rundir as rd
from muonlab.harness.cli import main
from muonlab.harness.lock import DirLock, LockError, read_holder


def _wait_for(cond: Any, proc: subprocess.Popen[bytes], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the holder exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=30)


def test_second_lock_in_the_same_directory_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "run"
    with DirLock(d, what="run dir") as first:
        assert first.created_dir and d.is_dir()
        rec = read_holder(d / rd.LOCK_FILE)
        assert rec is not None and rec["pid"] == os.getpid() and rec["host"] and rec["started"]
        with pytest.raises(LockError, match=rf"{d}: run dir is in use by pid {os.getpid()} on host "):
            DirLock(d, what="run dir").acquire()
        assert not rd.is_nonempty(d)  # the lock file does not make a run dir "non-empty"
    assert not d.exists()  # created by the lock, nothing written: removed on release


def test_lock_errors_name_the_directory(tmp_path: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(rd.RunDirError, match=rf"{afile}: exists and is not a directory"):
        DirLock(afile).acquire()
    with pytest.raises(rd.RunDirError, match=rf"{afile / 'run'}: cannot take the lock"):
        DirLock(afile / "run").acquire()  # its parent is a file: mkdir fails with an OSError


def test_second_train_is_refused_and_dead_holder_is_taken_over(
    tmp_path: Path,
    text_file: Path,
    data_dir: Path,
    micro: Any,
    procs: list[subprocess.Popen[bytes]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = micro(
        text_file,
        tmp_path / "cache",
        train={"steps": 100_000, "log_every": 5, "checkpoint_every": 10, "stats_every": 10_000, "threads": 1},
        abort={"enabled": False},
    )
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "muonlab.harness", "train", str(cfg_file), "--out", str(run)]
    holder = subprocess.Popen(
        [*cmd, "--data-dir", str(data_dir), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    procs.append(holder)
    _wait_for(lambda: bool(rd.list_checkpoints(run)), holder, "its first checkpoint")
    assert read_holder(run / rd.LOCK_FILE)["pid"] == holder.pid  # type: ignore[index]
    capsys.readouterr()

    # a fresh start, --resume and --force are all refused at once, naming the dir and the holder; the
    # bogus --data-dir shows the lock is checked before any data is read
    base = ["train", str(cfg_file), "--out", str(run), "--no-progress"]
    for extra in ([], ["--resume"], ["--force"]):
        assert main([*base, "--data-dir", str(tmp_path / "no-such-data"), *extra]) == 2, extra
        err = capsys.readouterr().err
        assert f"{run}: run dir is in use by pid {holder.pid} on host " in err, err
        assert "Traceback" not in err
    assert holder.poll() is None, "the holder must still be training while the contenders are refused"
    assert (run / rd.CONFIG).is_file() and rd.list_checkpoints(run)  # --force deleted nothing

    # the holder dies without releasing: the next --resume takes the stale lock over and continues
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    ckpt_step = int(rd.list_checkpoints(run)[-1].stem.split("_")[1])
    rc = main([*base, "--data-dir", str(data_dir), "--resume", "--max-minutes", "0.0001"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert f"took over a stale lock of pid {holder.pid}" in err
    assert "time budget spent" in err
    steps = [r["step"] for r in rd.read_jsonl(run / rd.METRICS)]
    assert steps == sorted(set(steps)), "no duplicated or out-of-order metrics lines"
    assert steps[-1] == ckpt_step + 1  # one step past the checkpoint, then the budget stopped it
    assert rd.read_summary(run)["status"] == "stopped"  # type: ignore[index]
    assert not (run / rd.LOCK_FILE).exists()  # released


def test_second_sweep_is_refused(
    tmp_path: Path,
    text_file: Path,
    data_dir: Path,
    micro: Any,
    procs: list[subprocess.Popen[bytes]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    sweep_dir = tmp_path / "sweep"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from muonlab.harness.lock import DirLock; "
            "DirLock(sys.argv[1], what='sweep dir').acquire(); print('locked', flush=True); time.sleep(600)",
            str(sweep_dir),
        ],
        stdout=subprocess.PIPE,
    )
    procs.append(holder)
    assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
    cfg = micro(text_file, tmp_path / "cache", train={"steps": 2})
    cfg["sweep"] = {"name": "s", "variants": [{"name": "a"}]}
    cfg_file = tmp_path / "s.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    argv = ["sweep", str(cfg_file), "--out", str(sweep_dir), "--data-dir", str(data_dir), "--no-progress"]
    for extra in ([], ["--force"]):
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert f"{sweep_dir}: sweep dir is in use by pid {holder.pid} on host " in err, err
    assert sorted(p.name for p in sweep_dir.iterdir()) == [rd.LOCK_FILE]  # nothing written

    holder.kill()
    holder.wait(timeout=30)
    lock = DirLock(sweep_dir, what="sweep dir").acquire()
    try:
        assert lock.stale is not None and lock.stale["pid"] == holder.pid
        assert read_holder(sweep_dir / rd.LOCK_FILE)["pid"] == os.getpid()  # type: ignore[index]
    finally:
        lock.release()
