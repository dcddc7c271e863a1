"""Run and sweep configurations: pydantic v2 models (unknown keys are errors) loaded from TOML or YAML.

A run config has the sections ``model``, ``data``, ``optimizer``, ``schedule``, ``train``, ``abort`` and
``endpoints`` (docs/harness.md "Config reference"). A sweep config is a run config (the base) plus a
``sweep`` section. Every validation error is re-raised as `ConfigError` whose message names the dotted key.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser as the tomli package (a harness dependency there)
    import tomli as tomllib


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(_Strict):
    """A base entry of `harness.model.MODEL_CONFIGS` plus field overrides (``dataclasses.replace``)."""

    base: str = "tiny"
    vocab_size: int | None = Field(default=None, gt=0)
    d_model: int | None = Field(default=None, gt=0)
    n_layers: int | None = Field(default=None, gt=0)
    n_heads: int | None = Field(default=None, gt=0)
    n_kv_heads: int | None = Field(default=None, gt=0)
    ffn_dim: int | None = Field(default=None, gt=0)
    seq_len: int | None = Field(default=None, gt=0)
    qk_norm: bool | None = None
    rope_theta: float | None = Field(default=None, gt=0)
    tie_embeddings: bool | None = None
    residual_scale: float | None = Field(default=None, gt=0)
    ngpt: bool | None = None
    ngpt_normalize_every: int | None = Field(default=None, gt=0)

    def overrides(self) -> dict[str, Any]:
        """The fields set here (everything but ``base``), for ``dataclasses.replace``."""
        return {k: v for k, v in self.model_dump().items() if k != "base" and v is not None}


class DataSection(_Strict):
    tokenizer: Literal["gpt2", "bpe4096"] = "bpe4096"
    sources: list[str] = Field(default_factory=lambda: ["corpus-debian-v1.txt.xz"])
    """Text files; relative paths are resolved against the data dir."""
    max_bytes: int | None = Field(default=None, gt=0)
    """Use only the first ``max_bytes`` bytes of the concatenated sources."""
    val_fraction: float = Field(default=0.01, gt=0, lt=1)
    cache_dir: str | None = None
    """Where token shards are cached; default ``$MUONLAB_CACHE`` or ``~/.cache/muonlab``."""

    @field_validator("sources")
    @classmethod
    def _nonempty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("needs at least one source file")
        return v


ADAMW_BASELINE_BETAS: tuple[float, float] = (0.9, 0.95)
"""``adam_betas`` of an AdamW run that does not set them."""
ADAMW_BASELINE_EPS = 1e-8
"""``adam_eps`` of an AdamW run that does not set it."""

_MUON_ONLY: dict[str, Any] = {
    "preset": "keller",
    "overrides": {},
    "adam_lr": None,
    "consistent_rms": None,
    "backend": "auto",
}
"""Keys that only a Muon run reads, with their defaults: an AdamW run that sets one to another value is
refused (the key would do nothing)."""

_RENAMED = {"adamw_lr": "adam_lr", "adamw_betas": "adam_betas", "adamw_eps": "adam_eps"}

_SHORTHANDS = {
    "weight_decay": ("weight_decay",),
    "adam_lr": ("adam_lr",),
    "adam_betas": ("adam_betas",),
    "adam_eps": ("adam_eps",),
    "consistent_rms": ("shape_scale", "rms_scale"),
}
"""Section key -> the `MuonSpec` fields it sets (a field may come from the key or from ``overrides``, not both)."""


class OptimizerSection(_Strict):
    """The AdamW knobs use the `MuonSpec` names (``adam_lr``, ``adam_betas``, ``adam_eps``); torch's
    param-group keys ``betas`` / ``eps`` are what they become inside the optimizers."""

    name: Literal["muon", "adamw"] = "muon"
    preset: str = "keller"
    """A `muonlab.contract.presets` name (Muon only)."""
    lr: float | None = Field(default=None, ge=0)
    """Muon: the matrix lr (default: the preset's); AdamW: the lr of every parameter (required)."""
    weight_decay: float | None = None
    """Muon: the matrix decay (may be negative); AdamW: the decay of >= 2-D parameters."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """`MuonSpec` fields applied on top of the preset."""
    adam_lr: float | None = Field(default=None, ge=0)
    """Muon only: lr of the AdamW-routed parameters (the spec's ``adam_lr``; default: the preset's)."""
    adam_betas: tuple[float, float] | None = None
    """``(beta1, beta2)`` of every AdamW-stepped parameter: Muon: of the AdamW-routed ones (the spec's
    ``adam_betas``; default: the preset's); AdamW: of all (default `ADAMW_BASELINE_BETAS`)."""
    adam_eps: float | None = Field(default=None, gt=0)
    """AdamW ``eps``, as ``adam_betas`` (the spec's ``adam_eps``; AdamW default `ADAMW_BASELINE_EPS`)."""
    lr_scale: float = Field(default=1.0, gt=0)
    """Multiplies the run's lr: Muon's (not ``adam_lr``), or AdamW's; a grid over it sweeps the lr of arms that
    start from different lrs (e.g. Muon and AdamW) by the same factors."""
    consistent_rms: float | None = Field(default=None, gt=0)
    """Muon: ``shape_scale="moonlight"`` with ``rms_scale`` = this value (update RMS matched to AdamW)."""
    backend: str = "auto"

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, v: str) -> str:
        from muonlab.contract import PRESETS

        if v not in PRESETS:
            raise ValueError(f"unknown preset {v!r}; known: {', '.join(PRESETS)}")
        return v

    @field_validator("overrides")
    @classmethod
    def _known_fields(cls, v: dict[str, Any]) -> dict[str, Any]:
        from muonlab.contract import field_names

        unknown = sorted(set(v) - set(field_names()))
        if unknown:
            raise ValueError(f"unknown MuonSpec field(s) {', '.join(unknown)}")
        return v

    @field_validator("adam_betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"each beta must be in [0, 1), got {v}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old, new in _RENAMED.items():
                if old in data:
                    raise ValueError(f"{old}: renamed to {new} (the MuonSpec name)")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> OptimizerSection:
        if self.name == "adamw" and self.lr is None:
            raise ValueError("lr: required when name = 'adamw'")
        if self.name == "adamw":
            for key, default in _MUON_ONLY.items():
                if getattr(self, key) != default:
                    raise ValueError(
                        f"{key}: only read by Muon runs, does nothing when name = 'adamw' (in a sweep, a variant "
                        f'that switches to AdamW drops it with unset = ["optimizer.{key}"])'
                    )
        if self.name == "muon":
            for key, fields in _SHORTHANDS.items():
                twice = [f for f in fields if f in self.overrides]
                if getattr(self, key) is not None and twice:
                    raise ValueError(f"{key}: also set as overrides.{twice[0]}; set it once")
            try:
                self.muon_spec()
            except ValueError as exc:
                raise ValueError(f"overrides: {exc}") from None
        return self

    def spec_overrides(self) -> dict[str, Any]:
        """The `MuonSpec` overrides this section implies (``overrides`` + the shorthand keys)."""
        out = dict(self.overrides)
        if self.weight_decay is not None:
            out["weight_decay"] = self.weight_decay
        for key in ("adam_lr", "adam_betas", "adam_eps"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.consistent_rms is not None:
            out["shape_scale"] = "moonlight"
            out["rms_scale"] = self.consistent_rms
        if isinstance(out.get("adam_betas"), list):
            out["adam_betas"] = tuple(out["adam_betas"])
        return out

    def muon_spec(self) -> Any:
        """The resolved `MuonSpec` (preset + overrides); raises ValueError naming a bad field."""
        from muonlab.contract import resolve_spec

        return resolve_spec(self.preset, **self.spec_overrides())

    def adamw_hyperparameters(self) -> tuple[tuple[float, float], float]:
        """An AdamW run's ``(betas, eps)``: ``adam_betas`` / ``adam_eps``, else the baseline defaults."""
        betas = ADAMW_BASELINE_BETAS if self.adam_betas is None else self.adam_betas
        return betas, ADAMW_BASELINE_EPS if self.adam_eps is None else self.adam_eps

    def muon_lr(self) -> float:
        base = self.lr if self.lr is not None else float(self.muon_spec().lr)
        return base * self.lr_scale


class ScheduleSection(_Strict):
    """Warmup (linear from 0), constant, then a cooldown to ``final_lr_frac``; and Muon's momentum and weight decay
    per step (`muonlab.harness.optim`, the tables ``COOLDOWNS``, ``MOMENTUM_SCHEDULES``, ``DECAY_SCHEDULES``)."""

    warmup_frac: float = Field(default=0.0, ge=0, le=1)
    warmup_steps: int | None = Field(default=None, ge=0)
    """Warmup length in steps (nanochat: 40); overrides ``warmup_frac``."""
    cooldown_frac: float = Field(default=0.0, ge=0, le=1)
    cooldown: Literal["linear", "cosine", "nanochat"] = "linear"
    """``"nanochat"``: base_train's ``get_lr_multiplier`` warmdown (1 up to and including its first step)."""
    final_lr_frac: float = Field(default=0.0, ge=0, le=1)
    momentum: Literal["constant", "nanochat"] = "constant"
    """Muon's momentum per step: the group's, or nanochat's ``get_muon_momentum`` (0.85 -> 0.97 over 400 steps,
    0.97, then -> 0.90 over the cooldown)."""
    weight_decay: Literal["constant", "cosine"] = "constant"
    """Muon's weight decay per step: the group's, or nanochat's ``get_weight_decay``, ``lambda (1 + cos(pi t/T))/2``."""

    @model_validator(mode="after")
    def _fits(self) -> ScheduleSection:
        if self.warmup_frac + self.cooldown_frac > 1.0:
            raise ValueError("warmup_frac + cooldown_frac: must be <= 1")
        return self


class TrainSection(_Strict):
    batch_size: int = Field(default=8, gt=0)
    """Sequences per optimizer step (the global batch under torchrun)."""
    micro_batch_size: int | None = Field(default=None, gt=0)
    """Sequences per forward/backward pass (per rank); the step accumulates ``batch_size / (micro_batch_size
    x world size)`` of them, each loss scaled by 1/count. Default: the whole (per-rank) batch at once."""
    seq_len: int | None = Field(default=None, gt=0)
    """Default: the model's seq_len."""
    steps: int | None = Field(default=None, gt=0)
    token_budget: int | None = Field(default=None, gt=0)
    """Alternative to ``steps``: ``steps = ceil(token_budget / (batch_size * seq_len))``."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "bfloat16"] = "float32"
    """``"bfloat16"``: the forward pass runs under ``torch.autocast(device, bfloat16)`` (CUDA or CPU);
    weights, gradients and optimizer state stay float32."""
    threads: int | None = Field(default=None, gt=0)
    grad_clip: float | None = Field(default=None, gt=0)
    log_every: int = Field(default=10, gt=0)
    eval_every: int = Field(default=100, gt=0)
    eval_batches: int = Field(default=4, gt=0)
    stats_every: int = Field(default=50, gt=0)
    checkpoint_every: int | None = Field(default=None, gt=0)
    keep_checkpoints: int = Field(default=2, ge=2)
    """Newest checkpoints kept (at least 2, so a damaged newest one still leaves one to resume from)."""
    smoothing: float = Field(default=0.9, ge=0, lt=1)
    """EMA coefficient of the smoothed train loss (per step, bias-corrected)."""
    compile: bool = False
    """``torch.compile`` the forward pass (the model, or its DDP wrapper)."""
    max_logits: bool = False
    """Record each attention head's largest pre-softmax logit in the training forwards and log the max per
    layer (metrics.jsonl ``max_logit``); one extra ``Q K^T`` per layer (harness/logit_clip.py)."""
    qk_clip_tau: float | None = Field(default=None, gt=0)
    """QK-Clip after every optimizer step (MuonClip; docs/variants.md "QK-Clip (MuonClip)"): heads whose max
    logit exceeds tau get W_q, W_k rescaled onto it. Records the logits (as ``max_logits``); needs
    ``model.qk_norm = false``."""
    qk_clip_alpha: float = Field(default=0.5, ge=0, le=1)
    """The share of the clip on W_q (the rest on W_k), K2's alpha."""
    qk_clip_gqa: Literal["query", "split"] = "query"
    """Rule for a key head shared by several query heads (docs/variants.md "QK-Clip (MuonClip)")."""
    init_from: str | None = None
    """Start from these weights (docs/harness.md "Fine-tuning"): a muonlab run dir (its newest intact checkpoint),
    a checkpoint file, or a directory / ``.safetensors`` file of `muonlab export` (Hugging Face layout)."""
    init_optimizer: Literal["fresh", "carried"] = "fresh"
    """``"carried"``: also the optimizer state of a muonlab checkpoint (its moments; the hyperparameters stay this
    run's). A safetensors checkpoint has none."""
    track: list[Literal["tensorboard", "wandb"]] = Field(default_factory=list, exclude=True)
    """Trackers mirroring metrics.jsonl (harness/track.py); a name or a list. Excluded from the config's
    dump and sha256 (it changes what is watched, not what is computed), like ``sweep.jobs``."""
    distributed: Literal["replicated", "gathered", "sharded", "none"] = "replicated"
    """Muon's ``distributed`` mode when launched with ``WORLD_SIZE > 1`` (torchrun; ignored by one process):
    ``"replicated"`` (DDP, each rank orthogonalizes a share of the matrices) or ``"none"`` (every rank
    orthogonalizes everything). ``"sharded"`` / ``"gathered"`` need FSDP2 and are refused by the trainer."""

    @field_validator("track", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_serializer(mode="wrap")
    def _without_unused_init(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _drop_defaults(handler(self), {"init_from": None, "init_optimizer": "fresh"})

    @model_validator(mode="after")
    def _init_optimizer_needs_init(self) -> TrainSection:
        if self.init_optimizer == "carried" and self.init_from is None:
            raise ValueError("init_optimizer: 'carried' needs init_from")
        return self

    @model_validator(mode="after")
    def _length(self) -> TrainSection:
        if (self.steps is None) == (self.token_budget is None):
            raise ValueError("steps / token_budget: set exactly one of them")
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ValueError(f"micro_batch_size: {self.micro_batch_size} does not divide batch_size {self.batch_size}")
        return self


class TaskSection(_Strict):
    """A fine-tuning task (harness/tasks.py): its problems replace the corpus as training and validation data, and
    the run ends with an exact-match accuracy (``task_accuracy``) by greedy decoding of the test problems."""

    name: Literal["arithmetic"] = "arithmetic"
    steps: int = Field(default=2, ge=1, le=6)
    """Operations per problem after the starting amount."""
    max_value: int = Field(default=20, ge=2)
    """Amounts drawn from 1 ... max_value (a loss never below zero)."""
    n_train: int = Field(default=4000, gt=0)
    n_test: int = Field(default=300, gt=0)
    seed: int = Field(default=0, ge=0)
    """Draws the problems and so the train/test split; the same for every run seed, so arms see one test set."""
    decode_tokens: int = Field(default=6, gt=0)
    """Greedy decoding stops at a newline or after this many tokens."""
    accuracy_every_eval: bool = False
    """Also score the accuracy at every eval step (metrics.jsonl), not only at the last step (metrics.jsonl's last
    line and metrics.json)."""

    @model_serializer(mode="wrap")
    def _without_unused_options(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _drop_defaults(handler(self), {"accuracy_every_eval": False})


class AbortSection(_Strict):
    enabled: bool = True
    window: int = Field(default=50, gt=0)
    """Rolling-median window (steps) of the rising-loss rule."""
    rise_factor: float = Field(default=1.25, gt=1)
    patience: int = Field(default=20, gt=0)
    """Steps the loss must stay above ``rise_factor`` x median before the run aborts."""
    weight_norm_factor: float = Field(default=3.0, gt=1)
    early_points: int = Field(default=3, gt=0)
    """Number of stats records whose median is a layer's early weight norm."""


class EndpointsSection(_Strict):
    target_loss: float | None = Field(default=None, gt=0)
    auc_fraction: float = Field(default=0.25, gt=0, le=1)


class RunConfig(_Strict):
    name: str = "run"
    seed: int = Field(default=0, ge=0)
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection = Field(default_factory=DataSection)
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    train: TrainSection = Field(default_factory=lambda: TrainSection(steps=100))
    abort: AbortSection = Field(default_factory=AbortSection)
    endpoints: EndpointsSection = Field(default_factory=EndpointsSection)
    task: TaskSection | None = None

    @model_serializer(mode="wrap")
    def _without_unused_task(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _drop_defaults(handler(self), {"task": None})

    def sha256(self) -> str:
        return config_sha256(self.model_dump(mode="json"))


Selector = dict[str, Any]
"""An arm of a sweep named by its values: dotted config keys (and ``"variant"`` / ``"point"``) -> value; it
matches the points (results.csv rows) with every one of these values (harness/design.py). With ``best = true``
it may match several, and a test takes the best of them (e.g. ``{ variant = "adamw", best = true }``: AdamW at
its best lr of the grid)."""


def _check_selector(sel: Selector) -> Selector:
    if not sel:
        raise ValueError("an arm selector needs at least one key")
    for key, value in sel.items():
        if key == "best" and not isinstance(value, bool):
            raise ValueError(f"best: expected true or false in arm selector {sel!r}")
        if key not in ("variant", "point", "best") and not _is_config_key(key):
            raise ValueError(f"unknown config key {key!r} in arm selector {sel!r}")
    return sel


class Condition(_Strict):
    """One pre-registered test on a sweep's results (harness/design.py, docs/harness.md "Pre-registered designs").

    ``test = "improves"``: ``arm`` beats ``baseline`` on ``metric`` (lower is better except for the metrics in
    `results.HIGHER_IS_BETTER`), over the stable runs of ``phases``. The improvement is ``baseline - arm``
    (``arm - baseline`` for a higher-is-better metric), relative to ``|baseline|`` for ``min_improvement_pct``;
    it must be ``>= min_improvement`` / ``>= min_improvement_pct`` when given, else ``> 0``. With
    ``seeds_at_least`` the threshold applies to each seed's paired difference and must hold in that many seeds,
    else to the arms' means. ``p_below`` adds a two-sided t-test (paired by seed when the arms share two seeds,
    else Welch) that must give ``p < p_below``. ``arm = "best"``: the best arm on ``metric`` other than the
    baseline.

    ``test = "stable"``: no run of ``phases`` (of ``arm`` and ``baseline`` when given) is flagged unstable.
    """

    test: Literal["improves", "stable"] = "improves"
    arm: Selector | Literal["best"] | None = None
    baseline: Selector | None = None
    metric: str = "val_loss"
    best_by: str | None = None
    """The endpoint that picks a ``"best"`` arm or baseline (default ``metric``): e.g. the primary endpoint, so that a
    secondary criterion tests the arm the primary one chose."""
    phases: list[str] | None = None
    """Phases whose runs are tested; default: every phase before the one this gates (``when``), every phase
    (``criteria``)."""
    min_improvement: float | None = None
    min_improvement_pct: float | None = None
    seeds_at_least: int | None = Field(default=None, gt=0)
    p_below: float | None = Field(default=None, gt=0, lt=1)

    @field_validator("arm", "baseline")
    @classmethod
    def _selectors(cls, v: Any) -> Any:
        return _check_selector(v) if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _shape(self) -> Condition:
        from .results import ENDPOINT_KEYS

        for name in ("metric", "best_by"):
            value = getattr(self, name)
            if value is not None and value not in ENDPOINT_KEYS:
                raise ValueError(f"{name}: {value!r} is not an endpoint ({', '.join(ENDPOINT_KEYS)})")
        picks_best = [s == "best" or (isinstance(s, dict) and s.get("best")) for s in (self.arm, self.baseline)]
        if self.best_by is not None and not any(picks_best):
            raise ValueError("best_by: only used with a 'best' arm or baseline")
        if self.test == "improves":
            if self.arm is None or self.baseline is None:
                raise ValueError("an 'improves' test needs both arm and baseline")
            if self.min_improvement is not None and self.min_improvement_pct is not None:
                raise ValueError("min_improvement, min_improvement_pct: give one threshold, not both")
        else:
            extra = [
                k
                for k in ("min_improvement", "min_improvement_pct", "seeds_at_least", "p_below")
                if getattr(self, k) is not None
            ]
            if extra:
                raise ValueError(f"a 'stable' test takes no {', '.join(extra)}")
            if self.arm == "best" and self.baseline is None:
                raise ValueError("arm = 'best' needs a baseline")
        return self


class Criteria(_Strict):
    """The pre-registered success criteria the report evaluates and states first: "success" when every primary
    and secondary test holds, "not supported" when one fails, "not run" when one lacks the runs to decide."""

    question: str = ""
    primary: list[Condition] = Field(min_length=1)
    secondary: list[Condition] = Field(default_factory=list)


DESIGN_FIELDS = ("rank", "grid", "always", "steps", "token_budget", "when", "criteria")
"""The sweep fields of pre-registered designs: left out of a sweep's dump (and so its sha256) while unused, so a
sweep made before they existed keeps its identity and resumes."""


def _drop_unset_design(out: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in out.items() if not (k in fields and v in (None, []))}


def _drop_defaults(out: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``out`` without the fields still at these defaults: fields added after runs were made stay out of a config's
    dump and sha256 while unused, so those runs keep their identity and resume."""
    return {k: v for k, v in out.items() if not (k in defaults and v == defaults[k])}


class Phase(_Strict):
    name: str
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    top_k: int | None = Field(default=None, gt=0)
    """Run only the best ``top_k`` points of the ``rank`` phases (stable runs, ranked by ``metric``), not
    counting the ``always`` points, which the phase runs besides."""
    metric: str = "val_loss"
    rank: list[str] | None = None
    """The phases whose runs rank the points for ``top_k``; default: the last phase that ran."""
    grid: dict[str, list[Any]] | None = None
    """This phase's own points: every variant x this grid (instead of carrying the last phase's points)."""
    always: list[Selector] = Field(default_factory=list)
    """Points the phase runs whatever the ranking (e.g. the baseline), matched among every point of the sweep."""
    steps: int | None = Field(default=None, gt=0)
    token_budget: int | None = Field(default=None, gt=0)
    """The phase's own training horizon (``train.steps`` / ``train.token_budget`` of its runs); its runs are
    named with it, so a run is shared only by phases with the same horizon."""
    when: list[Condition] = Field(default_factory=list)
    """The phase runs only if every condition holds on the runs before it; otherwise it is skipped (and so is
    nothing else: later phases rank and test what did run)."""

    @field_validator("always")
    @classmethod
    def _always(cls, v: list[Selector]) -> list[Selector]:
        return [_check_selector(s) for s in v]

    @model_validator(mode="after")
    def _one_horizon(self) -> Phase:
        if self.steps is not None and self.token_budget is not None:
            raise ValueError("steps, token_budget: give one horizon, not both")
        if self.grid is not None and (self.top_k is not None or self.rank is not None):
            raise ValueError("grid: a phase with its own grid cannot also select by top_k / rank")
        if self.rank is not None and self.top_k is None:
            raise ValueError("rank: only used with top_k")
        for k, vals in (self.grid or {}).items():
            if not vals:
                raise ValueError(f"grid.{k}: needs at least one value")
        return self

    @model_serializer(mode="wrap")
    def _without_unused_design(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _drop_unset_design(handler(self), DESIGN_FIELDS)

    def horizon(self) -> dict[str, Any]:
        """The run-config overrides of this phase's horizon (empty: the base's)."""
        if self.steps is not None:
            return {"train.steps": self.steps, "train.token_budget": None}
        if self.token_budget is not None:
            return {"train.token_budget": self.token_budget, "train.steps": None}
        return {}


class Variant(_Strict):
    name: str
    set: dict[str, Any] = Field(default_factory=dict)
    """Dotted-key overrides of the base config."""
    unset: list[str] = Field(default_factory=list)
    """Dotted keys of the base config dropped (back to their defaults) before ``set`` applies: e.g. the
    Muon-only keys of the base in a variant that switches to AdamW."""

    @field_validator("unset")
    @classmethod
    def _known_keys(cls, v: list[str]) -> list[str]:
        for key in v:
            if not _is_config_key(key):
                raise ValueError(f"unknown config key {key!r}")
        return v

    def apply(self, data: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """``data`` (a base config) with ``unset`` dropped, then ``set`` and ``extra`` applied."""
        return apply_overrides(without_keys(data, self.unset), {**self.set, **(extra or {})})


class SweepSection(_Strict):
    name: str = "sweep"
    variants: list[Variant] = Field(default_factory=lambda: [Variant(name="base")], min_length=1)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    """Dotted key -> values; the sweep runs every variant x every grid point."""
    phases: list[Phase] = Field(default_factory=lambda: [Phase(name="main")], min_length=1)
    target_loss: float | None = Field(default=None, gt=0)
    pilot: str | None = None
    """A variant name: its first grid point with the first seed is run first, and its final smoothed
    loss times ``target_factor`` is the frozen target (when ``target_loss`` is not given)."""
    target_factor: float = Field(default=1.0, gt=0)
    winner_metric: str = "val_loss"
    criteria: Criteria | None = None
    """Pre-registered success criteria, evaluated and stated first by the report."""
    jobs: int = Field(default=1, gt=0, exclude=True)
    """Runs trained at once, each in its own process (``--jobs`` overrides). How a sweep runs, not what it
    computes: excluded from the sweep's dump and sha256, so a sweep resumes under any number of jobs."""
    track: list[Literal["tensorboard", "wandb"]] | None = Field(default=None, exclude=True)
    """Trackers for every run of the sweep (``--track`` overrides; default the base's ``train.track``),
    runs grouped by sweep and arm (harness/track.py). Excluded from the dump and sha256, like ``jobs``."""

    @field_validator("track", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("grid")
    @classmethod
    def _grid_nonempty(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for k, vals in v.items():
            if not vals:
                raise ValueError(f"{k}: needs at least one value")
        return v

    @model_validator(mode="after")
    def _pilot_known(self) -> SweepSection:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError("variants: names must be unique")
        if self.pilot is not None and self.pilot not in names:
            raise ValueError(f"pilot: {self.pilot!r} is not a variant name ({', '.join(names)})")
        return self

    @model_serializer(mode="wrap")
    def _without_unused_design(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _drop_unset_design(handler(self), DESIGN_FIELDS)

    @model_validator(mode="after")
    def _phases_known(self) -> SweepSection:
        """Phase names are unique; ``rank`` and a condition's ``phases`` name earlier phases (every phase, for
        the criteria); the first phase is unconditional and ranks nothing."""
        seen: list[str] = []
        for i, phase in enumerate(self.phases):
            where = f"phases[{i}] ({phase.name})"
            if phase.name in seen:
                raise ValueError(f"{where}: phase names must be unique")
            if i == 0 and (phase.top_k is not None or phase.when):
                raise ValueError(f"{where}: the first phase has nothing before it to rank (top_k) or test (when)")
            for name in [*(phase.rank or []), *(n for c in phase.when for n in c.phases or [])]:
                if name not in seen:
                    raise ValueError(f"{where}: {name!r} is not an earlier phase ({', '.join(seen) or 'none'})")
            seen.append(phase.name)
        if self.criteria is not None:
            for c in [*self.criteria.primary, *self.criteria.secondary]:
                for name in c.phases or []:
                    if name not in seen:
                        raise ValueError(f"criteria: {name!r} is not a phase ({', '.join(seen)})")
        return self


# -- loading ---------------------------------------------------------------------------------------------


def _format_validation(exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        key = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "<config>"
        msg = err["msg"].removeprefix("Value error, ")
        m = re.match(r"^([A-Za-z_][\w.]*): (.*)$", msg, re.S)
        if m and err["type"] == "value_error":
            key, msg = f"{key}.{m.group(1)}" if loc or prefix else m.group(1), m.group(2)
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{key}: {msg}")
    return "; ".join(lines)


def read_file(path: str | Path) -> dict[str, Any]:
    """Parse a TOML or YAML file into a dict (no validation)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config: no such file {str(p)!r}")
    suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            with p.open("rb") as f:
                return tomllib.load(f)
        if suffix in (".yaml", ".yml"):
            import yaml  # type: ignore[import-untyped]

            data = yaml.safe_load(p.read_text()) or {}
            if not isinstance(data, dict):
                raise ConfigError(f"config: {p} must hold a mapping at top level")
            return data
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"config: cannot parse {p}: {exc}") from None
    raise ConfigError(f"config: {p} must end in .toml, .yaml or .yml")


def parse_value(text: str) -> Any:
    """A command-line override value: a TOML/JSON literal (number, bool, list, string) or a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``data[a][b][c] = value`` for ``key = "a.b.c"`` (creating tables); raises ConfigError on a clash."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"{key}: malformed dotted key")
    cur = data
    for i, part in enumerate(parts[:-1]):
        nxt = cur.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{'.'.join(parts[: i + 1])}: is not a table, cannot set {key}")
        cur = nxt
    cur[parts[-1]] = value


def without_keys(data: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """A copy of ``data`` without the dotted ``keys`` (a key that is not there is skipped)."""
    out = copy.deepcopy(data)
    for key in keys:
        *parents, last = key.split(".")
        node: Any = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return out


def _is_config_key(key: str) -> bool:
    """``key`` names a section or a field of `RunConfig` (``"optimizer.adam_lr"``, ``"model"``)."""
    model: type[BaseModel] = RunConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return i == len(parts) - 1
    return True


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(data)
    for key, value in overrides.items():
        set_dotted(out, key, value)
    return out


def parse_cli_overrides(items: list[str]) -> dict[str, Any]:
    """``["optimizer.lr=0.01", ...]`` -> ``{"optimizer.lr": 0.01}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value")
        out[key.strip()] = parse_value(value.strip())
    return out


def validate_run(data: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc)) from None


def load_run_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    data = read_file(path)
    data.pop("sweep", None)
    return validate_run(apply_overrides(data, overrides or {}))


class SweepConfig(_Strict):
    base: RunConfig
    sweep: SweepSection

    def sha256(self) -> str:
        return config_sha256(self.model_dump(mode="json"))


def validate_sweep(data: dict[str, Any]) -> SweepConfig:
    data = dict(data)
    sweep_data = data.pop("sweep", None)
    if sweep_data is None:
        raise ConfigError("sweep: missing [sweep] section")
    try:
        section = SweepSection.model_validate(sweep_data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, "sweep.")) from None
    base = validate_run(data)
    # every point of the sweep (the sweep's grid and each phase's own grid and horizon) must be a valid run
    grids = [section.grid, *(p.grid for p in section.phases if p.grid is not None)]
    for phase in section.phases:
        try:
            validate_run(apply_overrides(data, phase.horizon()))
        except ConfigError as exc:
            raise ConfigError(f"sweep.phases[{phase.name}]: {exc}") from None
    for variant in section.variants:
        for key, values in [item for grid in grids for item in grid.items()]:
            for value in values:
                try:
                    validate_run(variant.apply(data, {key: value}))
                except ConfigError as exc:
                    raise ConfigError(f"sweep.variants[{variant.name}] with {key}={value!r}: {exc}") from None
        if not section.grid:
            try:
                validate_run(variant.apply(data))
            except ConfigError as exc:
                raise ConfigError(f"sweep.variants[{variant.name}]: {exc}") from None
    return SweepConfig(base=base, sweep=section)


def load_sweep_config(path: str | Path, overrides: dict[str, Any] | None = None) -> SweepConfig:
    return validate_sweep(apply_overrides(read_file(path), overrides or {}))


def flatten_dotted(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "p": [{"c": 2}]}`` -> ``{"a.b": 1, "p.0.c": 2}``: tables and lists of tables are
    followed (a list of tables by index), other lists and scalars are leaves; an empty table is a leaf."""
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten_dotted(v, f"{prefix}{k}."))
        return out
    if isinstance(obj, list) and obj and all(isinstance(v, dict) for v in obj):
        return {k: v for i, item in enumerate(obj) for k, v in flatten_dotted(item, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): obj}


_ABSENT = "<absent>"


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` for every leaf that differs, sorted by key; a key present on
    one side only shows ``"<absent>"`` on the other."""
    a, b = flatten_dotted(old), flatten_dotted(new)
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, _ABSENT), b.get(key, _ABSENT)
        if va != vb:
            out.append((key, va, vb))
    return out


def format_config_diff(diff: list[tuple[str, Any, Any]]) -> str:
    """``optimizer.lr: 0.02 -> 0.03; seed: 0 -> 1`` (values as JSON)."""
    return "; ".join(f"{k}: {json.dumps(a, default=str)} -> {json.dumps(b, default=str)}" for k, a, b in diff)


def config_sha256(obj: Any) -> str:
    """sha256 of the canonical JSON (sorted keys, no whitespace) of ``obj``."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def shipped_configs_dir() -> Path:
    return Path(__file__).parent / "configs"


# -- what a run config resolves to (train and perf both read these) ---------------------------------


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
    """The run's sequence length: ``train.seq_len``, else the model's."""
    return int(cfg.train.seq_len or mcfg.seq_len)


def total_steps_of(cfg: RunConfig, seq_len: int) -> int:
    """The run's optimizer steps: ``train.steps``, else ``train.token_budget`` in whole batches (rounded up)."""
    if cfg.train.steps is not None:
        return cfg.train.steps
    assert cfg.train.token_budget is not None
    return math.ceil(cfg.train.token_budget / (cfg.train.batch_size * seq_len))
