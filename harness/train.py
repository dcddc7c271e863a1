"""One training run: config -> run directory (docs/harness.md "Commands", "Run directory").

`train` takes the run dir's lock (harness/lock.py), checks the dir, builds everything (`build_run`: data,
seeded model, optimizer, schedule, abort monitor, statistics), then either starts a fresh run dir
(`start_fresh`) or restores the newest intact checkpoint (`restore`), and runs `run_loop`. Each step
(`train_step`) is forward/backward over the micro-batches, optional clipping, the optimizer step, the
post-step hooks, the scheduler step and nGPT renormalization; `run_loop` adds the EMA-smoothed loss, the
abort rules, metrics / manifold statistics, evaluation (`evaluate`), checkpoints (`save_checkpoint`) and
the summary (`write_summary`).

A checkpoint holds the model, optimizer and scheduler state, every RNG state, the step and the loop's own
state (EMA, abort monitor, previous update, elapsed training time), so a resumed run continues
bit-identically. ``elapsed_s`` counts training-step time only (no evaluation, statistics or checkpoint I/O).

Under ``torchrun`` (``WORLD_SIZE > 1``, `harness.torchrun`): the model is wrapped in DDP, Muon runs with
``distributed=train.distributed``, each rank takes its slice of the global batch, the logged losses are
all-reduced means, rank 0 alone holds the lock, writes the run dir and evaluates, and every rank loads the
checkpoint on resume.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import rundir as rd
from . import torchrun as dd
from .abort import AbortMonitor
from .config import RunConfig, config_diff, format_config_diff, resolve_model_config, seq_len_of, total_steps_of
from .endpoints import summarize
from .interrupt import stop_requested
from .lock import DirLock, describe_holder
from .logit_clip import max_logit_hooks
from .manifold import ManifoldTracker
from .optim import apply_muon_schedules, build_optimizer, build_scheduler, muon_compute_dtype, needs_manual_normalize
from .perf import flops_per_token, mfu, peak_flops
from .track import Trackers, TrackInfo

TIMING_FIELDS = ("elapsed_s", "tokens_per_s", "mfu")
"""metrics.jsonl fields that depend on the machine (everything else is bit-identical across a resume)."""

PostStepHook = Callable[[int, torch.nn.Module, torch.optim.Optimizer], Mapping[str, Any] | None]
"""``hook(step, model, optimizer)``, called right after ``optimizer.step()`` (``step`` = the 1-based number
of the step just taken, ``model`` the bare module), under ``torch.no_grad()``. It may change the weights in
place (e.g. a QK-clip); what it
returns is merged into that step's metrics.jsonl record when the step is logged. Hooks carry no state
across a resume."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device: 'cuda' requested but CUDA is not available")
    return torch.device(name)


def micro_batches_of(cfg: RunConfig, world_size: int) -> int:
    """Micro-batches per optimizer step on each rank: ``batch_size / world_size / micro_batch_size``."""
    local = dd.local_batch_size(cfg.train.batch_size, world_size)
    micro = cfg.train.micro_batch_size or local
    if local % micro:
        raise ValueError(
            f"train.micro_batch_size: {micro} does not divide the per-rank batch {local} "
            f"(batch_size {cfg.train.batch_size} / world size {world_size})"
        )
    return local // micro


def default_cache_dir() -> Path:
    env = os.environ.get("MUONLAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "muonlab"


def load_data(cfg: RunConfig, data_dir: Path, *, progress: bool = False) -> tuple[Any, Any]:
    """(tokenizer, TokenShards) for the run's data section, sources relative to ``data_dir``; with a ``task``
    section, (tokenizer, `tasks.TaskData`)."""
    from .data import prepare_tokens
    from .tokenizer import load_tokenizer

    tok = load_tokenizer(cfg.data.tokenizer, Path(data_dir))
    if cfg.task is not None:  # a fine-tuning task's problems instead of the corpus (harness/tasks.py)
        from .tasks import load_task

        return tok, load_task(cfg.task, tok)
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


def autocast_for(cfg: RunConfig, device: torch.device) -> Callable[[], AbstractContextManager[Any]]:
    """A factory of the forward pass's autocast context: bf16 autocast on ``device`` for ``train.dtype =
    "bfloat16"``, else a no-op."""
    if cfg.train.dtype == "bfloat16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    autocast: Callable[[], AbstractContextManager[Any]],
) -> float:
    """Mean loss over the fixed validation batches (model in eval mode, restored afterwards)."""
    was_training = model.training
    model.eval()
    total = 0.0
    for x, y in batches:
        with autocast():
            _, loss = model(x.to(device), y.to(device))
        total += float(loss)
    model.train(was_training)
    return total / len(batches)


