"""One training run: config -> run directory (docs/harness.md "Training runs").

`train` builds the model (seeded), the token shards, the optimizer and schedule, then loops over steps:
forward/backward, optional clipping, optimizer + scheduler step, nGPT renormalization, EMA-smoothed loss,
abort rules, metrics / manifold stats logging, evaluation and checkpoints. A checkpoint holds the model,
optimizer and scheduler state, every RNG state, the step and the loop's own state (EMA, abort monitor,
previous update, elapsed training time), so ``resume=True`` continues bit-identically.

``elapsed_s`` counts training-step time only (no evaluation, statistics or checkpoint I/O).

Under ``torchrun`` (``WORLD_SIZE > 1``, `harness.distributed`): the model is wrapped in DDP, Muon runs with
``distributed=train.distributed``, each rank takes its slice of the global batch, the logged losses are
all-reduced means, rank 0 alone writes the run dir and evaluates, and every rank loads the checkpoint on resume.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed as dd
from . import rundir as rd
from .abort import AbortMonitor
from .config import RunConfig
from .endpoints import compute_endpoints
from .optim import build_optimizer, build_scheduler, needs_manual_normalize
from .stats import ManifoldTracker

TIMING_FIELDS = ("elapsed_s", "tokens_per_s")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device: 'cuda' requested but CUDA is not available")
    return torch.device(name)


def resolve_model_config(cfg: RunConfig, vocab_size: int | None = None) -> Any:
    """``MODEL_CONFIGS[model.base]`` with the section's overrides; checks the tokenizer fits the vocab."""
    from .model import MODEL_CONFIGS

    if cfg.model.base not in MODEL_CONFIGS:
        raise ValueError(f"model.base: unknown model {cfg.model.base!r}; known: {', '.join(MODEL_CONFIGS)}")
    try:
        mcfg = dataclasses.replace(MODEL_CONFIGS[cfg.model.base], **cfg.model.overrides())
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model: {exc}") from None
    if vocab_size is not None and mcfg.vocab_size < vocab_size:
        raise ValueError(
            f"model.vocab_size: {mcfg.vocab_size} is smaller than the tokenizer's vocab ({vocab_size}); "
            f"choose another data.tokenizer or set model.vocab_size"
        )
    if cfg.train.seq_len is not None and cfg.train.seq_len > mcfg.seq_len:
        raise ValueError(f"train.seq_len: {cfg.train.seq_len} exceeds model seq_len {mcfg.seq_len}")
    return mcfg


def seq_len_of(cfg: RunConfig, mcfg: Any) -> int:
    return int(cfg.train.seq_len or mcfg.seq_len)


def total_steps_of(cfg: RunConfig, seq_len: int) -> int:
    if cfg.train.steps is not None:
        return cfg.train.steps
    assert cfg.train.token_budget is not None
    return math.ceil(cfg.train.token_budget / (cfg.train.batch_size * seq_len))


def default_cache_dir() -> Path:
    env = os.environ.get("MUONLAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "muonlab"


def load_data(cfg: RunConfig, data_dir: Path, *, progress: bool = False) -> tuple[Any, Any]:
    """(tokenizer, TokenShards) for the run's data section; sources are relative to ``data_dir``."""
    from .data import prepare_tokens
    from .tokenizer import load_tokenizer

    tok = load_tokenizer(cfg.data.tokenizer, Path(data_dir))
    sources = []
    for s in cfg.data.sources:
        p = Path(s).expanduser()
        if not p.is_absolute():
            p = Path(data_dir) / p
        if not p.exists():
            raise FileNotFoundError(f"data.sources: {p} does not exist")
        sources.append(p)
    cache = Path(cfg.data.cache_dir).expanduser() if cfg.data.cache_dir else default_cache_dir() / "tokens"
    shards = prepare_tokens(
        sources, tok, cache, val_fraction=cfg.data.val_fraction, max_bytes=cfg.data.max_bytes, progress=progress
    )
    return tok, shards


def _rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device, autocast: Any
) -> float:
    was_training = model.training
    model.eval()
    total = 0.0
    for x, y in batches:
        with autocast():
            _, loss = model(x.to(device), y.to(device))
        total += float(loss)
    model.train(was_training)
    return total / len(batches)


