"""Run directory layout, provenance and atomic writes (docs/harness.md "Run directory").

::

    RUN_DIR/config.json            resolved config, its sha256, git commit + dirty flag, versions, data hashes
    RUN_DIR/metrics.jsonl          one JSON line per log step (flushed)
    RUN_DIR/manifold_stats.jsonl   one JSON line per matrix weight per stats step
    RUN_DIR/metrics.json           summary (written atomically; ``status`` running/complete/aborted)
    RUN_DIR/checkpoints/step_XXXXXXXX.pt          torch.save of the loop's state
    RUN_DIR/checkpoints/step_XXXXXXXX.pt.sha256   its checksum, ``sha256sum -c`` format
    RUN_DIR/.lock                  held by the process writing the run (harness/lock.py)

Checkpoints are written to a temp file, fsynced, their sha256 taken while writing; the checksum file is
written (atomically) before the checkpoint is renamed into place, so a ``step_*.pt`` never exists without
its checksum. `find_intact_checkpoint` checks size, checksum and loadability, newest first.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import IO, Any

import torch

CONFIG = "config.json"
METRICS = "metrics.jsonl"
STATS = "manifold_stats.jsonl"
SUMMARY = "metrics.json"
CKPT_DIR = "checkpoints"
LOCK_FILE = ".lock"
CHECKSUM_SUFFIX = ".sha256"
DAMAGED_SUFFIX = ".damaged"


class RunDirError(RuntimeError):
    """The run directory cannot be used as asked (exists without --resume/--force, nothing to resume...)."""


class CheckpointError(RunDirError):
    """No intact checkpoint to resume from (each damaged one is named in the message)."""


def is_nonempty(path: Path) -> bool:
    """True when ``path`` is a directory holding anything besides a lock file."""
    path = Path(path)
    return path.is_dir() and any(p.name != LOCK_FILE for p in path.iterdir())


def check_run_dir(path: Path, *, resume: bool, force: bool) -> None:
    """Raise `RunDirError` unless ``path`` can be used as asked; touches nothing.

    A fresh run needs ``path`` absent or empty (``force`` allows a non-empty one); ``resume`` needs at
    least one checkpoint. ``resume`` and ``force`` together are refused.
    """
    path = Path(path)
    if resume and force:
        raise RunDirError(
            "--resume and --force are mutually exclusive (--resume continues the run, --force deletes it)"
        )
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path}: exists and is not a directory")
    if resume:
        if not list_checkpoints(path):
            raise RunDirError(f"{path}: nothing to resume (no checkpoint in {path / CKPT_DIR})")
        return
    if is_nonempty(path) and not force:
        hint = "pass --resume to continue it or " if list_checkpoints(path) else ""
        raise RunDirError(f"{path}: run dir exists and is not empty; {hint}pass --force to delete it and start over")


def prepare_run_dir(path: Path, *, resume: bool, force: bool) -> None:
    """`check_run_dir`, then create ``path`` for a fresh run (with ``force``, empty it first, keeping the
    lock file). Never deletes anything unless ``force``."""
    path = Path(path)
    check_run_dir(path, resume=resume, force=force)
    if resume:
        return
    if path.is_dir() and force:
        for entry in path.iterdir():
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    path.mkdir(parents=True, exist_ok=True)


def fsync_dir(path: Path) -> None:
    """fsync a directory so a rename inside it survives a power cut (a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temp file beside ``path``, fsync it, then ``os.replace`` it into place."""
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
    fsync_dir(path.parent)


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

    def sync(self) -> None:
        """fsync the lines written so far (before a checkpoint, so the log reaches at least its step)."""
        self._f.flush()
        os.fsync(self._f.fileno())

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


def truncate_jsonl(path: Path, max_step: int, *, every: int | None = None) -> None:
    """Keep only the records with ``step <= max_step`` (a resumed run rewrites what came after). With
    ``every`` (the log cadence), a record at ``max_step`` off that cadence goes too: it was written only
    because the run stopped there, and the resumed run must log what an uninterrupted one logs."""
    path = Path(path)
    if not path.is_file():
        return
    keep = [
        r
        for r in read_jsonl(path)
        if int(r["step"]) < max_step or (int(r["step"]) == max_step and (every is None or max_step % every == 0))
    ]
    atomic_write_text(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in keep))


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CKPT_DIR / f"step_{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """``step_*.pt`` files of the run, oldest first (the step is zero-padded, so names sort by step)."""
    d = Path(run_dir) / CKPT_DIR
    return sorted(d.glob("step_*.pt")) if d.is_dir() else []


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint file, intact or not (`find_intact_checkpoint` checks them)."""
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def checksum_path(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name + CHECKSUM_SUFFIX)


class _HashingWriter:
    """A binary file wrapper that feeds every written byte to sha256."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` as checkpoint ``step`` atomically with its checksum; prune to the newest ``keep``.

    Order: ``torch.save`` into a temp file (sha256 taken while writing), fsync; the checksum file
    (atomically); ``os.replace`` of the temp file; fsync of the directory. ``keep`` is at least 2.
    """
    if keep < 2:
        raise ValueError(f"keep: at least the two newest checkpoints are kept, got {keep}")
    path = checkpoint_path(run_dir, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ckpt.", dir=path.parent)
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as f:
            w = _HashingWriter(f)
            torch.save(state, w)  # type: ignore[arg-type]  # torch only calls write/flush
            f.flush()
            os.fsync(f.fileno())
        atomic_write_text(checksum_path(path), f"{w.sha.hexdigest()}  {path.name}\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink()
        checksum_path(old).unlink(missing_ok=True)
    return path


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_checkpoint(path: Path) -> str | None:
    """None when ``path`` matches its checksum file, else what is wrong with it (a short phrase).

    A checkpoint without a checksum file (written before checksums existed) is accepted here; loading it
    is the remaining check (`load_checkpoint`).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if size == 0:
        return "is empty (0 bytes)"
    sums = checksum_path(path)
    if not sums.is_file():
        return None
    expected = sums.read_text().split()
    if not expected or len(expected[0]) != 64:
        return f"has a malformed checksum file {sums.name}"
    if file_sha256(path) != expected[0]:
        return f"does not match its sha256 in {sums.name} (truncated or corrupted, {size} bytes)"
    return None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint on the CPU; `CheckpointError` naming the file if it cannot be read."""
    path = Path(path)
    problem = verify_checkpoint(path)
    if problem is not None:
        raise CheckpointError(f"{path}: {problem}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError... on damaged files
        raise CheckpointError(f"{path}: cannot be loaded ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path}: not a muonlab checkpoint (no 'step' entry)")
    return state


def find_intact_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any], list[str]]:
    """``(path, state, problems)``: the newest checkpoint that verifies and loads, and one message per
    newer checkpoint that did not (naming the file). `CheckpointError` when none is intact."""
    problems: list[str] = []
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return path, load_checkpoint(path), problems
        except CheckpointError as exc:
            problems.append(str(exc))
    if not problems:
        raise CheckpointError(f"{run_dir}: nothing to resume (no checkpoint in {Path(run_dir) / CKPT_DIR})")
    raise CheckpointError(
        f"{run_dir}: no intact checkpoint to resume from: "
        + "; ".join(problems)
        + f"; to start the run over, delete {run_dir} (muonlab train --force does)"
    )


def remove_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temp files an interrupted atomic write left in the run dir and its checkpoint dir
    (``.ckpt.*``, ``.step_*``, ``.config.json.*``, ...); only safe while holding the run dir's lock."""
    run_dir = Path(run_dir)
    patterns = [(run_dir / CKPT_DIR, ".ckpt.*"), (run_dir / CKPT_DIR, ".step_*")]
    patterns += [(run_dir, f".{name}.*") for name in (CONFIG, METRICS, STATS, SUMMARY)]
    removed = []
    for folder, pattern in patterns:
        for tmp in folder.glob(pattern) if folder.is_dir() else []:
            if tmp.is_file():
                tmp.unlink()
                removed.append(tmp)
    return removed


def set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint (and its checksum file) to ``*.damaged`` so it is kept but never used."""
    path = Path(path)
    dest = path.with_name(path.name + DAMAGED_SUFFIX)
    os.replace(path, dest)
    sums = checksum_path(path)
    if sums.exists():
        os.replace(sums, sums.with_name(sums.name + DAMAGED_SUFFIX))
    return dest


def _read_json_dict(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunDirError(f"{path}: cannot be read as JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise RunDirError(f"{path}: expected a JSON object")
    return obj


def read_config(run_dir: Path) -> dict[str, Any]:
    """``RUN_DIR/config.json``; `RunDirError` naming the file when it is missing or damaged."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise RunDirError(f"{run_dir}: no {CONFIG}")
    return _read_json_dict(path)


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """``RUN_DIR/metrics.json`` or None when absent; `RunDirError` naming the file when damaged."""
    path = Path(run_dir) / SUMMARY
    if not path.is_file():
        return None
    return _read_json_dict(path)
