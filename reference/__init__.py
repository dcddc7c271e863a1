"""muonlab.reference: every Muon variant as pure NumPy float64 functions (the specification, as code).

Public API (docs/variants.md): `MuonSpec` and the presets; `orthogonalize`; the step functions
`muon_step`, `adamw_step`, `step` with their immutable states `MuonState`, `AdamState`; and the building
blocks of one step (momentum, NorMuon, shape scale, weight decay, hypersphere, Polar Express generator).

What both implementations share (spec, presets, coefficient sets, shape rules) is `muonlab.contract`
(folder ``contract/``); its names are re-exported here.

Docstrings cite docs/variants.md by section title and the project's source survey
(``shared/specs/variants.md``) as ``[S §n]``, as docs/variants.md does.
"""

from muonlab.contract import (
    COEFFICIENT_SETS,
    PRESETS,
    MuonSpec,
    RowSplit,
    adam_hyperparameters,
    field_names,
    from_upstream,
    get_preset,
    matrix_view_shape,
    normuon_reduce_axis,
    normuon_state_shape,
    resolve_coefficients,
    resolve_spec,
    scale_dims,
    schedule,
    second_moment_shape,
    shape_scale,
    update_scale,
)

from .adamw import adam_direction, adam_moments
from .decay import cautious_mask, coupled_decay, decay_lr, decoupled_decay
from .layout import from_row_blocks, row_blocks
from .momentum import apply_momentum, ema_momentum, optax_momentum, sum_momentum
from .normuon import normuon_normalize
from .orthogonalize import (
    as_matrices,
    gram_newton_schulz,
    magnitude,
    newton_schulz,
    normalize_frobenius,
    orthogonalize,
    polar_factor,
    scalar_map,
)
from .polar_express import optimal_composition, optimal_quintic
from .qk_clip import GQA_RULES, qk_clip, qk_clip_factors
from .sphere import geodesic_vectors, renormalize_vectors, sphere_step
from .state import AdamState, MuonState, init_adam_state, init_muon_state, init_state
from .step import adamw_step, muon_step, muon_update, step
from .transforms import EQUILIBRATIONS, POST_ORTHS, equilibrate, post_orth

__all__ = [
    "COEFFICIENT_SETS",
    "EQUILIBRATIONS",
    "GQA_RULES",
    "POST_ORTHS",
    "PRESETS",
    "AdamState",
    "MuonSpec",
    "MuonState",
    "RowSplit",
    "adam_direction",
    "adam_hyperparameters",
    "adam_moments",
    "adamw_step",
    "apply_momentum",
    "as_matrices",
    "cautious_mask",
    "coupled_decay",
    "decay_lr",
    "decoupled_decay",
    "ema_momentum",
    "equilibrate",
    "field_names",
    "from_row_blocks",
    "from_upstream",
    "geodesic_vectors",
    "get_preset",
    "gram_newton_schulz",
    "init_adam_state",
    "init_muon_state",
    "init_state",
    "magnitude",
    "matrix_view_shape",
    "muon_step",
    "muon_update",
    "newton_schulz",
    "normalize_frobenius",
    "normuon_normalize",
    "normuon_reduce_axis",
    "normuon_state_shape",
    "optax_momentum",
    "optimal_composition",
    "optimal_quintic",
    "orthogonalize",
    "polar_factor",
    "post_orth",
    "qk_clip",
    "qk_clip_factors",
    "renormalize_vectors",
    "resolve_coefficients",
    "resolve_spec",
    "row_blocks",
    "scalar_map",
    "scale_dims",
    "schedule",
    "second_moment_shape",
    "shape_scale",
    "sphere_step",
    "step",
    "sum_momentum",
    "update_scale",
]