def _note(message: str) -> None:
    print(f"muonlab: {message}", file=sys.stderr, flush=True)


# -- the run's objects -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """Everything `build_run` makes from the config; the loop's mutable state is `LoopState`."""

    cfg: RunConfig
    run_dir: Path
    env: dd.DistEnv
    device: torch.device
    mcfg: Any
    seq_len: int
    total_steps: int
    tokens_per_step: int
    micro_batches: int
    shards: Any
    val_batches: list[tuple[torch.Tensor, torch.Tensor]]
    model: torch.nn.Module
    forward: Callable[..., Any]
    """The (DDP-wrapped, compiled) module the loop calls; ``model`` is the bare module."""
    ddp: Any
    """The DDP wrapper under torchrun (its ``no_sync`` skips the all-reduce of all but the last
    micro-batch), else None."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    normalize: bool
    monitor: AbortMonitor
    tracker: ManifoldTracker
    autocast: Callable[[], AbstractContextManager[Any]]
    config_record: dict[str, Any]
    flops_per_token: float
    peak_flops: float | None
    post_step_hooks: list[PostStepHook] = dataclasses.field(default_factory=list)
    trackers: Trackers | None = None
    """TensorBoard / W&B (harness/track.py), rank 0 only; mirrors of metrics.jsonl and the statistics."""
    task_scored: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """`task_scores` of the newest scored step (greedy decoding runs once per step)."""

    @property
    def cfg_sha(self) -> str:
        return str(self.config_record["config_sha256"])


@dataclasses.dataclass
class LoopState:
    """What the loop carries from step to step (and a checkpoint restores)."""

    step: int = 0
    ema: float = 0.0
    elapsed: float = 0.0


@dataclasses.dataclass(frozen=True)
class StepResult:
    loss: float
    """Mean loss of the step's global batch (all micro-batches, all ranks)."""
    finite: bool
    extra: dict[str, Any]
    """What the post-step hooks returned."""


