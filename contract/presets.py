"""Named presets: each reproduces one source's Muon exactly (up to the documented decisions in docs/variants.md).

`get_preset(name)` returns a `MuonSpec`; `PRESETS` is the registry the contract tests run over.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from .spec import MuonSpec


def keller() -> MuonSpec:
    """KellerJordan/Muon ``muon.py`` (``muon_update``, ``SingleDeviceMuonWithAuxAdam``).

    ``M = lerp(M, G, 1-beta)``, ``N = lerp(G, M, beta)``; ``O = NS5(N)`` with ``(3.4445, -4.7750, 2.0315)``,
    ``X / (||X||_F + 1e-7)`` in bf16; ``O *= sqrt(max(1, m/n))`` with ``(m, n)`` the gradient's last two dims;
    ``W <- W (1 - eta lambda) - eta O``. Aux Adam: lr 3e-4, betas (0.9, 0.95), eps 1e-10, bias-corrected.
    """
    return MuonSpec(
        name="keller",
        lr=0.02,
        momentum=0.95,
        momentum_form="ema",
        nesterov=True,
        ns_coefficients="keller",
        ns_steps=5,
        eps=1e-7,
        eps_mode="add",
        nd_mode="flatten",
        scale_shape="last2",
        shape_scale="keller",
        weight_decay=0.0,
        adam_lr=3e-4,
        adam_betas=(0.9, 0.95),
        adam_eps=1e-10,
        adam_weight_decay=0.0,
        adam_eps_mode="corrected",
    )


def moonlight() -> MuonSpec:
    """MoonshotAI/Moonlight ``examples/toy_train.py`` ``Muon``; arXiv 2502.16982 Eq. 3-4.

    Sum momentum ``M = mu M + G``, Nesterov ``N = G + mu M``; NS5 (Keller coefficients, ``+1e-7``);
    ``W <- W - eta (0.2 sqrt(max(m, n)) O + lambda W)`` (decay with the unadjusted ``eta``).
    AdamW shares lr and weight decay; betas (0.9, 0.95), eps 1e-8 not bias-corrected.
    """
    return MuonSpec(
        name="moonlight",
        lr=1e-3,
        momentum=0.95,
        momentum_form="sum",
        nesterov=True,
        ns_coefficients="keller",
        ns_steps=5,
        eps=1e-7,
        eps_mode="add",
        shape_scale="moonlight",
        rms_scale=0.2,
        weight_decay=0.1,
        decay_placement="param",
        decay_lr="base",
        adam_lr=None,
        adam_betas=(0.9, 0.95),
        adam_eps=1e-8,
        adam_weight_decay=None,
        adam_eps_mode="uncorrected",
    )


def modded_normuon() -> MuonSpec:
    """KellerJordan/modded-nanogpt ``train_gpt.py`` ``NorMuonAndAdam`` (2026-08, ``_normuon_update``).

    Lerp-Nesterov momentum; Polar Express 5 steps, ``X / (1.02 ||X||_F + 1e-6)``; NorMuon per element of the
    longer dim, ``S = lerp(S, mean(V^2), 1-beta2)``, ``V_hat = V / sqrt(max(S, 1e-10))`` rescaled to keep
    ``||V||_F``; ``eta_eff = eta sqrt(max(1, m/n))``; cautious decay (``>=``) with ``lambda eta eta_eff``
    (lr^2): ``W <- W - lambda eta eta_eff mask (.) W - eta_eff V_hat``. Defaults lr 0.023, beta2 0.9, lambda 1.2.
    """
    return MuonSpec(
        name="modded_normuon",
        lr=0.023,
        momentum=0.95,
        momentum_form="ema",
        nesterov=True,
        ns_coefficients="polar_express",
        ns_steps=5,
        norm_scale=1.02,
        eps=1e-6,
        eps_mode="add",
        nd_mode="batch",
        shape_scale="keller",
        normuon=True,
        beta2=0.9,
        normuon_axis="longer",
        normuon_rescale="frobenius",
        normuon_eps=1e-10,
        normuon_eps_mode="clamp",
        weight_decay=1.2,
        decay_placement="param",
        decay_lr="lr2",
        cautious="ge",
        adam_lr=0.008,
        adam_betas=(0.9, 0.95),
        adam_eps=1e-10,
        adam_weight_decay=0.0,
        adam_eps_mode="uncorrected",
    )


def normuon_paper() -> MuonSpec:
    """NorMuon, arXiv 2510.05491 (Algorithm 1).

    ``M = beta1 M + (1-beta1) G`` (no Nesterov); ``O = NS5(M)``; ``v = beta2 v + (1-beta2) mean_cols(O^2)``
    per row; ``O_hat = O / (sqrt(v) + eps)``; ``eta_hat = 0.2 eta sqrt(mn)/||O_hat||_F``;
    ``W <- W - eta lambda W - eta_hat O_hat``.
    """
    return MuonSpec(
        name="normuon_paper",
        lr=0.02,
        momentum=0.95,
        momentum_form="ema",
        nesterov=False,
        ns_coefficients="keller",
        ns_steps=5,
        eps=1e-7,
        shape_scale="none",
        normuon=True,
        beta2=0.95,
        normuon_axis="row",
        normuon_rescale="rms",
        rms_scale=0.2,
        normuon_eps=1e-8,
        normuon_eps_mode="add",
        weight_decay=0.0,
        decay_lr="base",
    )


def normuon_official() -> MuonSpec:
    """zichongli5/NorMuon ``normuon.py`` ``normuon_update`` (statistics in fp32, as before commit 939267f).

    Lerp-Nesterov; NS5 Keller; per-row ``S``; ``O / (sqrt(S) + 1e-10)`` rescaled to keep ``||O||_F``, then
    ``sqrt(max(1, m/n))``; ``W <- W (1 - eta lambda) - eta O``.
    """
    return MuonSpec(
        name="normuon_official",
        lr=0.02,
        momentum=0.95,
        nesterov=True,
        ns_coefficients="keller",
        eps=1e-7,
        shape_scale="keller",
        normuon=True,
        beta2=0.95,
        normuon_axis="row",
        normuon_rescale="frobenius",
        normuon_eps=1e-10,
        normuon_eps_mode="add",
    )


def torch() -> MuonSpec:
    """``torch.optim.Muon`` (torch 2.13, ``_single_tensor_muon``), ``adjust_lr_fn=None`` / ``"original"``.

    Lerp-Nesterov; NS5 Keller in bf16 with ``X / max(||X||_F, 1e-7)`` (clamp); ``eta_u = eta sqrt(max(1, A/B))``;
    ``W <- W (1 - eta lambda) - eta_u O``. Defaults lr 1e-3, lambda 0.1.
    """
    return MuonSpec(
        name="torch",
        lr=1e-3,
        momentum=0.95,
        momentum_form="ema",
        nesterov=True,
        ns_coefficients="keller",
        ns_steps=5,
        eps=1e-7,
        eps_mode="clamp",
        shape_scale="keller",
        weight_decay=0.1,
        decay_lr="base",
    )


def torch_match_rms_adamw() -> MuonSpec:
    """``torch.optim.Muon(adjust_lr_fn="match_rms_adamw")``: as `torch` with ``eta_u = 0.2 eta sqrt(max(A, B))``."""
    return torch().replace(name="torch_match_rms_adamw", shape_scale="moonlight", rms_scale=0.2)


def optax() -> MuonSpec:
    """``optax.contrib.muon`` (``scale_by_muon``, ``scale_by_shape``, ``add_decayed_weights``).

    EMA momentum with bias correction (``momentum_form="optax"``);
    NS5 Keller in the input dtype (fp32), ``X / (||X||_F + 1e-8)``; ``sqrt(max(1, fan_out/fan_in))``
    (= ``sqrt(max(1, m/n))`` in PyTorch ``[out, in]`` layout); ``W <- W - eta (s O + lambda W)``.
    Fallback: AdamW b1 0.9, b2 0.999, eps 1e-8 (optax's default NAdamW is not reproduced; see docs).
    """
    return MuonSpec(
        name="optax",
        lr=0.02,
        momentum=0.95,
        momentum_form="optax",
        nesterov=True,
        ns_coefficients="keller",
        ns_steps=5,
        eps=1e-8,
        eps_mode="add",
        compute_dtype="float32",
        nd_mode="batch",
        shape_scale="keller",
        weight_decay=0.0,
        decay_lr="base",
        adam_lr=None,
        adam_betas=(0.9, 0.999),
        adam_eps=1e-8,
        adam_weight_decay=0.0,
        adam_eps_mode="corrected",
    )


def dion() -> MuonSpec:
    """microsoft/dion ``dion/muon.py`` ``Muon`` (defaults at 0a059a4).

    Sum momentum ``M = mu M + G``, no Nesterov; Polar Express 5 steps, ``X / (1.02 ||X||_F + 1e-8)``;
    ``eta_adj = eta sqrt(fan_out/fan_in)`` (no max); ``W <- W (1 - eta lambda) - eta_adj O``; lambda 0.01.
    """
    return MuonSpec(
        name="dion",
        lr=0.01,
        momentum=0.95,
        momentum_form="sum",
        nesterov=False,
        ns_coefficients="polar_express",
        ns_steps=5,
        norm_scale=1.02,
        eps=1e-8,
        eps_mode="add",
        nd_mode="batch",
        shape_scale="dion",
        weight_decay=0.01,
        decay_lr="base",
        cautious="off",
        adam_lr=None,
        adam_betas=(0.9, 0.95),
        adam_eps=1e-8,
        adam_weight_decay=None,
        adam_eps_mode="corrected",
    )


def nanochat() -> MuonSpec:
    """karpathy/nanochat ``nanochat/optim.py`` ``muon_step_fused`` at 92d63d4 (docs/variants.md, "nanochat").

    Lerp-Nesterov; MuonEq-R (rows to the mean row norm, ``||row||`` clamped at 1e-6; always on); Polar Express 5
    steps with ``X / (1.01 ||X||_F + 1e-6)``; O cast back to the parameter dtype; "Muon+", the Frobenius snap to
    ``sqrt(min(m, n))``; modded-style NorMuon (longer dim, beta2 0.9, clamp 1e-10); cautious decay (``>=``) with
    ``eta_adj lambda``, ``eta_adj = eta sqrt(max(1, m/n))``. So ``||eta_adj V_hat||_F = lr sqrt(m)`` on every
    step. Defaults lr 0.02, weight decay 0 (base_train passes 0.28, scaled and cosine-decayed: a schedule); AdamW
    as nanochat's lm_head group (betas (0.8, 0.96), eps 1e-10, wd 0.01).
    """
    return MuonSpec(
        name="nanochat",
        lr=0.02,
        momentum=0.95,
        momentum_form="ema",
        nesterov=True,
        equilibrate="row_mean",
        equilibrate_eps=1e-6,
        ns_coefficients="polar_express",
        ns_steps=5,
        norm_scale=1.01,
        eps=1e-6,
        eps_mode="add",
        post_orth="frobenius_snap",
        shape_scale="keller",
        normuon=True,
        beta2=0.9,
        normuon_axis="longer",
        normuon_rescale="frobenius",
        normuon_eps=1e-10,
        normuon_eps_mode="clamp",
        weight_decay=0.0,
        decay_placement="param",
        decay_lr="scaled",
        cautious="ge",
        adam_lr=0.004,
        adam_betas=(0.8, 0.96),
        adam_eps=1e-10,
        adam_weight_decay=0.01,
        adam_eps_mode="corrected",
    )


def muoneq() -> MuonSpec:
    """MuonEq (arXiv 2603.28254; MaeChd/muon-eq 99b6c8b ``llm-baselines/src/optim/muoneq.py``), its defaults.

    Sum momentum with Nesterov (``N = G + mu B``); ``normalize_mode="row"``: ``N <- diag((||N_i||^2 + 1e-8)^-1/2) N``;
    NS5 Keller in bf16, ``/(||X||_F + 1e-7)``; ``W <- W (1 - eta lambda) - eta 0.2 sqrt(max(m, n)) O``; lr 1e-3,
    lambda 0.1; AdamW betas (0.95, 0.95), eps 1e-8. Not expressed: ``clip``, ``phase`` and ``zeropower_mode="spc"``.
    """
    return MuonSpec(
        name="muoneq",
        lr=1e-3,
        momentum=0.95,
        momentum_form="sum",
        nesterov=True,
        equilibrate="row",
        equilibrate_exponent=-0.5,
        equilibrate_eps=1e-8,
        ns_coefficients="keller",
        ns_steps=5,
        eps=1e-7,
        eps_mode="add",
        shape_scale="moonlight",
        rms_scale=0.2,
        weight_decay=0.1,
        decay_placement="param",
        decay_lr="base",
        adam_lr=None,
        adam_betas=(0.95, 0.95),
        adam_eps=1e-8,
        adam_weight_decay=None,
        adam_eps_mode="corrected",
    )


def muon_plus() -> MuonSpec:
    """Muon+ (arXiv 2602.21545; K1seki221/MuonPlus 8a9ace1 ``utils/optim/muon_plus.py``) as its shipped configs run
    it: sum momentum with Nesterov; NS5 Keller; ``norm_mode="col_row"`` (columns, then rows, to unit norm, 1e-7 in
    the root); ``rms_scaling``: ``eta sqrt(fan_out / fan_in)`` (no max); ``W <- W (1 - eta lambda) - eta_adj u``;
    lr 0.01, lambda 0.1. Not expressed: ``nuclear_scaling``."""
    return MuonSpec(
        name="muon_plus",
        lr=0.01,
        momentum=0.95,
        momentum_form="sum",
        nesterov=True,
        ns_coefficients="keller",
        ns_steps=5,
        eps=1e-7,
        eps_mode="add",
        post_orth="col_row",
        shape_scale="dion",
        weight_decay=0.1,
        decay_placement="param",
        decay_lr="base",
    )


def muonh() -> MuonSpec:
    """MuonH, modded-nanogpt track 3 record #5 (``train_gpt_simple_muonh.py`` at f411b3d).

    Lerp-Nesterov; ``(2, -1.5, 0.5)`` x 12 in bf16, ``/(||X||_F + 1e-7)``; ``scale_invariant_update_``: with
    ``R = ||W||_F`` (current), ``W' = W - eta R O / max(||O||_F, 1e-10)``, ``W <- R W' / max(||W'||_F, 1e-10)``
    (sphere ``"hyperball"``). The record's ``sqrt(max(1, m/n))`` on ``O`` cancels in that normalization, so the
    shape rule is ``"none"``. No weight decay; lr 0.014 (the record: 0.018). AdamW: betas (0.8, 0.95), eps
    1e-10, no decay, lr 0.01 (the record's 1-D group; its embedding and head groups use 0.3 and 1/320).
    """
    return MuonSpec(
        name="muonh",
        lr=0.014,
        momentum=0.95,
        momentum_form="ema",
        nesterov=True,
        ns_coefficients="accurate",
        ns_steps=12,
        eps=1e-7,
        eps_mode="add",
        shape_scale="none",
        sphere="hyperball",
        sphere_axis="matrix",
        weight_decay=0.0,
        adam_lr=0.01,
        adam_betas=(0.8, 0.95),
        adam_eps=1e-10,
        adam_weight_decay=0.0,
        adam_eps_mode="corrected",
    )


def normuonh() -> MuonSpec:
    """NorMuonH, modded-nanogpt track 3 record #8 (PR #273): MuonH's step after NorMuon per element of the longer
    dim (``S`` fp32, beta2 0.95, ``rsqrt(max(S, 1e-10))``) without NorMuon's Frobenius rescale; lr 0.018."""
    return muonh().replace(
        name="normuonh",
        lr=0.018,
        normuon=True,
        beta2=0.95,
        normuon_axis="longer",
        normuon_eps=1e-10,
        normuon_eps_mode="clamp",
        normuon_rescale="none",
    )


def ngpt() -> MuonSpec:
    """Keller Muon on nGPT's hypersphere (arXiv 2410.01131; NVIDIA/ngpt ``train.py`` ``normalize_matrices``).

    Each row of ``[out, in]`` is a unit vector; after the Euclidean Muon step each row is renormalized
    (``justnorm``). No weight decay. Use ``sphere="geodesic"`` with an ``angle_mode`` for the geodesic update
    (``angle_mode="renorm"`` reproduces this preset exactly).
    """
    return keller().replace(name="ngpt", sphere="renormalize", sphere_axis="row", weight_decay=0.0)


def adamuon() -> MuonSpec:
    """AdaMuon code v2 (Chongjie-Si/AdaMuon ``gpt2/models/optimizers/adamuon.py`` at 5b99dd0, what the repo ships;
    docs/variants.md, "AdaMuon").

    ``M = lerp(M, G, 1-beta)``, ``N = lerp(G, M, beta)`` (Nesterov); ``O = NS5(sign(N))`` (Keller's quintic in
    bf16, ``/(||X||_F + 1e-7)``); ``V <- beta V + (1-beta) O (.) O`` per element with the momentum's ``beta``, no
    bias correction; ``O_hat = O / (sqrt(V) + 1e-8)``; ``U = 0.2 sqrt(mn) O_hat / (||O_hat||_F + 1e-8)``;
    ``W <- W (1 - eta lambda) - eta U``. lr 0.02, lambda 0.01. Deviations (declared): ``V`` is kept in the state
    dtype (the code keeps it in bf16), and for ``ndim >= 3`` the RMS target reads the matrix view's ``(m, n)``
    (the code takes ``min``/``max`` over all dims). The AdamW half is the caller's in the source (MuonSpec's
    defaults here).
    """
    return MuonSpec(
        name="adamuon",
        lr=0.02,
        momentum=0.95,
        momentum_form="ema",
        nesterov=True,
        equilibrate="sign",
        ns_coefficients="keller",
        ns_steps=5,
        eps=1e-7,
        eps_mode="add",
        shape_scale="none",
        normuon=True,
        beta2=0.95,  # the momentum's beta (code v2 and the algorithm box)
        normuon_axis="element",
        normuon_rescale="rms_eps",
        rms_scale=0.2,
        normuon_eps=1e-8,
        normuon_eps_mode="add",
        weight_decay=0.01,
        decay_placement="param",
        decay_lr="base",
    )


def adamuon_v1() -> MuonSpec:
    """AdaMuon code v1 (Chongjie-Si/AdaMuon ``adamuon.py`` at 3b84e03): code v2 without the sign, with a separate
    ``beta2 = 0.999`` and the bias correction ``V_hat = V / (1 - beta2^t)``. Its RMS alignment, split into
    ``sqrt(min(m, n)) / (||O_hat||_F + eps)`` and ``0.2 sqrt(max(m, n))`` in the update, is the same product."""
    return adamuon().replace(name="adamuon_v1", equilibrate="none", beta2=0.999, normuon_bias_correction=True)


def adamuon_paper() -> MuonSpec:
    """AdaMuon's algorithm box (arXiv 2507.11005 v2/v3, ``src/algorithm.png`` at 5b99dd0): sum momentum
    ``M = beta M + G`` without Nesterov, ``O = NS(sign(M))``, ``V`` with the momentum's ``beta``, no bias
    correction, ``O_hat = O / (sqrt(V) + eps)``, ``gamma = 0.2 sqrt(mn) / ||O_hat||_F`` (no eps in the box),
    ``W <- W - eta (gamma O_hat + lambda W)``. The box gives no defaults: code v2's."""
    return adamuon().replace(name="adamuon_paper", momentum_form="sum", nesterov=False, normuon_rescale="rms")


def dion2() -> MuonSpec:
    """Dion2 (microsoft/dion ``dion/dion2.py`` at 0a059a4; docs/variants.md "Dion2"), its defaults: dion's Muon
    (Polar Express x1.02, ``+1e-8``, ``sqrt(m/n)``, lr 0.01, lambda 0.01) on the quarter of the slices along the
    shorter dim with the largest L1 norm of ``M <- M + G``, error feedback 0.95 on them."""
    return dion().replace(name="dion2", nesterov=False, momentum=0.95, dion2_fraction=0.25)


def nordion2() -> MuonSpec:
    """NorDion2 (microsoft/dion ``dion/nordion2.py`` at 0a059a4; ``Dion3`` is an alias): Dion2 selecting rows
    whatever the shape, then NorMuon on the selected rows alone (``v = mean(O^2, -1)``, ``V <- lerp(V, v, 1 - 0.95)``
    for those rows, ``O / (sqrt(V) + 1e-8)``, Frobenius norm kept with ``max(., 1e-8)``). Its defaults."""
    return dion2().replace(
        name="nordion2",
        normuon=True,
        beta2=0.95,
        normuon_axis="row",
        normuon_eps=1e-8,
        normuon_eps_mode="add",
        normuon_rescale="frobenius_clamp",
    )


PRESETS: Final[dict[str, Callable[[], MuonSpec]]] = {
    "keller": keller,
    "moonlight": moonlight,
    "modded_normuon": modded_normuon,
    "normuon_paper": normuon_paper,
    "normuon_official": normuon_official,
    "torch": torch,
    "torch_match_rms_adamw": torch_match_rms_adamw,
    "optax": optax,
    "dion": dion,
    "ngpt": ngpt,
    "nanochat": nanochat,
    "muoneq": muoneq,
    "muon_plus": muon_plus,
    "muonh": muonh,
    "normuonh": normuonh,
    "adamuon": adamuon,
    "adamuon_v1": adamuon_v1,
    "adamuon_paper": adamuon_paper,
    "dion2": dion2,
    "nordion2": nordion2,
}


def get_preset(name: str) -> MuonSpec:
    """The `MuonSpec` of preset ``name``; an unknown name raises `ValueError` listing the known ones."""
    try:
        factory = PRESETS[name]
    except KeyError:
        raise ValueError(f"preset: unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None
    return factory()


def resolve_spec(spec: str | MuonSpec, **overrides: object) -> MuonSpec:
    """A preset name or a spec, with field ``overrides`` applied (validated)."""
    base = get_preset(spec) if isinstance(spec, str) else spec
    if not isinstance(base, MuonSpec):
        raise ValueError(f"preset: expected a preset name or a MuonSpec, got {type(spec).__name__}")
    return base.replace(**overrides) if overrides else base
