"""`from_upstream`: the exact `MuonSpec` of a named upstream optimizer, built from that upstream's own keywords.

``from_upstream("optax", preconditioning="aol", adaptive=True)`` is the spec of ``optax.contrib.muon`` constructed
with those keywords: each source takes its constructor's keyword names and defaults (the table `UPSTREAMS`). An
unknown keyword raises naming the accepted ones; a setting no `MuonSpec` expresses raises too (never an
approximation). Sources, commits and the mapping of each keyword: docs/variants.md, "Upstream constructors".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from .coefficients import COEFFICIENT_SETS, KELLER, CoefficientSet
from .presets import get_preset
from .spec import MuonSpec

__all__ = ["UPSTREAMS", "Upstream", "from_upstream"]

Keywords = dict[str, Any]


def _unsupported(source: str, key: str, value: object, why: str) -> ValueError:
    return ValueError(f"from_upstream({source!r}): {key}={value!r} cannot be expressed: {why}")


def _triples(source: str, key: str, value: Any) -> CoefficientSet:
    """One ``(a, b, c)`` triple or a sequence of them, as float triples."""
    try:
        try:
            rows = [[float(v) for v in value]]  # one triple
        except TypeError:
            rows = [[float(v) for v in row] for row in value]
    except (TypeError, ValueError):
        raise ValueError(f"from_upstream({source!r}): {key}: expected (a, b, c) triples, got {value!r}") from None
    if not rows or any(len(r) != 3 for r in rows):
        raise ValueError(f"from_upstream({source!r}): {key}: expected (a, b, c) triples, got {value!r}")
    return tuple((r[0], r[1], r[2]) for r in rows)


def _named(triples: CoefficientSet) -> str | CoefficientSet:
    return "keller" if triples == KELLER else triples


def _torch(kw: Keywords) -> MuonSpec:
    scales = {None: ("keller", 0.2), "original": ("keller", 0.2), "match_rms_adamw": ("moonlight", 0.2)}
    if kw["adjust_lr_fn"] not in scales:
        raise _unsupported(
            "torch", "adjust_lr_fn", kw["adjust_lr_fn"], "expected None, 'original' or 'match_rms_adamw'"
        )
    shape, rms = scales[kw["adjust_lr_fn"]]
    return get_preset("torch").replace(
        lr=kw["lr"],
        weight_decay=kw["weight_decay"],
        momentum=kw["momentum"],
        nesterov=kw["nesterov"],
        ns_coefficients=_named(_triples("torch", "ns_coefficients", kw["ns_coefficients"])),
        eps=kw["eps"],
        ns_steps=kw["ns_steps"],
        shape_scale=shape,
        rms_scale=rms,
    )


def _keller(kw: Keywords) -> MuonSpec:
    return get_preset("keller").replace(lr=kw["lr"], weight_decay=kw["weight_decay"], momentum=kw["momentum"])


_OPTAX_PRESETS: Final[dict[str, str]] = {"standard": "keller", "dion": "leloykun"}  # optax _NS_COEFFS_PRESET_DICT


def _optax(kw: Keywords) -> MuonSpec:
    for key in ("weight_decay_mask", "muon_weight_dimension_numbers", "mu_dtype"):
        if kw[key] is not None:
            raise _unsupported("optax", key, kw[key], "route parameters with param groups / matrix_dims instead")
    if kw["adam_eps_root"] != 0.0:
        raise _unsupported("optax", "adam_eps_root", kw["adam_eps_root"], "the AdamW groups have no eps_root")
    coeffs = kw["ns_coeffs"]
    steps = int(kw["ns_steps"])
    if isinstance(coeffs, str):
        if coeffs not in _OPTAX_PRESETS:
            raise ValueError(f"from_upstream('optax'): Unknown ns_coeff preset string: {coeffs!r}")
        rows: str | CoefficientSet = _OPTAX_PRESETS[coeffs]
        n = len(COEFFICIENT_SETS[_OPTAX_PRESETS[coeffs]])
    else:
        triples = _triples("optax", "ns_coeffs", coeffs)
        rows, n = _named(triples), len(triples)
    if n > 1:  # an (n, 3) array: optax requires n <= ns_steps and then runs exactly its n rows
        if n > steps:
            raise ValueError(f"from_upstream('optax'): ns_coeffs has {n} rows for ns_steps={steps} (optax raises)")
        steps = n
    pre = kw["preconditioning"]
    if pre not in ("frobenius", "spectral", "schatten", "aol"):
        raise _unsupported("optax", "preconditioning", pre, "expected 'frobenius', 'spectral', 'aol' or 'schatten'")
    # optax's aol / schatten helpers ignore eps and clamp at their own 1e-8
    eps = float(kw["eps"]) if pre in ("frobenius", "spectral") else 1e-8
    rms = kw["consistent_rms"]
    return get_preset("optax").replace(
        lr=get_preset("optax").lr if kw["learning_rate"] is None else kw["learning_rate"],
        ns_coefficients=rows,
        ns_steps=steps,
        momentum=kw["beta"],
        eps=eps,
        eps_mode="add" if pre in ("frobenius", "spectral") else "clamp",
        prescale=pre,
        weight_decay=kw["weight_decay"],
        nesterov=kw["nesterov"],
        magnitude="dual_norm" if kw["adaptive"] else "none",
        shape_scale="keller" if rms is None else "moonlight",
        rms_scale=0.2 if rms is None else float(rms),
        adam_betas=(float(kw["adam_b1"]), float(kw["adam_b2"])),
        adam_weight_decay=kw["adam_weight_decay"],
        adam_lr=kw["adam_learning_rate"],
    )


def _dion(kw: Keywords) -> MuonSpec:
    if kw["newton_schulz_func"] is not None:
        raise _unsupported("dion", "newton_schulz_func", kw["newton_schulz_func"], "an arbitrary callable")
    scales = {"spectral_norm": "dion", "rms_norm": "moonlight", None: "none"}
    if kw["adjust_lr"] not in scales:
        raise ValueError(
            f"from_upstream('dion'): Invalid adjust_lr value: {kw['adjust_lr']!r}. "
            f"Must be 'spectral_norm', 'rms_norm', or None."
        )
    spec = get_preset("dion").replace(
        lr=kw["lr"],
        momentum=kw["mu"],
        adam_betas=tuple(float(b) for b in kw["betas"]),
        weight_decay=kw["weight_decay"],
        cautious="ge" if kw["cautious_wd"] else "off",  # dion: X (.) U >= 0 via min(sign + 1, 1)
        eps=kw["epsilon"],
        nesterov=kw["nesterov"],
        shape_scale=scales[kw["adjust_lr"]],
        nd_mode="flatten" if kw["flatten"] else "batch",
    )
    if kw["use_gram_newton_schulz"]:  # overrides the other choices, ignores epsilon, swaps the coefficients
        return spec.replace(
            orthogonalizer="gram_newton_schulz",
            ns_coefficients="gram_polar_express",
            norm_scale=1.0,
            eps=1e-7,
            compute_dtype="float16",
            gram_restarts=(2,),
        )
    if not kw["use_polar_express"]:  # zeropower_via_newtonschulz5: the tuned quintic set
        return spec.replace(ns_coefficients="leloykun", norm_scale=1.0)
    return spec


def _dion2(kw: Keywords) -> MuonSpec:
    if kw["selection_scope"] not in ("local", "global"):
        raise _unsupported("dion2", "selection_scope", kw["selection_scope"], "expected 'local' or 'global'")
    # one process holds whole matrices, where both scopes select the same slices
    muon = {k: v for k, v in kw.items() if k not in ("fraction", "ef_decay", "selection_scope")}
    spec = _dion({**muon, "mu": kw["ef_decay"], "nesterov": False, "cautious_wd": False, "newton_schulz_func": None})
    return spec.replace(name="dion2", dion2_fraction=kw["fraction"])


def _nordion2(kw: Keywords) -> MuonSpec:
    if kw["newton_schulz_func"] is not None:
        raise _unsupported("nordion2", "newton_schulz_func", kw["newton_schulz_func"], "an arbitrary callable")
    dion2 = {k: v for k, v in kw.items() if k not in ("mu", "muon_beta2", "newton_schulz_func", "triton_post_ortho")}
    spec = _dion2({**dion2, "ef_decay": kw["mu"]})  # triton_post_ortho: a kernel choice, same math
    nor = get_preset("nordion2")
    return spec.replace(
        name="nordion2",
        normuon=True,
        beta2=kw["muon_beta2"],
        normuon_axis=nor.normuon_axis,
        normuon_eps=nor.normuon_eps,  # hard-coded 1e-8 in _normuon_normalization_core, not epsilon
        normuon_eps_mode=nor.normuon_eps_mode,
        normuon_rescale=nor.normuon_rescale,
    )


_NEMO_SETS: Final[dict[str, tuple[str, str]]] = {
    # coefficient_type -> (set, iteration policy): muon_utils._COEFFICIENT_SETS and repeat_last_types (ca0f167)
    "simple": ("keller", "cycle"),
    "quintic": ("leloykun", "cycle"),
    "polar_express": ("nemo_polar_express", "repeat_last"),
    "cans": ("cans", "repeat_last"),
    "aol": ("turbo_aol_b73111d", "cycle"),
    "deepseekv4": ("deepseekv4", "repeat_last"),
    "cubic5": ("cubic5", "cycle"),
}
_NEMO_SCALES: Final[dict[str, tuple[str, float]]] = {
    # scale_mode -> (shape rule, rms_scale): get_muon_scale_factor; "spectral" is sqrt(max(m, n)), not dion's rule
    "shape_scaling": ("keller", 0.2),
    "spectral": ("moonlight", 1.0),
    "unit_rms_norm": ("dion", 0.2),
}
_NEMO_DECAY: Final[dict[str, tuple[str, str]]] = {
    # weight_decay_method -> (decay_placement, decay_lr): WeightDecayMixin
    "decoupled": ("param", "base"),
    "independent": ("param", "unit"),
    "l2": ("update", "base"),
    "palm": ("param", "base_squared"),
}
_NEMO_PRECISION: Final[dict[str, str]] = {
    # fp32_matmul_prec -> compute_dtype: torch.set_float32_matmul_precision around newton_schulz ("medium": an
    # explicit bf16 cast; "high": TF32 products; "highest": true fp32)
    "medium": "bfloat16",
    "high": "tfloat32",
    "highest": "float32",
}


def _nemo(kw: Keywords, source: str = "emerging_optimizers") -> MuonSpec:
    tables: list[tuple[str, Mapping[str, Any]]] = [
        ("coefficient_type", _NEMO_SETS),
        ("scale_mode", _NEMO_SCALES),
        ("weight_decay_method", _NEMO_DECAY),
        ("fp32_matmul_prec", _NEMO_PRECISION),
    ]
    for key, table in tables:
        if kw[key] not in table:
            raise _unsupported(source, key, kw[key], f"expected one of {', '.join(map(repr, table))}")
    coefficients, policy = _NEMO_SETS[kw["coefficient_type"]]
    shape, rms = _NEMO_SCALES[kw["scale_mode"]]
    placement, decay_lr = _NEMO_DECAY[kw["weight_decay_method"]]
    return MuonSpec(
        name=source,
        lr=kw["lr"],
        momentum=kw["momentum"],
        momentum_form="ema",
        nesterov=kw["nesterov"],
        ns_coefficients=coefficients,
        ns_policy=policy,  # type: ignore[arg-type]
        ns_steps=kw["num_ns_steps"],
        eps=1e-15,  # F.normalize(x, eps=1e-15): a clamp
        eps_mode="clamp",
        compute_dtype=_NEMO_PRECISION[kw["fp32_matmul_prec"]],  # type: ignore[arg-type]
        shape_scale=shape,  # type: ignore[arg-type]
        rms_scale=rms,
        scale_factor=kw["extra_scale_factor"],
        weight_decay=kw["weight_decay"],
        decay_placement=placement,  # type: ignore[arg-type]
        decay_lr=decay_lr,  # type: ignore[arg-type]
    )


def _adamuon(kw: Keywords) -> MuonSpec:
    if kw["ns_steps"] is None or isinstance(kw["ns_steps"], bool) or not isinstance(kw["ns_steps"], int):
        raise _unsupported("adamuon", "ns_steps", kw["ns_steps"], "expected an int")
    # rank / world_size say which rank orthogonalizes which parameter (its all-gather), not what is computed
    return get_preset("adamuon").replace(
        lr=kw["lr"],
        weight_decay=kw["weight_decay"],
        momentum=kw["momentum"],
        beta2=kw["momentum"],  # V's EMA uses group["momentum"]
        nesterov=kw["nesterov"],
        ns_steps=kw["ns_steps"],
        normuon_eps=kw["eps"],
    )


_NEMO_MOMENT2: Final[dict[str, dict[str, Any]]] = {
    # moment2_method -> the second-moment knobs: AdaptiveMuon._apply_moment2_normalization (fd77292), applied to
    # the raw Newton-Schulz output before the scale mode
    "adamuon": {"normuon_axis": "element", "normuon_rescale": "none", "normuon_eps_mode": "add"},  # O/(sqrt(V)+eps)
    "normuon": {"normuon_axis": "longer", "normuon_rescale": "frobenius", "normuon_eps_mode": "clamp"},
    # v <- lerp(v, ||G||_F^2, 1 - beta2) of the raw gradient, U = ||N||_F / (sqrt(v) + eps) O
    "namo": {
        "normuon_axis": "matrix",
        "normuon_input": "gradient",
        "normuon_rescale": "input_norm",
        "normuon_eps_mode": "add",
    },
}


def _nemo_adaptive(kw: Keywords) -> MuonSpec:
    source = "emerging_optimizers_adaptive"
    missing = [k for k in ("lr", "momentum", "weight_decay") if kw[k] is None]
    if missing:
        raise ValueError(f"from_upstream({source!r}): AdaptiveMuon has no default for {', '.join(missing)}; pass them")
    method = kw["moment2_method"]
    if method not in _NEMO_MOMENT2:
        raise _unsupported(source, "moment2_method", method, f"expected one of {', '.join(map(repr, _NEMO_MOMENT2))}")
    knobs = _NEMO_MOMENT2[method]
    if method == "namo" and kw["weight_decay_method"] == "l2":
        raise _unsupported(source, "weight_decay_method", "l2", "NAMO reads the raw gradient (NeMo refuses it too)")
    base = {k: v for k, v in kw.items() if k in _NEMO_DEFAULTS}
    return _nemo(base, source).replace(normuon=True, beta2=kw["beta2"], normuon_eps=kw["eps"], **knobs)


def _nemo_hyperball(kw: Keywords) -> MuonSpec:
    source = "emerging_optimizers_hyperball"
    if kw["hyperball_radius"] is None:
        raise ValueError(f"from_upstream({source!r}): MuonHyperball needs hyperball_radius (no default upstream)")
    if kw["hyperball_eps"] != 1e-15:
        raise _unsupported(source, "hyperball_eps", kw["hyperball_eps"], "muonlab's hyperball guard is fixed")
    if kw["weight_decay_method"] == "l2":
        raise _unsupported(source, "weight_decay_method", "l2", "coupled decay on the hyperball")
    base = {k: v for k, v in kw.items() if k in _NEMO_DEFAULTS}
    # HyperballHook: U <- R U / ||U||_F before W <- W - lr U (the scale mode cancels), then W <- R W / ||W||_F
    return _nemo(base, source).replace(
        sphere="hyperball",
        sphere_axis="matrix",
        hyperball_radius=kw["hyperball_radius"],
        shape_scale="none",
        scale_factor=1.0,
    )


def _megatron(kw: Keywords) -> MuonSpec:
    if not isinstance(kw["muon_split_qkv"], bool):
        raise _unsupported("megatron", "muon_split_qkv", kw["muon_split_qkv"], "expected a bool")
    # muon_split_qkv is a parameter layout, as in Megatron (which splits only parameters flagged is_qkv): the
    # spec is the per-matrix rule, and partition_params(model, split_qkv=True) (the "split" group key) cuts the
    # fused QKV weights into Q, K and V per query group (muonlab.contract.split)
    if kw["muon_tp_mode"] not in ("blockwise", "duplicated", "distributed"):
        raise _unsupported("megatron", "muon_tp_mode", kw["muon_tp_mode"], "unknown")
    # on one tensor-parallel rank every tp mode orthogonalizes the whole matrix
    return _nemo(
        {
            "lr": kw["lr"],
            "momentum": kw["muon_momentum"],
            "weight_decay": kw["weight_decay"],
            "nesterov": kw["muon_nesterov"],
            "weight_decay_method": "decoupled" if kw["decoupled_weight_decay"] else "l2",
            "fp32_matmul_prec": kw["muon_fp32_matmul_prec"],
            "coefficient_type": kw["muon_coefficient_type"],
            "num_ns_steps": kw["muon_num_ns_steps"],
            "scale_mode": kw["muon_scale_mode"],
            "extra_scale_factor": kw["muon_extra_scale_factor"],
        },
        "megatron",
    )


def _deepspeed(kw: Keywords) -> MuonSpec:
    if kw["num_heads"] is not None:
        raise _unsupported(
            "deepspeed",
            "num_heads",
            kw["num_heads"],
            "per-head Muon is a parameter layout here, the 'heads' group option: {'params': [w], 'heads': [H]}",
        )
    methods = {"gram": "gram_newton_schulz", "standard": "newton_schulz"}
    if kw["ns_method"] not in methods:
        raise _unsupported("deepspeed", "ns_method", kw["ns_method"], "expected 'gram' or 'standard'")
    spec = get_preset("keller").replace(
        name="deepspeed", lr=kw["lr"], weight_decay=kw["weight_decay"], momentum=kw["momentum"]
    )
    if kw["ns_method"] == "gram":  # NS5-Keller repeated, in fp16 (the accelerators that have it), restart at 2
        return spec.replace(orthogonalizer="gram_newton_schulz", compute_dtype="float16", gram_restarts=(2,))
    return spec


@dataclass(frozen=True)
class Upstream:
    """A source's constructor keywords with their defaults, and how they map onto a `MuonSpec`."""

    where: str
    defaults: Mapping[str, Any]
    build: Callable[[Keywords], MuonSpec]