def build_run(
    cfg: RunConfig,
    run_dir: Path,
    data_dir: Path,
    *,
    env: dd.DistEnv,
    device: torch.device,
    progress: bool,
    post_step_hooks: Sequence[PostStepHook] = (),
    resume: bool = False,
) -> Run:
    """Load the data, build the seeded model, optimizer, schedule, monitor and tracker, and (unless resuming,
    which restores the run's own checkpoint) load ``train.init_from``; writes nothing."""
    tok, shards = dd.main_first(env, lambda: load_data(cfg, data_dir, progress=progress))
    mcfg = resolve_model_config(cfg, tok.vocab_size)
    seq_len = seq_len_of(cfg, mcfg)
    total = total_steps_of(cfg, seq_len)
    micro = micro_batches_of(cfg, env.world_size)
    val_batches = shards.val_batches(cfg.train.batch_size, seq_len, cfg.train.eval_batches)
    model, optimizer, scheduler = build_model_and_optimizer(cfg, mcfg, device, env, total)
    init = None
    if cfg.train.init_from is not None and not resume:
        from .pretrained import load_init

        carried = cfg.train.init_optimizer == "carried"
        init = load_init(cfg.train.init_from, carried, model, optimizer, dataclasses.asdict(mcfg))
    post_step_hooks = [*max_logit_hooks(cfg.train, model), *post_step_hooks]  # QK-Clip (harness/logit_clip.py)
    autocast = autocast_for(cfg, device)
    wrapped: torch.nn.Module = model
    ddp = None
    if env.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        wrapped = ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    forward: Callable[..., Any] = torch.compile(wrapped) if cfg.train.compile else wrapped
    tokens_per_step = cfg.train.batch_size * seq_len
    fpt = flops_per_token(mcfg, seq_len)
    meta = shards.meta
    config_record = {
        "config": cfg.model_dump(mode="json"),
        "config_sha256": cfg.sha256(),
        "model_config": dataclasses.asdict(mcfg),
        "n_params": sum(p.numel() for p in model.parameters()),
        "total_steps": total,
        "tokens_per_step": tokens_per_step,
        "token_budget": total * tokens_per_step,
        "micro_batches": micro,
        "flops_per_token": fpt,
        "device": str(device),
        "muon_compute_dtype": muon_compute_dtype(cfg.optimizer, device),
        "torch_threads": torch.get_num_threads(),
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
    if init is not None:
        config_record["init_from"] = init
    return Run(
        cfg=cfg,
        run_dir=run_dir,
        env=env,
        device=device,
        mcfg=mcfg,
        seq_len=seq_len,
        total_steps=total,
        tokens_per_step=tokens_per_step,
        micro_batches=micro,
        shards=shards,
        val_batches=val_batches,
        model=model,
        forward=forward,
        ddp=ddp,
        optimizer=optimizer,
        scheduler=scheduler,
        normalize=needs_manual_normalize(model),
        monitor=AbortMonitor(
            window=cfg.abort.window,
            rise_factor=cfg.abort.rise_factor,
            patience=cfg.abort.patience,
            weight_norm_factor=cfg.abort.weight_norm_factor,
            early_points=cfg.abort.early_points,
            enabled=cfg.abort.enabled,
        ),
        tracker=ManifoldTracker(model, cfg.train.stats_every),
        autocast=autocast,
        config_record=config_record,
        flops_per_token=fpt,
        peak_flops=peak_flops(device, cfg.train.dtype),
        post_step_hooks=list(post_step_hooks),
    )


def build_model_and_optimizer(
    cfg: RunConfig, mcfg: Any, device: torch.device, env: dd.DistEnv, total_steps: int
) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The seeded model (``cfg.seed`` seeds torch, numpy and random first), its optimizer and schedule."""
    from .model import GPT

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    model = GPT(mcfg).to(device)
    optimizer = build_optimizer(model, cfg.optimizer, distributed=cfg.train.distributed if env.enabled else "none")
    scheduler = build_scheduler(optimizer, cfg.schedule, total_steps)
    return model, optimizer, scheduler


# -- run dir: fresh start or resume ---------------------------------------------------------------------


def start_fresh(run: Run, *, force: bool) -> LoopState:
    """Create (or, with ``force``, empty) the run dir and write config.json; rank 0 only writes."""
    dd.barrier(run.env)  # every rank has checked the run dir before rank 0 clears it
    if run.env.is_main:
        rd.prepare_run_dir(run.run_dir, resume=False, force=force)
        rd.atomic_write_json(run.run_dir / rd.CONFIG, run.config_record)
    return LoopState()


def check_resumable_config(run: Run) -> None:
    """`RunDirError` listing every dotted key whose value differs from the run's config.json."""
    stored = rd.read_config(run.run_dir)
    if stored.get("config_sha256") == run.cfg_sha:
        return
    diff = config_diff(stored.get("config") or {}, run.config_record["config"])
    what = format_config_diff(diff) if diff else f"sha256 {stored.get('config_sha256')} vs {run.cfg_sha}"
    raise rd.RunDirError(
        f"{run.run_dir}: config differs from the run's {rd.CONFIG} ({what}); resume with the same config "
        f"(stored -> given)"
    )


def restore(run: Run) -> LoopState:
    """Load the newest intact checkpoint into the run's objects; damaged newer ones are named on stderr and
    renamed ``*.damaged``; the logs are cut back to the checkpoint's step and the stale summary removed."""
    check_resumable_config(run)
    path, ckpt, problems = rd.find_intact_checkpoint(run.run_dir)
    dd.barrier(run.env)  # every rank has read the run dir before rank 0 renames or rewrites anything
    if run.env.is_main:
        rd.remove_temp_files(run.run_dir)
        for problem in problems:
            _note(f"warning: damaged checkpoint {problem}")
        for damaged in rd.list_checkpoints(run.run_dir):
            if damaged.name > path.name:
                _note(f"set aside as {rd.set_aside(damaged).name}")
    try:
        run.model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        run.monitor.load_state_dict(ckpt["abort"])
        run.tracker.load_state_dict(ckpt["tracker"], run.device)
        state = LoopState(step=int(ckpt["step"]), ema=float(ckpt["ema"]), elapsed=float(ckpt["elapsed_s"]))
        _set_rng_state(ckpt["rng"])
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise rd.CheckpointError(f"{path}: cannot be restored into this run ({type(exc).__name__}: {exc})") from None
    if problems and run.env.is_main:
        _note(f"resuming from {path} (step {state.step})")
    dd.barrier(run.env)
    if run.env.is_main:
        rd.truncate_jsonl(run.run_dir / rd.METRICS, state.step, every=run.cfg.train.log_every)
        rd.truncate_jsonl(run.run_dir / rd.STATS, state.step)
        (run.run_dir / rd.SUMMARY).unlink(missing_ok=True)  # rewritten at the next checkpoint
    return state


def save_checkpoint(run: Run, state: LoopState) -> None:
    """Checkpoint of everything the loop needs to continue bit-identically (rank 0 writes)."""
    if not run.env.is_main:
        return
    rd.save_checkpoint(
        run.run_dir,
        state.step,
        {
            "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "abort": run.monitor.state_dict(),
            "tracker": run.tracker.state_dict(),
            "rng": _rng_state(),
            "step": state.step,
            "ema": state.ema,
            "elapsed_s": state.elapsed,
            "config_sha256": run.cfg_sha,
        },
        keep=run.cfg.train.keep_checkpoints,
    )


def task_scores(run: Run, step: int) -> dict[str, Any]:
    """The task's exact-match endpoints (`tasks.task_endpoints`) of the model at ``step``, decoded once per step:
    the last metrics line and metrics.json share them."""
    if step not in run.task_scored:
        from .tasks import task_endpoints

        run.task_scored = {step: task_endpoints(run.model, run.shards, run.device)}
    return run.task_scored[step]


def write_summary(run: Run, state: LoopState, status: str) -> dict[str, Any]:
    """metrics.json (rank 0; other ranks return ``{}``)."""
    if not run.env.is_main:
        return {}
    summary: dict[str, Any] = {
        "status": status,
        "unstable": run.monitor.aborted,
        "abort_reason": run.monitor.reason,
        "steps": state.step,
        "total_steps": run.total_steps,
        "tokens": state.step * run.tokens_per_step,
        "elapsed_s": state.elapsed,
        "config_sha256": run.cfg_sha,
        "n_params": run.config_record["n_params"],
    }
    summary.update(
        summarize(
            run.run_dir,
            target=run.cfg.endpoints.target_loss,
            auc_fraction=run.cfg.endpoints.auc_fraction,
            total_tokens=run.total_steps * run.tokens_per_step,
        )
    )
    if run.cfg.task is not None and status != "running":  # the run's end, also when stopped or aborted
        summary.update(task_scores(run, state.step))
    rd.atomic_write_json(run.run_dir / rd.SUMMARY, summary)
    return summary


# -- one optimizer step ----------------------------------------------------------------------------------


def _micro_context(run: Run, index: int) -> AbstractContextManager[Any]:
    """DDP's ``no_sync`` for every micro-batch but the last (gradients are all-reduced once per step)."""
    if run.ddp is not None and index < run.micro_batches - 1:
        ctx: AbstractContextManager[Any] = run.ddp.no_sync()
        return ctx
    return nullcontext()


def train_step(run: Run, x: torch.Tensor, y: torch.Tensor, step: int) -> StepResult:
    """One optimizer step on this rank's rows ``x, y`` (``step`` = the 0-based number of the step).

    The rows are split into ``run.micro_batches`` micro-batches; each loss is scaled by ``1/count`` before
    its backward, so the accumulated gradient is that of the mean loss over the rows. A non-finite mean
    loss (on any rank) skips the optimizer step. Then: clipping, ``optimizer.step()``, the post-step hooks,
    ``scheduler.step()``, nGPT renormalization; gradients are cleared.
    """
    n = run.micro_batches
    losses = []
    for i, (xm, ym) in enumerate(zip(x.chunk(n), y.chunk(n), strict=True)):
        with _micro_context(run, i):
            with run.autocast():
                _, loss = run.forward(xm, ym)
            losses.append(loss.detach())
            (loss / n if n > 1 else loss).backward()
    local = losses[0] if n == 1 else torch.stack(losses).mean()
    loss_v = dd.mean(local, run.env)  # equal slices: the mean of the rank means is the global mean
    finite = math.isfinite(loss_v)
    extra: dict[str, Any] = {}
    if finite:
        if run.cfg.train.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.train.grad_clip)
        run.tracker.before_update(step + 1)
        apply_muon_schedules(run.optimizer, run.cfg.schedule, step, run.total_steps)
        run.optimizer.step()
        with torch.no_grad():  # a hook may change the weights in place
            for hook in run.post_step_hooks:
                extra.update(hook(step + 1, run.model, run.optimizer) or {})
        run.scheduler.step()
        if run.normalize and (step + 1) % run.mcfg.ngpt_normalize_every == 0:
            run.model.normalize_weights()  # type: ignore[operator]
    run.optimizer.zero_grad(set_to_none=True)
    return StepResult(loss=loss_v, finite=finite, extra=extra)


