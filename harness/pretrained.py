"""Starting a run from trained weights (``train.init_from``) and exporting a run's weights (``muonlab export``);
docs/harness.md "Fine-tuning".

Two sources:

* a muonlab checkpoint: a run dir (its newest intact checkpoint, `rundir.find_intact_checkpoint`) or one
  checkpoint file; the optimizer state comes along with ``train.init_optimizer = "carried"``;
* a Hugging Face-layout export: a directory holding ``model.safetensors`` (and the ``config.json`` `export_run`
  writes beside it), or the ``.safetensors`` file itself; weights only.

Either way the pretrained model must be the run's model: the architecture fields of its recorded model config
(`ARCH_FREE` aside) and then every parameter's name and shape. A mismatch is a `ValueError` naming
``train.init_from`` and the field or parameter. What was loaded (kind, file, sha256) goes into the run's
config.json.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from . import rundir as rd

__all__ = ["ARCH_FREE", "SAFETENSORS", "export_run", "load_init", "source_model_config"]

SAFETENSORS = "model.safetensors"
MODEL_CONFIG_KEY = "muonlab_model_config"
"""The model config's key in an export's config.json and in its safetensors metadata (a JSON string there, so a
``.safetensors`` file copied on its own still says what model it holds)."""

ARCH_FREE = frozenset({"seq_len", "ngpt_normalize_every", "init_std", "dropout"})
"""Model config fields a run may change from its pretrained model's: ``seq_len`` (RoPE has no weights, so a
shorter or longer context is an ordinary fine-tune), ``ngpt_normalize_every`` (a training schedule),
``init_std`` (the loaded weights replace the init) and ``dropout`` (0 only). Every other field (sizes, heads,
``ngpt``, ``tie_embeddings``, ``qk_norm``, ``rope_theta``, ``residual_scale``) defines the function the weights
compute: with the same shapes, a different ``n_heads`` would load silently and compute something else."""


def _source(path: Path) -> tuple[str, Path, dict[str, Any] | None]:
    """("checkpoint" | "safetensors", the file to read, the checkpoint when a run dir's search loaded it)."""
    if path.is_file():
        return ("safetensors" if path.suffix == ".safetensors" else "checkpoint"), path, None
    if (path / SAFETENSORS).is_file():
        return "safetensors", path / SAFETENSORS, None
    if path.is_dir():
        ckpt_path, ckpt = _newest_intact(path, "train.init_from", f" and no {SAFETENSORS}")
        return "checkpoint", ckpt_path, ckpt
    raise ValueError(f"train.init_from: {path} does not exist")


def _newest_intact(run_dir: Path, key: str, also: str = "") -> tuple[Path, dict[str, Any]]:
    """`rundir.find_intact_checkpoint`, with a `ValueError` naming ``key`` (and each damaged checkpoint) when
    there is none."""
    if not rd.list_checkpoints(run_dir):
        raise ValueError(f"{key}: {run_dir} holds no intact checkpoint{also} (no {rd.CKPT_DIR}/step_*.pt)")
    try:
        ckpt_path, ckpt, _ = rd.find_intact_checkpoint(run_dir)
    except rd.CheckpointError as exc:
        raise ValueError(f"{key}: {run_dir} holds no intact checkpoint{also} ({exc})") from None
    return ckpt_path, ckpt


def _recorded(path: Path, key: str) -> dict[str, Any] | None:
    """``path``'s JSON object's ``key`` when it is an object; None when the file or the key is missing or damaged
    (the shape check still applies)."""
    try:
        found = json.loads(path.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return found if isinstance(found, dict) else None


def source_model_config(kind: str, file: Path) -> tuple[dict[str, Any] | None, Path]:
    """The pretrained model's config as its source recorded it (None when it recorded none: a checkpoint copied
    out of its run dir, a safetensors file from elsewhere; the shape check alone applies then), and the file that
    records it: a checkpoint's run dir config.json (``model_config``), an export's safetensors metadata or its
    config.json (`MODEL_CONFIG_KEY`)."""
    if kind == "checkpoint":
        record = file.parent.parent / rd.CONFIG
        return (_recorded(record, "model_config") if file.parent.name == rd.CKPT_DIR else None), record
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata() or {}
    if MODEL_CONFIG_KEY in meta:
        found = json.loads(meta[MODEL_CONFIG_KEY])
        return (found if isinstance(found, dict) else None), file
    record = file.parent / rd.CONFIG
    return _recorded(record, MODEL_CONFIG_KEY), record


def _check_config(theirs: Mapping[str, Any], ours: Mapping[str, Any], where: Path) -> None:
    for key in sorted(set(theirs) | set(ours)):
        if key in ARCH_FREE or theirs.get(key) == ours.get(key):
            continue
        raise ValueError(
            f"train.init_from: model.{key} is {theirs.get(key)!r} in the pretrained model ({where}) but "
            f"{ours.get(key)!r} in this run's; set model.{key} (or model.base) to match"
        )


def _check_fits(state: Mapping[str, torch.Tensor], model: torch.nn.Module, where: Path) -> None:
    own = model.state_dict()
    for key in sorted(set(own) | set(state)):
        if key not in state:
            raise ValueError(f"train.init_from: {where} has no parameter {key!r} of this run's model")
        if key not in own:
            raise ValueError(f"train.init_from: {where} has {key!r}, which this run's model does not")
        if tuple(state[key].shape) != tuple(own[key].shape):
            raise ValueError(
                f"train.init_from: {key!r} is {tuple(state[key].shape)} in {where} but {tuple(own[key].shape)} in "
                f"this run's model (model section differs)"
            )


def _read_weights(kind: str, file: Path, ckpt: dict[str, Any] | None) -> tuple[dict[str, Any] | None, Any]:
    """(the checkpoint or None, the weights); a file that cannot be read is a `ValueError` naming it."""
    try:
        if kind == "safetensors":
            from safetensors.torch import load_file

            return None, load_file(str(file))
        ckpt = ckpt if ckpt is not None else rd.load_checkpoint(file)
    except Exception as exc:  # CheckpointError, OSError, safetensors' SafetensorError (an Exception only)
        raise ValueError(f"train.init_from: {file} cannot be read ({exc})") from None
    if "model" not in ckpt:
        raise ValueError(f"train.init_from: {file} is a checkpoint without model weights")
    return ckpt, ckpt["model"]


def load_init(
    init_from: str,
    carried: bool,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    model_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Load ``init_from``'s weights into ``model`` (and, when ``carried``, its optimizer state into ``optimizer``,
    keeping this run's hyperparameters); returns the record config.json keeps. ``model_config`` (this run's
    resolved model config) is checked against the one the source recorded, when it recorded one."""
    kind, file, ckpt = _source(Path(init_from).expanduser())
    if kind == "safetensors" and carried:
        raise ValueError(f"train.init_optimizer: 'carried' needs a muonlab checkpoint; {file} holds weights only")
    ckpt, state = _read_weights(kind, file, ckpt)  # first: a file that cannot be read is named as such
    theirs, where = source_model_config(kind, file)
    if theirs is not None and model_config is not None:
        _check_config(theirs, model_config, where)
    _check_fits(state, model, file)
    model.load_state_dict(state)
    if carried:
        assert ckpt is not None  # a checkpoint: safetensors with carried was refused above
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise ValueError(
                f"train.init_optimizer: the optimizer state in {file} does not fit this run's optimizer "
                f"({exc}); use init_optimizer = 'fresh'"
            ) from None
        for group, h in zip(optimizer.param_groups, hyper, strict=True):
            group.update(h)  # the moments are carried; lr, decay, betas are this run's
    return {
        "path": str(init_from),
        "kind": kind,
        "file": str(file),
        "sha256": rd.file_sha256(file),
        "optimizer": "carried" if carried else "fresh",
    }


def export_run(run_dir: Path, out: Path) -> Path:
    """Write the newest intact checkpoint's weights of ``run_dir`` as ``out/model.safetensors`` with a
    ``config.json`` (the model config, and where the weights come from); returns the safetensors path. The model
    config also goes into the safetensors metadata (`MODEL_CONFIG_KEY`)."""
    from safetensors.torch import save_file

    ckpt_path, ckpt = _newest_intact(run_dir, "RUN_DIR")
    record = rd.read_config(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in ckpt["model"].items()}
    target = out / SAFETENSORS
    model_config = record.get("model_config")
    save_file(
        tensors,
        str(target),
        metadata={"format": "pt", "source": "muonlab", MODEL_CONFIG_KEY: json.dumps(model_config, sort_keys=True)},
    )
    rd.atomic_write_json(
        out / rd.CONFIG,
        {
            "model_type": "muonlab-gpt",
            MODEL_CONFIG_KEY: model_config,
            "source_run": str(run_dir),
            "source_checkpoint": ckpt_path.name,
            "step": int(ckpt["step"]),
            "config_sha256": record.get("config_sha256"),
        },
    )
    return target
