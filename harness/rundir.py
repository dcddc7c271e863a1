"""Run directory layout, provenance and atomic writes (docs/harness.md "Run directory").

::

    RUN_DIR/config.json            resolved config, its sha256, git commit + dirty flag, versions, data hashes
    RUN_DIR/metrics.jsonl          one JSON line per log step (flushed)
    RUN_DIR/manifold_stats.jsonl   one JSON line per matrix weight per stats step
    RUN_DIR/metrics.json           summary (written atomically; ``status`` running/complete/aborted)
    RUN_DIR/checkpoints/step_XXXXXXXX.pt
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

CONFIG = "config.json"
METRICS = "metrics.jsonl"
STATS = "manifold_stats.jsonl"
SUMMARY = "metrics.json"
CKPT_DIR = "checkpoints"


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (exists without --resume/--force, nothing to resume...)."""


def is_nonempty(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def prepare_run_dir(path: Path, *, resume: bool, force: bool) -> None:
    """Create ``path`` for a fresh run, or check it can be resumed. Never deletes anything unless ``force``."""
    path = Path(path)
    if resume and force:
        raise RunDirError("--resume and --force are mutually exclusive")
    if resume:
        if latest_checkpoint(path) is None:
            raise RunDirError(f"{path}: nothing to resume (no checkpoint in {path / CKPT_DIR})")
        return
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path}: exists and is not a directory")
    if is_nonempty(path):
        if not force:
            raise RunDirError(
                f"{path}: run dir exists and is not empty; pass --resume to continue it or --force to overwrite it"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def git_info(cwd: Path | None = None) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` via ``git`` (None when git or the repo is absent)."""
    where = cwd or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return {"commit": commit, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def versions() -> dict[str, str | None]:
    import numpy

    try:
        from importlib.metadata import version

        muonlab_version: str | None = version("muonlab")
    except Exception:
        muonlab_version = None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "muonlab": muonlab_version,
        "platform": platform.platform(),
    }


class JsonlWriter:
    """Append-only JSON-lines file, flushed after every line."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._f = self.path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, default=_json_default) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line from a crash
    return out


def truncate_jsonl(path: Path, max_step: int) -> None:
    """Keep only the records with ``step <= max_step`` (a resumed run rewrites what came after)."""
    path = Path(path)
    if not path.is_file():
        return
    keep = [r for r in read_jsonl(path) if int(r["step"]) <= max_step]
    atomic_write_text(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in keep))


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CKPT_DIR / f"step_{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    d = Path(run_dir) / CKPT_DIR
    return sorted(d.glob("step_*.pt")) if d.is_dir() else []


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """``torch.save`` to a temp file then ``os.replace``; prune to the newest ``keep`` checkpoints."""
    path = checkpoint_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ckpt.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink()
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def read_config(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise RunDirError(f"{run_dir}: no {CONFIG}")
    return dict(json.loads(path.read_text()))


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        return None
    return dict(json.loads(path.read_text()))