# -- the loop --------------------------------------------------------------------------------------------


def _progress_bar(run: Run, state: LoopState, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    return tqdm(
        total=run.total_steps, initial=state.step, desc=run.cfg.name, unit="step", dynamic_ncols=True, leave=False
    )


def _metrics_record(run: Run, state: LoopState, result: StepResult, lr: float, smoothed: float) -> dict[str, Any]:
    tokens = state.step * run.tokens_per_step
    tok_s = tokens / state.elapsed if state.elapsed > 0 else None
    rec: dict[str, Any] = {
        "step": state.step,
        "tokens": tokens,
        "train_loss": result.loss if result.finite else None,
        "smoothed_loss": smoothed if result.finite else None,
        "lr": lr,
        "elapsed_s": state.elapsed,
        "tokens_per_s": tok_s,
        "mfu": mfu(tok_s, run.flops_per_token, run.peak_flops),
    }
    rec.update(result.extra)
    return rec


def _advance(run: Run, state: LoopState, x: torch.Tensor, y: torch.Tensor) -> StepResult:
    """`train_step`, timed (training time only), then the step counter and the EMA of the loss (Adam-style
    bias correction in `_smoothed`)."""
    t0 = time.perf_counter()
    result = train_step(run, x, y, state.step)
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    state.elapsed += time.perf_counter() - t0
    state.step += 1
    beta = run.cfg.train.smoothing
    state.ema = beta * state.ema + (1 - beta) * (result.loss if result.finite else 0.0)
    return result


def _smoothed(run: Run, state: LoopState, result: StepResult) -> float:
    """``m_t / (1 - beta^t)``: the bias-corrected EMA of the train loss (NaN after a non-finite loss)."""
    beta = run.cfg.train.smoothing
    return state.ema / (1 - beta**state.step) if result.finite else float("nan")


def _observe(run: Run, state: LoopState, result: StepResult, stats_w: rd.JsonlWriter | None) -> str | None:
    """Abort rules on the loss, then (at stats steps) the manifold statistics and the weight-norm rule;
    returns the abort reason or None."""
    reason = run.monitor.observe_loss(state.step, result.loss)
    if not result.finite:
        return reason
    records = run.tracker.after_update(state.step, state.step * run.tokens_per_step)
    if records:
        for r in records:
            if stats_w is not None:
                stats_w.write(r)
        if run.trackers is not None:
            run.trackers.log_stats(records)
        reason = run.monitor.observe_weight_norms(state.step, {r["layer"]: r["weight_norm"] for r in records})
    return reason


def _log(run: Run, state: LoopState, result: StepResult, lr: float, metrics_w: rd.JsonlWriter | None, bar: Any) -> None:
    """One metrics.jsonl line, with the validation loss at eval steps and the last step (rank 0 evaluates)."""
    smoothed = _smoothed(run, state, result)
    rec = _metrics_record(run, state, result, lr, smoothed)
    at_eval = state.step % run.cfg.train.eval_every == 0 or state.step == run.total_steps
    if run.env.is_main and result.finite and at_eval:
        rec["val_loss"] = evaluate(run.model, run.val_batches, run.device, run.autocast)
        task = run.cfg.task
        if task is not None and (task.accuracy_every_eval or state.step == run.total_steps):
            rec.update(task_scores(run, state.step))
    if metrics_w is not None:
        metrics_w.write(rec)
    if run.trackers is not None:
        run.trackers.log_metrics(rec)
    if bar is not None:
        bar.set_postfix(loss=f"{smoothed:.3f}", tok_s=f"{rec['tokens_per_s'] or 0:.0f}")


def run_loop(
    run: Run, state: LoopState, *, progress: bool, stop_after: int | None = None, deadline: float | None = None
) -> str:
    """Train from ``state`` until the budget, an abort, ``stop_after`` steps, the wall-clock ``deadline``
    (``time.monotonic()``) or a stop request (`interrupt.stop_requested`); returns the status: complete,
    aborted or stopped. The last step taken always
    gets a metrics line and a checkpoint."""
    cfg, env = run.cfg, run.env
    metrics_w = rd.JsonlWriter(run.run_dir / rd.METRICS) if env.is_main else None
    stats_w = rd.JsonlWriter(run.run_dir / rd.STATS) if env.is_main else None
    # the global batch of a step is the same for every world size; each rank trains on its rows
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]] = run.shards.batches(
        "train", cfg.train.batch_size, run.seq_len, cfg.seed, start_step=state.step
    )
    bar = _progress_bar(run, state, progress)
    stop = out_of_time = False
    try:
        run.model.train()
        while state.step < run.total_steps and not run.monitor.aborted and not stop:
            x, y = next(batches)
            x, y = dd.rank_slice(x, env), dd.rank_slice(y, env)
            x, y = x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)
            lr = float(run.optimizer.param_groups[0]["lr"])
            result = _advance(run, state, x, y)
            reason = _observe(run, state, result, stats_w)
            # a wall-clock budget or a stop request (interrupt.py) ends the run like a budget: checkpointed
            halt = (deadline is not None and time.monotonic() >= deadline) or stop_requested() is not None
            out_of_time = dd.any_rank(halt, env, run.device)
            if env.enabled:  # identical inputs give identical decisions; this keeps the ranks in lockstep anyway
                stop = dd.any_rank(reason is not None, env, run.device)
            final = state.step in (run.total_steps, stop_after) or out_of_time
            if state.step % cfg.train.log_every == 0 or final or reason is not None or stop:
                _log(run, state, result, lr, metrics_w, bar)
            if bar is not None:
                bar.update(1)
            ce = cfg.train.checkpoint_every
            if (ce is not None and state.step % ce == 0) or final:
                for w in (metrics_w, stats_w):
                    if w is not None:
                        w.sync()
                save_checkpoint(run, state)
                write_summary(run, state, "running")
            if (stop_after is not None and state.step >= stop_after) or out_of_time:
                break
    finally:
        for w in (metrics_w, stats_w):
            if w is not None:
                w.close()
        if bar is not None:
            bar.close()
    if run.monitor.aborted or stop:
        return "aborted"
    if state.step >= run.total_steps:
        return "complete"
    if out_of_time and env.is_main:
        why = stop_requested() or "time budget spent"
        _note(f"{run.run_dir}: {why} at step {state.step}/{run.total_steps}; continue with --resume")
    return "stopped"