def total_weight_norms(stats: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """``(tokens, sqrt(sum of squared layer weight norms))`` per stats step."""
    by_step: dict[int, list[Any]] = {}
    for r in stats:
        entry = by_step.setdefault(int(r["step"]), [float(r["tokens"]), 0.0])
        entry[1] += float(r["weight_norm"]) ** 2
    return [(t, math.sqrt(s)) for _, (t, s) in sorted(by_step.items())]


def summarize(run_dir: Path, *, target: float | None, auc_fraction: float, total_tokens: float) -> dict[str, Any]:
    """Endpoints of a run from its metrics.jsonl and manifold_stats.jsonl."""
    records = rd.read_jsonl(Path(run_dir) / rd.METRICS)
    stats = rd.read_jsonl(Path(run_dir) / rd.STATS)
    return compute_endpoints(
        records,
        target=target,
        auc_fraction=auc_fraction,
        total_tokens=total_tokens,
        weight_norms=total_weight_norms(stats),
    )


def train(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train one run into ``run_dir``; returns the metrics.json summary (on every rank).

    ``stop_after`` ends the loop after that many completed steps, with a checkpoint (used to test resume).
    With ``WORLD_SIZE > 1`` in the environment the run is data-parallel (module docstring).
    """
    from .data import default_data_dir

    world, _, _ = dd.env_world()
    if world > 1:
        if cfg.train.distributed not in dd.DDP_MODES:
            raise ValueError(
                f"train.distributed: {cfg.train.distributed!r} needs FSDP2 (sharded parameters), which the harness "
                f"does not set up; use 'replicated' or 'none' with torchrun"
            )
        dd.local_batch_size(cfg.train.batch_size, world)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    env, device = dd.setup(resolve_device(cfg.train.device))
    try:
        summary = _train(
            cfg,
            Path(run_dir),
            Path(data_dir) if data_dir is not None else default_data_dir(),
            env=env,
            device=device,
            resume=resume,
            force=force,
            progress=progress and env.is_main,
            stop_after=stop_after,
        )
    except BaseException:
        dd.teardown(env, sync=False)
        raise
    dd.teardown(env)
    return summary


def _train(
    cfg: RunConfig,
    run_dir: Path,
    data_dir: Path,
    *,
    env: dd.DistEnv,
    device: torch.device,
    resume: bool,
    force: bool,
    progress: bool,
    stop_after: int | None,
) -> dict[str, Any]:
    from .model import GPT

    # -- everything that can fail on bad input happens before the run dir is touched -----------------------
    if resume and rd.latest_checkpoint(run_dir) is None:
        raise rd.RunDirError(f"{run_dir}: nothing to resume (no checkpoint in {run_dir / rd.CKPT_DIR})")
    if not resume and rd.is_nonempty(run_dir) and not force:
        raise rd.RunDirError(
            f"{run_dir}: run dir exists and is not empty; pass --resume to continue it or --force to overwrite it"
        )
    tok, shards = dd.main_first(env, lambda: load_data(cfg, data_dir, progress=progress))
    mcfg = resolve_model_config(cfg, tok.vocab_size)
    seq_len = seq_len_of(cfg, mcfg)
    total = total_steps_of(cfg, seq_len)
    tokens_per_step = cfg.train.batch_size * seq_len
    val_batches = shards.val_batches(cfg.train.batch_size, seq_len, cfg.train.eval_batches)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    model = GPT(mcfg).to(device)
    optimizer = build_optimizer(model, cfg.optimizer, distributed=cfg.train.distributed if env.enabled else "none")
    scheduler = build_scheduler(optimizer, cfg.schedule, total)
    normalize = needs_manual_normalize(model)
    monitor = AbortMonitor(
        window=cfg.abort.window,
        rise_factor=cfg.abort.rise_factor,
        patience=cfg.abort.patience,
        weight_norm_factor=cfg.abort.weight_norm_factor,
        early_points=cfg.abort.early_points,
        enabled=cfg.abort.enabled,
    )
    tracker = ManifoldTracker(model, cfg.train.stats_every)

    cfg_json = cfg.model_dump(mode="json")
    cfg_sha = cfg.sha256()
    meta = shards.meta
    config_record = {
        "config": cfg_json,
        "config_sha256": cfg_sha,
        "model_config": dataclasses.asdict(mcfg),
        "n_params": model.num_params(),
        "total_steps": total,
        "tokens_per_step": tokens_per_step,
        "token_budget": total * tokens_per_step,
        "device": str(device),
        "world_size": env.world_size,
        "git": rd.git_info(),
        "versions": rd.versions(),
        "data": {
            "data_dir": str(data_dir),
            "key": meta.get("key"),
            "sources": meta.get("sources"),
            "tokenizer": meta.get("tokenizer"),
            "train_tokens": meta.get("train_tokens"),
            "val_tokens": meta.get("val_tokens"),
        },
    }

    step, ema_m, elapsed = 0, 0.0, 0.0
    if resume:
        stored = rd.read_config(run_dir)
        if stored.get("config_sha256") != cfg_sha:
            raise rd.RunDirError(
                f"{run_dir}: config differs from the run's config.json (sha256 {stored.get('config_sha256')} vs "
                f"{cfg_sha}); resume with the same config"
            )
        ckpt = rd.load_checkpoint(rd.latest_checkpoint(run_dir))  # type: ignore[arg-type]
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        monitor.load_state_dict(ckpt["abort"])
        tracker.load_state_dict(ckpt["tracker"], device)
        step, ema_m, elapsed = int(ckpt["step"]), float(ckpt["ema"]), float(ckpt["elapsed_s"])
        _set_rng_state(ckpt["rng"])
        dd.barrier(env)  # every rank has read the run dir before rank 0 rewrites its logs
        if env.is_main:
            rd.truncate_jsonl(run_dir / rd.METRICS, step)
            rd.truncate_jsonl(run_dir / rd.STATS, step)
    else:
        dd.barrier(env)  # every rank has checked the run dir before rank 0 clears it
        if env.is_main:
            rd.prepare_run_dir(run_dir, resume=False, force=force)
            rd.atomic_write_json(run_dir / rd.CONFIG, config_record)

    beta = cfg.train.smoothing
    autocast: Any = nullcontext
    if cfg.train.dtype == "bfloat16" and device.type == "cuda":
        autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
    wrapped: torch.nn.Module = model
    if env.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        wrapped = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    fwd = torch.compile(wrapped) if cfg.train.compile else wrapped

    def checkpoint() -> None:
        if not env.is_main:
            return
        rd.save_checkpoint(
            run_dir,
            step,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "abort": monitor.state_dict(),
                "tracker": tracker.state_dict(),
                "rng": _rng_state(),
                "step": step,
                "ema": ema_m,
                "elapsed_s": elapsed,
                "config_sha256": cfg_sha,
            },
            keep=cfg.train.keep_checkpoints,
        )

    def write_summary(status: str) -> dict[str, Any]:
        if not env.is_main:
            return {}
        summary: dict[str, Any] = {
            "status": status,
            "unstable": monitor.aborted,
            "abort_reason": monitor.reason,
            "steps": step,
            "total_steps": total,
            "tokens": step * tokens_per_step,
            "elapsed_s": elapsed,
            "config_sha256": cfg_sha,
            "n_params": config_record["n_params"],
        }
        summary.update(
            summarize(
                run_dir,
                target=cfg.endpoints.target_loss,
                auc_fraction=cfg.endpoints.auc_fraction,
                total_tokens=total * tokens_per_step,
            )
        )
        rd.atomic_write_json(run_dir / rd.SUMMARY, summary)
        return summary

    metrics_w = rd.JsonlWriter(run_dir / rd.METRICS) if env.is_main else None
    stats_w = rd.JsonlWriter(run_dir / rd.STATS) if env.is_main else None
    # the global batch of a step is the same for every world size; each rank trains on its rows
    batches = shards.batches("train", cfg.train.batch_size, seq_len, cfg.seed, start_step=step)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=step, desc=cfg.name, unit="step", dynamic_ncols=True, leave=False)
    status = "running"
    stop = False
    try:
        model.train()
        while step < total and not monitor.aborted and not stop:
            x, y = next(batches)
            x, y = dd.rank_slice(x, env), dd.rank_slice(y, env)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            t0 = time.perf_counter()
            lr = float(optimizer.param_groups[0]["lr"])
            with autocast():
                _, loss = fwd(x, y)
            loss_v = dd.mean(loss.detach(), env)  # equal slices: the mean of the rank means is the global mean
            finite = math.isfinite(loss_v)
            if finite:
                loss.backward()
                if cfg.train.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
                tracker.before_update(step + 1)
                optimizer.step()
                scheduler.step()
                if normalize and (step + 1) % mcfg.ngpt_normalize_every == 0:
                    model.normalize_weights()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed += time.perf_counter() - t0
            step += 1
            tokens = step * tokens_per_step
            ema_m = beta * ema_m + (1 - beta) * (loss_v if finite else 0.0)
            smoothed = ema_m / (1 - beta**step) if finite else float("nan")
            reason = monitor.observe_loss(step, loss_v)
            if finite:
                records = tracker.after_update(step, tokens)
                if records:
                    for r in records:
                        if stats_w is not None:
                            stats_w.write(r)
                    reason = monitor.observe_weight_norms(step, {r["layer"]: r["weight_norm"] for r in records})
            if env.enabled:  # identical inputs give identical decisions; this keeps the ranks in lockstep anyway
                stop = dd.any_rank(reason is not None, env, device)
            last = step in (total, stop_after) or reason is not None or stop
            if step % cfg.train.log_every == 0 or last:
                rec: dict[str, Any] = {
                    "step": step,
                    "tokens": tokens,
                    "train_loss": loss_v if finite else None,
                    "smoothed_loss": smoothed if finite else None,
                    "lr": lr,
                    "elapsed_s": elapsed,
                    "tokens_per_s": tokens / elapsed if elapsed > 0 else None,
                }
                if env.is_main and finite and (step % cfg.train.eval_every == 0 or step == total):
                    rec["val_loss"] = evaluate(model, val_batches, device, autocast)
                if metrics_w is not None:
                    metrics_w.write(rec)
                if bar is not None:
                    bar.set_postfix(loss=f"{smoothed:.3f}", tok_s=f"{rec['tokens_per_s'] or 0:.0f}")
            if bar is not None:
                bar.update(1)
            ce = cfg.train.checkpoint_every
            if (ce is not None and step % ce == 0) or step in (total, stop_after):
                checkpoint()
                write_summary("running")
            if stop_after is not None and step >= stop_after:
                break
        if monitor.aborted or stop:
            status = "aborted"
        elif step >= total:
            status = "complete"
        else:
            status = "stopped"
        return dict(dd.broadcast_object(write_summary(status), env))
    finally:
        if metrics_w is not None:
            metrics_w.close()
        if stats_w is not None:
            stats_w.close()
        if bar is not None:
            bar.close()