_NEMO_DEFAULTS: Final[dict[str, Any]] = {
    "lr": 3e-4,
    "momentum": 0.95,
    "weight_decay": 0.01,
    "nesterov": False,
    "weight_decay_method": "decoupled",
    "fp32_matmul_prec": "medium",
    "coefficient_type": "quintic",
    "num_ns_steps": 5,
    "scale_mode": "spectral",
    "extra_scale_factor": 1.0,
    "use_syrk": False,  # a kernel choice, same math
}

UPSTREAMS: Final[dict[str, Upstream]] = {
    "torch": Upstream(
        "torch.optim.Muon (torch 2.13/2.14)",
        {
            "lr": 1e-3,
            "weight_decay": 0.1,
            "momentum": 0.95,
            "nesterov": True,
            "ns_coefficients": (3.4445, -4.775, 2.0315),
            "eps": 1e-7,
            "ns_steps": 5,
            "adjust_lr_fn": None,
        },
        _torch,
    ),
    "keller": Upstream("KellerJordan/Muon muon.py Muon", {"lr": 0.02, "weight_decay": 0.0, "momentum": 0.95}, _keller),
    "optax": Upstream(
        "optax.contrib.muon (google-deepmind/optax 2edbcbe, optax/contrib/_muon.py)",
        {
            "learning_rate": None,
            "ns_coeffs": (3.4445, -4.7750, 2.0315),
            "ns_steps": 5,
            "beta": 0.95,
            "eps": 1e-8,
            "weight_decay": 0.0,
            "weight_decay_mask": None,
            "mu_dtype": None,
            "nesterov": True,
            "adaptive": False,
            "preconditioning": "frobenius",
            "adam_b1": 0.9,
            "adam_b2": 0.999,
            "adam_eps_root": 0.0,
            "adam_weight_decay": 0.0,
            "adam_learning_rate": None,
            "muon_weight_dimension_numbers": None,
            "consistent_rms": None,
        },
        _optax,
    ),
    "dion": Upstream(
        "microsoft/dion dion/muon.py Muon (0a059a4)",
        {
            "distributed_mesh": None,  # where it runs, not what it computes
            "lr": 0.01,
            "mu": 0.95,
            "betas": (0.9, 0.95),
            "weight_decay": 0.01,
            "cautious_wd": False,
            "epsilon": 1e-8,
            "nesterov": False,
            "adjust_lr": "spectral_norm",
            "flatten": False,
            "use_gram_newton_schulz": False,
            "use_triton": False,  # a kernel choice, same math
            "use_polar_express": True,
            "newton_schulz_func": None,
        },
        _dion,
    ),
    "dion2": Upstream(
        "microsoft/dion dion/dion2.py Dion2 (0a059a4)",
        {
            "distributed_mesh": None,
            "lr": 0.01,
            "fraction": 0.25,
            "ef_decay": 0.95,
            "betas": (0.9, 0.95),
            "weight_decay": 0.01,
            "epsilon": 1e-8,
            "adjust_lr": "spectral_norm",
            "flatten": False,
            "use_polar_express": True,
            "use_triton": False,
            "use_gram_newton_schulz": False,
            "selection_scope": "local",
        },
        _dion2,
    ),
    "nordion2": Upstream(
        "microsoft/dion dion/nordion2.py NorDion2 = Dion3 (0a059a4)",
        {
            "distributed_mesh": None,
            "lr": 0.01,
            "fraction": 0.25,
            "mu": 0.95,
            "muon_beta2": 0.95,
            "betas": (0.9, 0.95),
            "weight_decay": 0.01,
            "epsilon": 1e-8,
            "adjust_lr": "spectral_norm",
            "flatten": False,
            "use_triton": False,
            "use_polar_express": True,
            "use_gram_newton_schulz": False,
            "newton_schulz_func": None,
            "triton_post_ortho": False,
            "selection_scope": "local",
        },
        _nordion2,
    ),
    "emerging_optimizers": Upstream(
        "NVIDIA-NeMo/Emerging-Optimizers Muon (fd77292, muon.py / muon_utils.py)", _NEMO_DEFAULTS, _nemo
    ),
    "emerging_optimizers_adaptive": Upstream(
        "NVIDIA-NeMo/Emerging-Optimizers AdaptiveMuon (fd77292, adaptive_muon.py)",
        {
            **{k: v for k, v in _NEMO_DEFAULTS.items() if k != "use_syrk"},  # use_syrk is forced off upstream
            "lr": None,
            "momentum": None,
            "weight_decay": None,
            "moment2_method": "adamuon",
            "beta2": 0.95,
            "eps": 1e-8,
        },
        _nemo_adaptive,
    ),
    "emerging_optimizers_hyperball": Upstream(
        "NVIDIA-NeMo/Emerging-Optimizers MuonHyperball (fd77292, muon_hyperball.py, weight_update_hooks/hyperball.py)",
        {**_NEMO_DEFAULTS, "hyperball_radius": None, "hyperball_eps": 1e-15},
        _nemo_hyperball,
    ),
    "megatron": Upstream(
        "Megatron-core OptimizerConfig muon_* (optimizer_config.py 0075637, emerging_optimizers.py 000a717)",
        {
            "lr": 3e-4,
            "weight_decay": 0.01,
            "decoupled_weight_decay": True,
            "muon_momentum": 0.95,
            "muon_split_qkv": True,
            "muon_nesterov": False,
            "muon_scale_mode": "spectral",
            "muon_fp32_matmul_prec": "medium",
            "muon_coefficient_type": "quintic",
            "muon_num_ns_steps": 5,
            "muon_tp_mode": "blockwise",
            "muon_extra_scale_factor": 1.0,
        },
        _megatron,
    ),
    "adamuon": Upstream(
        "Chongjie-Si/AdaMuon gpt2/models/optimizers/adamuon.py AdaMuon (5b99dd0, code v2)",
        {
            "lr": 0.02,
            "weight_decay": 0.01,
            "momentum": 0.95,
            "nesterov": True,
            "ns_steps": 5,
            "eps": 1e-8,
            "rank": 0,
            "world_size": 1,
        },
        _adamuon,
    ),
    "deepspeed": Upstream(
        "DeepSpeed deepspeed/runtime/zero/muon/original_muon.py Muon",
        {"lr": 0.02, "weight_decay": 0.0, "momentum": 0.95, "ns_method": "gram", "num_heads": None},
        _deepspeed,
    ),
}
"""Source name -> its constructor keywords (defaults as upstream) and their mapping."""


def from_upstream(source: str, **kwargs: Any) -> MuonSpec:
    """The `MuonSpec` of upstream ``source`` constructed with ``kwargs`` (that upstream's keyword names; the rest
    take its defaults). Raises `ValueError` for an unknown source or keyword (naming the accepted ones) and for a
    setting no `MuonSpec` expresses."""
    if source not in UPSTREAMS:
        raise ValueError(f"source: unknown upstream {source!r}; known: {', '.join(UPSTREAMS)}")
    up = UPSTREAMS[source]
    unknown = sorted(set(kwargs) - set(up.defaults))
    if unknown:
        raise ValueError(
            f"from_upstream({source!r}): unknown keyword(s) {', '.join(unknown)}; {up.where} accepts "
            f"{', '.join(up.defaults)}"
        )
    return up.build({**up.defaults, **kwargs})