# -- entry point -----------------------------------------------------------------------------------------


def train(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    max_minutes: float | None = None,
    post_step_hooks: Sequence[PostStepHook] = (),
    track: Sequence[str] | None = None,
    track_group: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Train one run into ``run_dir``; returns the metrics.json summary (on every rank).

    ``resume`` continues from the newest intact checkpoint; ``force`` deletes a non-empty run dir first
    (the two exclude each other). ``stop_after`` ends the loop after that many completed steps, with a
    checkpoint (used to test resume). ``max_minutes`` is a wall-clock budget for this call (data loading
    included): the step that crosses it is the last, checkpointed, and the status is ``"stopped"``.
    ``post_step_hooks`` run after every optimizer step (`PostStepHook`). ``track`` names the trackers
    (harness/track.py; default ``train.track``), ``track_group`` a sweep run's (sweep, arm). A second
    process on the same ``run_dir`` is refused (`lock.LockError`). With ``WORLD_SIZE > 1`` the run is data-parallel.
    """
    from .data import default_data_dir

    if resume and force:
        raise rd.RunDirError(
            "--resume and --force are mutually exclusive (--resume continues the run, --force deletes it)"
        )
    if max_minutes is not None and not (math.isfinite(max_minutes) and max_minutes > 0):
        raise ValueError(f"max_minutes: must be a positive number of minutes, got {max_minutes!r}")
    deadline = time.monotonic() + 60.0 * max_minutes if max_minutes is not None else None
    world, _, _ = dd.env_world()
    if world > 1 and cfg.train.distributed not in dd.DDP_MODES:
        raise ValueError(
            f"train.distributed: {cfg.train.distributed!r} needs FSDP2 (sharded parameters), which the harness "
            f"does not set up; use 'replicated' or 'none' with torchrun"
        )
    micro_batches_of(cfg, world)  # batch / world size / micro-batch divisibility, before anything starts
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    env, device = dd.setup(resolve_device(cfg.train.device))
    try:
        lock = _lock_run_dir(Path(run_dir), env)
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
                deadline=deadline,
                post_step_hooks=post_step_hooks,
                track=list(cfg.train.track if track is None else track),
                track_group=track_group,
            )
        finally:
            if lock is not None:
                lock.release()
    except BaseException:
        dd.teardown(env, sync=False)
        raise
    dd.teardown(env)
    return summary


def _lock_run_dir(run_dir: Path, env: dd.DistEnv) -> DirLock | None:
    """Rank 0 takes the run dir's lock (creating the dir); every rank raises if it could not."""
    lock: DirLock | None = None
    error: str | None = None
    if env.is_main:
        try:
            lock = DirLock(run_dir, what="run dir").acquire()
        except rd.RunDirError as exc:
            if not env.enabled:
                raise
            error = str(exc)
        if lock is not None and lock.stale is not None:
            _note(f"{run_dir}: took over a stale lock of {describe_holder(lock.stale)} (that process is gone)")
    error = dd.broadcast_object(error, env)
    if error is not None:
        raise rd.RunDirError(error)
    return lock


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
    deadline: float | None,
    post_step_hooks: Sequence[PostStepHook],
    track: list[str],
    track_group: tuple[str, str] | None,
) -> dict[str, Any]:
    # everything that can fail on bad input happens before the run dir is written (the lock aside)
    rd.check_run_dir(run_dir, resume=resume, force=force)
    run = build_run(
        cfg,
        run_dir,
        data_dir,
        env=env,
        device=device,
        progress=progress,
        post_step_hooks=post_step_hooks,
        resume=resume,
    )
    state = restore(run) if resume else start_fresh(run, force=force)
    if track and env.is_main:
        group, arm = track_group or (None, None)
        info = TrackInfo(run_dir, cfg.name, run.config_record, state.step, group=group, arm=arm)
        run.trackers = Trackers(track, info)
    try:
        status = run_loop(run, state, progress=progress, stop_after=stop_after, deadline=deadline)
    finally:
        if run.trackers is not None:
            run.trackers.close()
    return dict(dd.broadcast_object(write_summary(run, state, status), env))
