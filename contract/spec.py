"""`MuonSpec`: one frozen, validated record naming every knob of the Muon family.

A variant is data, not a class: the reference (`muonlab.reference`, NumPy float64) and the fast
implementation (`muonlab.fast`, torch + Triton) both read a `MuonSpec` and nothing else. Named presets
that reproduce each source live in `muonlab.contract.presets`.

Notation (docs/variants.md): a parameter ``W`` has shape ``[..., m, n]`` in PyTorch ``[out, in]`` layout,
``G`` is its gradient, ``M`` the momentum buffer, ``eta`` the learning rate, ``lambda`` the weight decay.

The knobs act on the eight stages of one optimizer step, described once (equation and knobs per stage) in
docs/variants.md, "The step, stage by stage"; both implementations run them in that order. The field
table there gives each field's values, default and source.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar, get_args

from .coefficients import (
    EXACT_STEPS,
    CoefficientPolicy,
    CoefficientSet,
    resolve_coefficients,
    schedule,
    warn_schedule,
)

GEODESIC_TAU_MIN: Final = 1e-12
"""``tau`` at or below which the geodesic modes ``"exp"``, ``"retract"`` and ``"fixed"`` leave a vector unchanged."""

MomentumForm = Literal["ema", "sum", "optax"]
Orthogonalizer = Literal["newton_schulz", "gram_newton_schulz", "svd"]
Prescale = Literal["frobenius", "spectral", "schatten", "aol"]
Magnitude = Literal["none", "dual_norm"]
Equilibrate = Literal["none", "row", "col", "rowcol", "row_mean", "sign"]
PostOrth = Literal["none", "frobenius_snap", "row", "col", "row_col", "col_row"]
EpsMode = Literal["add", "clamp"]
NsEpsMode = Literal["add", "clamp", "none"]
ComputeDtype = Literal["bfloat16", "float16", "tfloat32", "float32", "float64"]
NdMode = Literal["flatten", "batch"]
ScaleShape = Literal["matrix", "last2"]
ShapeScale = Literal["keller", "moonlight", "dion", "none"]
NorMuonAxis = Literal["row", "col", "longer", "element", "matrix"]
NorMuonInput = Literal["update", "gradient"]
NorMuonRescale = Literal["frobenius", "frobenius_clamp", "rms", "rms_eps", "input_norm", "none"]
DecayPlacement = Literal["param", "update", "both"]
DecayLr = Literal["base", "scaled", "lr2", "base_squared", "unit"]
Cautious = Literal["off", "ge", "gt"]
Sphere = Literal["none", "renormalize", "geodesic", "hyperball"]
SphereAxis = Literal["row", "col", "matrix"]
AngleMode = Literal["exp", "renorm", "retract", "fixed"]
AdamEpsMode = Literal["corrected", "uncorrected"]
NonFinite = Literal["raise", "skip"]

_LITERAL_FIELDS: Final[dict[str, Any]] = {
    "momentum_form": MomentumForm,
    "orthogonalizer": Orthogonalizer,
    "prescale": Prescale,
    "ns_policy": CoefficientPolicy,
    "magnitude": Magnitude,
    "equilibrate": Equilibrate,
    "post_orth": PostOrth,
    "eps_mode": NsEpsMode,
    "compute_dtype": ComputeDtype,
    "nd_mode": NdMode,
    "scale_shape": ScaleShape,
    "shape_scale": ShapeScale,
    "normuon_axis": NorMuonAxis,
    "normuon_input": NorMuonInput,
    "normuon_rescale": NorMuonRescale,
    "normuon_eps_mode": EpsMode,
    "decay_placement": DecayPlacement,
    "decay_lr": DecayLr,
    "cautious": Cautious,
    "sphere": Sphere,
    "sphere_axis": SphereAxis,
    "angle_mode": AngleMode,
    "adam_eps_mode": AdamEpsMode,
    "nonfinite": NonFinite,
}


@dataclass(frozen=True)
class MuonSpec:
    """Every knob of a Muon-family optimizer. Frozen; invalid values raise `ValueError` naming the field.

    Defaults are Keller Jordan's Muon (KellerJordan/Muon ``muon.py``); see `muonlab.contract.presets`
    for every source's settings.
    """

    name: str = "custom"
    """A label only; it does not change the math."""

    lr: float = 0.02
    """Default base learning rate ``eta`` for matrix parameters."""

    # -- momentum (docs/variants.md "Momentum") ---------------------------------------------------
    momentum: float = 0.95
    """``beta`` (EMA/optax) or ``mu`` (sum form)."""
    momentum_form: MomentumForm = "ema"
    """``"ema"`` (KellerJordan/Muon, torch), ``"sum"`` (Moonlight, dion) or ``"optax"`` (EMA with bias
    correction, optax ``scale_by_muon``): the table in docs/variants.md "Momentum (stage 2)"."""
    nesterov: bool = True
    dion2_fraction: float | None = None
    """Dion2 (microsoft/dion ``dion2.py``; docs/variants.md "Dion2"): ``M <- M + G``, then the ``ceil(f s)`` slices
    of largest L1 norm along the shorter dim (rows when ``m <= n``; ``s`` slices) form ``U``, ``Orth`` runs on
    ``U`` alone, the update is 0 elsewhere, and the buffer's selected slices are multiplied by ``momentum`` (error
    feedback). Needs ``momentum_form="sum"`` and no Nesterov; None: off. With ``normuon`` (NorDion2, dion
    ``nordion2.py``) rows are selected whatever the shape, and NorMuon's per-row statistic of the selected rows
    alone is updated and applied."""

    # -- orthogonalization (docs/variants.md "Orthogonalization") -----------------------------------
    orthogonalizer: Orthogonalizer = "newton_schulz"
    """``"newton_schulz"`` iterates the odd quintics of ``ns_coefficients`` (this covers NS5, cubic NS and
    Polar Express); ``"gram_newton_schulz"`` runs the same map on ``R = X X^T`` with an accumulated ``Q``
    (Dao-AILab/gram-newton-schulz; fewer FLOPs on rectangular matrices, equal in exact arithmetic);
    ``"svd"`` returns the exact polar factor ``U V^T`` of the thin SVD."""
    gram_restarts: tuple[int, ...] = (2,)
    """Iterations (0-based, >= 1) at which Gram Newton-Schulz forms ``X <- Q X`` and a fresh ``R`` (the package's
    and dion's default ``[2]``; ``()`` never restarts)."""
    ns_coefficients: str | CoefficientSet = "keller"
    """A set name from `muonlab.contract.coefficients.COEFFICIENT_SETS` or explicit ``(a, b, c)`` triples."""
    ns_steps: int = 5
    ns_policy: CoefficientPolicy = "repeat_last"
    """Past the end of the set: ``"repeat_last"`` (PolarExpress, NeMo ``polar_express``/``cans``/``deepseekv4``)
    or ``"cycle"`` (NeMo ``simple``/``quintic``/``aol``: the steps wrap around the list)."""
    prescale: Prescale = "frobenius"
    """How ``X`` is brought under the iteration's unit band (docs/variants.md "Prescales"; optax
    ``preconditioning``): ``"frobenius"`` ``X / (s ||X||_F + eps)``; ``"spectral"`` ``X / (s ||X||_2 + eps)``
    (an SVD); ``"schatten"`` ``X / max(||X X^T||_F, eps)^(1/2)`` and ``"aol"`` the row scaling
    ``diag(max(sum_j |A_ij|, eps))^(-1/2) X`` (Turbo-Muon), both folded into iteration 0 (its ``A`` reused)
    and with ``eps`` a clamp whatever ``eps_mode`` says (optax's helpers)."""
    norm_scale: float = 1.0
    """Polar Express safety factor ``s``: ``X / (s ||X||_F + eps)``. 1.02 for modded/dion PE, 1.01 paper."""
    eps: float = 1e-7
    eps_mode: NsEpsMode = "add"
    """``"add"``: ``X / (s ||X||_F + eps)``; ``"clamp"``: ``X / max(s ||X||_F, eps)`` (torch.optim.Muon);
    ``"none"``: ``X / (s ||X||_F)`` with the norm reduced in float64 and no guard, so an all-zero ``X`` gives NaN
    (NeMo ``newton_schulz(normalize_in_double=True)``, as upstream by design)."""
    compute_dtype: ComputeDtype = "bfloat16"
    """Dtype of the orthogonalizer in `muonlab.fast` (the reference always computes in float64); ``"float16"``
    is Gram Newton-Schulz's (its normalization runs in float32 and rounds once); ``"tfloat32"`` is float32 with
    every product's operands rounded to TF32's 10-bit mantissa (NeMo's ``fp32_matmul_prec="high"``)."""
    equilibrate: Equilibrate = "none"
    """Before ``Orth`` (docs/variants.md "Equilibration and post-orthogonalization"): MuonEq's ``"row"``, ``"col"``
    and ``"rowcol"`` scale rows / columns by ``(||.||^2 + equilibrate_eps)^equilibrate_exponent`` (MaeChd/muon-eq;
    ``rowcol`` from the same ``N``); ``"row_mean"`` is nanochat's MuonEq-R, rows scaled to the mean row norm with
    ``||row||`` clamped at ``equilibrate_eps``; ``"sign"`` is AdaMuon's ``sign(N)`` (code v2, arXiv 2507.11005
    v2+), not an equilibration but the same place in the step."""
    equilibrate_exponent: float = -0.5
    equilibrate_eps: float = 1e-8
    magnitude: Magnitude = "none"
    """After ``Orth``: ``"dual_norm"`` multiplies ``O`` by ``<N, O>`` per matrix, ``N`` the orthogonalizer's
    input (optax ``adaptive=True``; about the nuclear norm of ``N``)."""
    post_orth: PostOrth = "none"
    """After ``Orth`` and the magnitude rule: Muon+'s ``"row"``, ``"col"``, ``"row_col"``, ``"col_row"`` (rows /
    columns to unit norm, ``+1e-7`` inside the root; K1seki221/MuonPlus) or nanochat's ``"frobenius_snap"``
    (``||O||_F`` to ``sqrt(min(m, n))``), which nanochat calls Muon+ but is a different operation."""
    nd_mode: NdMode = "flatten"
    """Tensors with ``ndim >= 4`` (conv filters ``[out, in, kh, kw]``): ``"flatten"`` views them as
    ``[out, in*kh*kw]`` (Keller); ``"batch"`` treats all leading dims as a batch of ``[kh, kw]`` matrices
    (dion ``flatten=False``). 3-D tensors are always a batch of matrices over their last two dims."""
    scale_shape: ScaleShape = "matrix"
    """Which ``(m, n)`` the shape scale reads: ``"matrix"``, the matrix actually orthogonalized, or
    ``"last2"``, the parameter's own last two dims (Keller's quirk: a flattened conv scales by ``kh/kw``)."""

    # -- update magnitude (docs/variants.md "Shape scale") -----------------------------------------
    shape_scale: ShapeScale = "keller"
    """``"keller"``: ``sqrt(max(1, m/n))`` (Keller, torch ``"original"``, optax default, modded);
    ``"moonlight"``: ``rms_scale * sqrt(max(m, n))`` (Moonlight Eq. 4, torch ``"match_rms_adamw"``, dion
    ``"rms_norm"``, optax ``consistent_rms``); ``"dion"``: ``sqrt(m/n)``, no max (dion ``"spectral_norm"``);
    ``"none"``: 1."""
    rms_scale: float = 0.2
    """Target update RMS of the ``"moonlight"`` rule and of NorMuon's ``"rms"`` rescale."""
    scale_factor: float = 1.0
    """Multiplies the shape rule's factor (NeMo ``extra_scale_factor``)."""

    # -- NorMuon (docs/variants.md "NorMuon") --------------------------------------------------------
    normuon: bool = False
    beta2: float = 0.95
    normuon_axis: NorMuonAxis = "row"
    """Statistic kept per row (``mean`` over the last dim), per column, per element of the longer dim
    (modded-nanogpt: per row when ``m >= n``, else per column), or per element of ``O`` (``"element"``: ``S`` has
    the matrix's shape; AdaMuon, NeMo ``AdaptiveMuon("adamuon")``), or one per matrix (``"matrix"``: ``S`` of
    shape ``[..., 1, 1]``; NAMO)."""
    normuon_input: NorMuonInput = "update"
    """What the statistic is of: ``"update"``, the mean of ``O^2`` over the averaged dims (NorMuon, AdaMuon);
    ``"gradient"``, the squared norm ``||G||^2`` of the raw gradient over them (NAMO, arXiv 2602.17080, as NeMo's
    ``AdaptiveMuon("namo")``: an EMA of ``||G||_F^2`` per matrix)."""
    normuon_rescale: NorMuonRescale = "frobenius"
    """``"frobenius"``: ``O_hat`` keeps ``||O||_F`` (official code, modded, dion), its norm guarded by
    ``normuon_eps_mode``; ``"frobenius_clamp"``: the same with ``max(||O_hat||_F, eps)`` whatever the mode (dion's
    ``_normuon_normalization_core``: ``+ eps`` in the division, a clamp here); ``"rms"``: ``O_hat`` is
    rescaled to RMS ``rms_scale`` (the paper's ``0.2 eta sqrt(mn)/||O_hat||_F``, ``0/0 = 0``); ``"rms_eps"``: the
    same with ``normuon_eps`` guarding ``||O_hat||_F`` by ``normuon_eps_mode`` (AdaMuon's
    ``0.2 sqrt(mn) / (||O_hat||_F + eps)``); ``"input_norm"``: ``O_hat`` times ``||N||_F``, the
    orthogonalizer's input norm (NAMO's ``alpha = ||N||_F / (sqrt(v) + eps)``)."""
    normuon_bias_correction: bool = False
    """Divide ``S`` by ``1 - beta2^t`` before normalizing (AdaMuon code v1); NorMuon has none."""
    normuon_eps: float = 1e-10
    normuon_eps_mode: EpsMode = "add"
    """``"add"``: ``O / (sqrt(S) + eps)``; ``"clamp"``: ``O / sqrt(max(S, eps))`` (modded). The Frobenius
    rescale's denominator is ``+ eps`` or ``max(., eps)`` by the same mode."""

    # -- weight decay (docs/variants.md "Weight decay") ---------------------------------------------
    weight_decay: float = 0.0
    """``lambda``. May be negative: ``lambda < 0`` grows weights (with ``cautious`` the mask then selects the
    coordinates that are grown)."""
    decay_placement: DecayPlacement = "param"
    """``"param"``: decoupled, ``W <- W - eta_d lambda mask (.) W`` (Moonlight Eq. 3);
    ``"update"``: coupled, ``G <- G + lambda W`` before momentum and orthogonalization;
    ``"both"``: both."""
    decay_lr: DecayLr = "base"
    """``eta_d``: ``"base"`` = ``eta``; ``"scaled"`` = ``eta_u`` (= ``eta`` times the shape scale);
    ``"lr2"`` = ``eta * eta_u`` (modded-nanogpt, decay proportional to lr^2)."""
    cautious: Cautious = "off"
    """Cautious weight decay (arXiv 2510.12402 Alg. 1): decay only where ``O (.) W >= 0`` (``"ge"``) or
    ``> 0`` (``"gt"``)."""

    # -- hypersphere (docs/variants.md "Hypersphere") -----------------------------------------------
    sphere: Sphere = "none"
    """``"renormalize"``: Euclidean step, then project back to the sphere (nGPT ``normalize_matrices``);
    ``"geodesic"``: tangent projection and rotation by an angle from ``angle_mode``; ``"hyperball"`` (MuonH,
    modded-nanogpt track 3; NeMo ``MuonHyperball``): the step rescaled to length ``eta_u R`` and the matrix
    renormalized to radius ``R``, on ``sphere_axis="matrix"`` only."""
    hyperball_radius: float | None = None
    """``R`` of ``"hyperball"``: None, the matrix's current ``||W||_F`` (modded MuonH); a number, fixed (NeMo)."""
    sphere_axis: SphereAxis = "row"
    """``"row"``: each row of ``[out, in]`` is a unit vector; ``"col"``: each column; ``"matrix"``: the
    whole matrix lives on the Frobenius sphere of its current radius (MuonH)."""
    angle_mode: AngleMode = "exp"
    """Geodesic angle for tangent step norm ``tau``: ``"exp"``: ``tau``; ``"renorm"``:
    ``atan2(tau, 1 + w.d)`` (reproduces step-then-renormalize exactly); ``"retract"``: ``atan(tau)``;
    ``"fixed"``: ``eta_u``."""

    # -- non-matrix parameters: AdamW (Keller ``adam_update``) ---------------------------------------
    adam_lr: float | None = 3e-4
    """``None`` shares ``lr`` (Moonlight)."""
    adam_betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = 1e-10
    adam_weight_decay: float | None = 0.0
    """``None`` shares ``weight_decay`` (Moonlight)."""
    adam_eps_mode: AdamEpsMode = "corrected"
    """``"corrected"``: ``m_hat / (sqrt(v_hat) + eps)`` (Keller, torch); ``"uncorrected"``:
    ``m / (sqrt(v) + eps) * sqrt(1-beta2^t)/(1-beta1^t)`` (Moonlight, modded)."""

    # -- input policy ---------------------------------------------------------------------------------
    nonfinite: NonFinite = "raise"
    """Non-finite gradients: ``"raise"`` a `ValueError` naming the parameter before any state changes, or
    ``"skip"`` that parameter's step (state and weights untouched)."""

    def __post_init__(self) -> None:
        if isinstance(self.gram_restarts, list):  # a spec read back from JSON
            object.__setattr__(self, "gram_restarts", tuple(self.gram_restarts))
        _validate(self)

    @property
    def coefficients(self) -> CoefficientSet:
        """The resolved ``(a, b, c)`` triples of ``ns_coefficients``."""
        return resolve_coefficients(self.ns_coefficients)

    @property
    def schedule(self) -> CoefficientSet:
        """The triples the iteration applies: ``ns_steps`` of ``ns_coefficients`` under ``ns_policy``."""
        return schedule(self.ns_coefficients, self.ns_steps, self.ns_policy)

    def replace(self, **changes: Any) -> MuonSpec:
        """A copy with ``changes`` applied (validated); unknown field names raise `ValueError`."""
        unknown = sorted(set(changes) - set(field_names()))
        if unknown:
            raise ValueError(f"unknown MuonSpec field(s): {', '.join(unknown)}; known: {', '.join(field_names())}")
        return dataclasses.replace(self, **changes)


def choices(field: str) -> tuple[str, ...]:
    """The values a `MuonSpec` field typed by a ``Literal`` admits (``choices("orthogonalizer")``), read from the
    type itself: tables keyed by a field and test strategies take their keys from here, so a new value is one
    edit. Raises `ValueError` for a field that is not a ``Literal`` (naming those that are)."""
    if field not in _LITERAL_FIELDS:
        raise ValueError(f"field: {field!r} is not a Literal field of MuonSpec; those are {', '.join(_LITERAL_FIELDS)}")
    return tuple(get_args(_LITERAL_FIELDS[field]))


T = TypeVar("T")


def lookup(table: Mapping[Any, T], value: object, field: str) -> T:
    """``table[value]`` for a table keyed by a field's values (an orthogonalizer, a decay rule, ...); a value the
    table lacks (a spec built around validation) raises `ValueError` naming the field and the known values."""
    if value not in table:
        raise ValueError(f"{field}: expected one of {', '.join(map(repr, table))}, got {value!r}")
    return table[value]


def choice_fields() -> tuple[str, ...]:
    """The `MuonSpec` fields typed by a ``Literal``, in declaration order."""
    return tuple(f for f in field_names() if f in _LITERAL_FIELDS)


def field_names() -> tuple[str, ...]:
    """Names of every `MuonSpec` field, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(MuonSpec))


def _check_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected a real number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name}: must be finite, got {value!r}")
    return v


def _check_unit_interval(name: str, value: object) -> None:
    v = _check_real(name, value)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{name}: must lie in [0, 1), got {value!r}")


def _check_positive(name: str, value: object) -> None:
    if _check_real(name, value) <= 0.0:
        raise ValueError(f"{name}: must be > 0, got {value!r}")


def _check_policy(spec: MuonSpec) -> None:
    """Gram restarts, and the iteration counts a named coefficient set admits (`EXACT_STEPS`)."""
    restarts = spec.gram_restarts
    if not isinstance(restarts, tuple) or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in restarts):
        raise ValueError(f"gram_restarts: expected a tuple of iteration indices >= 1, got {restarts!r}")
    name = spec.ns_coefficients if isinstance(spec.ns_coefficients, str) else None
    if name in EXACT_STEPS and spec.ns_steps != EXACT_STEPS[name]:
        raise ValueError(
            f"ns_steps: the {name!r} coefficients are designed for exactly {EXACT_STEPS[name]} steps, got "
            f"{spec.ns_steps} (NeMo raises too)"
        )
    warn_schedule(spec.ns_coefficients, spec.ns_steps, spec.ns_policy, spec.prescale)
    if spec.orthogonalizer == "gram_newton_schulz" and spec.compute_dtype == "bfloat16":
        # Every source runs it in float16 (or float32): bf16's 8-bit mantissa compounds through the accumulated Q
        # and R (measured: up to 0.12 relative error against float64, where standard bf16 NS stays under 0.08).
        raise ValueError(
            "compute_dtype: Gram Newton-Schulz runs in 'float16' (gram-newton-schulz, dion, DeepSpeed) or "
            "'float32'; 'bfloat16' is not supported"
        )


def _validate(spec: MuonSpec) -> None:
    for name, literal in _LITERAL_FIELDS.items():
        value = getattr(spec, name)
        allowed = get_args(literal)
        if value not in allowed:
            raise ValueError(f"{name}: expected one of {', '.join(map(repr, allowed))}, got {value!r}")
    if not isinstance(spec.name, str):
        raise ValueError(f"name: expected a string, got {spec.name!r}")
    for flag in ("nesterov", "normuon", "normuon_bias_correction"):
        if not isinstance(getattr(spec, flag), bool):
            raise ValueError(f"{flag}: expected a bool, got {getattr(spec, flag)!r}")
    _check_real("lr", spec.lr)
    if spec.lr < 0:
        raise ValueError(f"lr: must be >= 0, got {spec.lr!r}")
    _check_unit_interval("momentum", spec.momentum)
    _check_unit_interval("beta2", spec.beta2)
    resolve_coefficients(spec.ns_coefficients)
    if isinstance(spec.ns_steps, bool) or not isinstance(spec.ns_steps, int) or spec.ns_steps < 1:
        raise ValueError(f"ns_steps: expected an integer >= 1, got {spec.ns_steps!r}")
    if spec.ns_steps >= 100:
        raise ValueError(f"ns_steps: expected fewer than 100 iterations, got {spec.ns_steps!r}")
    _check_positive("norm_scale", spec.norm_scale)
    _check_positive("eps", spec.eps)
    _check_positive("rms_scale", spec.rms_scale)
    _check_positive("scale_factor", spec.scale_factor)
    _check_real("equilibrate_exponent", spec.equilibrate_exponent)
    _check_positive("equilibrate_eps", spec.equilibrate_eps)
    _check_policy(spec)
    _check_positive("normuon_eps", spec.normuon_eps)
    _check_real("weight_decay", spec.weight_decay)
    if spec.dion2_fraction is not None:
        f = _check_real("dion2_fraction", spec.dion2_fraction)
        if not 0.0 < f <= 1.0:
            raise ValueError(f"dion2_fraction: must lie in (0, 1] or be None, got {spec.dion2_fraction!r}")
        if spec.momentum_form != "sum" or spec.nesterov:
            raise ValueError(
                "dion2_fraction: Dion2 accumulates M <- M + G and decays the selected slices by momentum; set "
                f"momentum_form='sum' and nesterov=False (got {spec.momentum_form!r}, nesterov={spec.nesterov})"
            )
        if spec.normuon and (spec.normuon_axis, spec.normuon_input) != ("row", "update"):
            raise ValueError(
                "normuon_axis: NorDion2 (dion2_fraction with normuon) keeps NorMuon's statistic of O per row of the "
                f"selected rows; expected 'row' and normuon_input='update', got {spec.normuon_axis!r}, "
                f"{spec.normuon_input!r}"
            )
        if spec.normuon and spec.normuon_rescale == "input_norm":
            raise ValueError("normuon_rescale: 'input_norm' (NAMO) is not defined on Dion2's selected slices")
    if spec.normuon and spec.normuon_input == "gradient" and spec.decay_placement != "param":
        raise ValueError(
            "normuon_input: the gradient statistic (NAMO) reads the raw gradient, which coupled decay changes; set "
            f"decay_placement='param' (got {spec.decay_placement!r}; NeMo refuses 'l2' with 'namo' too)"
        )
    if spec.sphere == "hyperball" and spec.sphere_axis != "matrix":
        raise ValueError(f"sphere_axis: 'hyperball' is a sphere of matrices, got sphere_axis={spec.sphere_axis!r}")
    if spec.hyperball_radius is not None:
        _check_positive("hyperball_radius", spec.hyperball_radius)
    if spec.sphere != "none":
        # NeMo's MuonHyperball decays before the step and projects back to its fixed radius; elsewhere the
        # projection would undo it (or, at the current radius, shrink the sphere itself)
        fixed_ball = spec.sphere == "hyperball" and spec.hyperball_radius is not None
        if spec.weight_decay != 0.0 and not (fixed_ball and spec.decay_placement == "param"):
            raise ValueError(
                f"weight_decay: must be 0 with sphere={spec.sphere!r} (decay is undefined on the sphere; only a "
                f"hyperball of fixed radius takes decoupled decay, as NeMo's MuonHyperball), got {spec.weight_decay!r}"
            )
        if spec.cautious != "off":
            raise ValueError(f"cautious: must be 'off' with sphere={spec.sphere!r}, got {spec.cautious!r}")
    if spec.adam_lr is not None:
        _check_real("adam_lr", spec.adam_lr)
        if spec.adam_lr < 0:
            raise ValueError(f"adam_lr: must be >= 0, got {spec.adam_lr!r}")
    if not (isinstance(spec.adam_betas, tuple) and len(spec.adam_betas) == 2):
        raise ValueError(f"adam_betas: expected a (beta1, beta2) tuple, got {spec.adam_betas!r}")
    _check_unit_interval("adam_betas[0]", spec.adam_betas[0])
    _check_unit_interval("adam_betas[1]", spec.adam_betas[1])
    _check_positive("adam_eps", spec.adam_eps)
    if spec.adam_weight_decay is not None:
        _check_real("adam_weight_decay", spec.adam_weight_decay)
