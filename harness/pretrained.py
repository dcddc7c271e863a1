"""Starting a run from trained weights (``train.init_from``) and exporting a run's weights (``muonlab export``);
docs/harness.md "Fine-tuning".

Two sources:

* a muonlab checkpoint: a run dir (its newest intact checkpoint, `rundir.find_intact_checkpoint`) or one
  checkpoint file; the optimizer state comes along with ``train.init_optimizer = "carried"``;
* a Hugging Face-layout export: a directory holding ``model.safetensors`` (and the ``config.json`` `export_run`
  writes beside it), or the ``.safetensors`` file itself; weights only.

Either way the weights must fit the run's model exactly (the same names and shapes); a mismatch is a `ValueError`
naming ``train.init_from`` and the parameter. What was loaded (kind, file, sha256) goes into the run's config.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from . import rundir as rd

__all__ = ["SAFETENSORS", "export_run", "load_init"]

SAFETENSORS = "model.safetensors"


def _source(path: Path) -> tuple[str, Path]:
    """("checkpoint" | "safetensors", the file to read)."""
    if path.is_file():
        return ("safetensors" if path.suffix == ".safetensors" else "checkpoint"), path
    if (path / SAFETENSORS).is_file():
        return "safetensors", path / SAFETENSORS
    if path.is_dir():
        try:
            ckpt, _, _ = rd.find_intact_checkpoint(path)
        except rd.CheckpointError as exc:
            raise ValueError(
                f"train.init_from: {path} holds no intact checkpoint and no {SAFETENSORS} ({exc})"
            ) from None
        return "checkpoint", ckpt
    raise ValueError(f"train.init_from: {path} does not exist")


def _check_fits(state: dict[str, torch.Tensor], model: torch.nn.Module, where: Path) -> None:
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


def load_init(
    init_from: str, carried: bool, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Load ``init_from``'s weights into ``model`` (and, when ``carried``, its optimizer state into ``optimizer``,
    keeping this run's hyperparameters); returns the record config.json keeps."""
    kind, file = _source(Path(init_from).expanduser())
    if kind == "safetensors":
        if carried:
            raise ValueError(f"train.init_optimizer: 'carried' needs a muonlab checkpoint; {file} holds weights only")
        from safetensors.torch import load_file

        state = load_file(str(file))
        _check_fits(state, model, file)
        model.load_state_dict(state)
    else:
        ckpt = rd.load_checkpoint(file)
        _check_fits(ckpt["model"], model, file)
        model.load_state_dict(ckpt["model"])
        if carried:
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
    ``config.json`` (the model config, and where the weights come from); returns the safetensors path."""
    from safetensors.torch import save_file

    ckpt_path, ckpt, _ = rd.find_intact_checkpoint(run_dir)
    record = rd.read_config(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in ckpt["model"].items()}
    target = out / SAFETENSORS
    save_file(tensors, str(target), metadata={"format": "pt", "source": "muonlab"})
    rd.atomic_write_json(
        out / "config.json",
        {
            "model_type": "muonlab-gpt",
            "muonlab_model_config": record.get("model_config"),
            "source_run": str(run_dir),
            "source_checkpoint": ckpt_path.name,
            "step": int(ckpt["step"]),
            "config_sha256": record.get("config_sha256"),
        },
    )
    return target
