"""muonlab.contract (folder ``contract/``): what the reference and the fast implementation share.

`MuonSpec` (every knob of a variant, validated), the named presets, `from_upstream` (the spec of a named upstream
optimizer from its own keywords), the Newton-Schulz / Polar Express coefficient sets, and the pure shape rules
(matrix view, NorMuon state shape, shape scale of the update). Pure Python, no array library: `muonlab.fast`
imports this package and none of the float64 math.
"""

from .adam import adam_hyperparameters
from .coefficients import COEFFICIENT_SETS, CoefficientSet, Triple, resolve_coefficients, schedule
from .decay import DECAY_LRS, DECAY_PLACEMENTS, decay_lr, decay_stages
from .presets import PRESETS, get_preset, resolve_spec
from .scaling import SHAPE_SCALES, scale_dims, shape_scale, update_scale
from .shapes import (
    check_ndim,
    dion2_select_dim,
    matrix_view_shape,
    normuon_reduce_axis,
    normuon_state_shape,
    second_moment_shape,
)
from .spec import GEODESIC_TAU_MIN, MuonSpec, choice_fields, choices, field_names
from .split import RowSplit, block_shapes, check_row_split
from .upstream import UPSTREAMS, from_upstream

__all__ = [
    "COEFFICIENT_SETS",
    "DECAY_LRS",
    "DECAY_PLACEMENTS",
    "GEODESIC_TAU_MIN",
    "PRESETS",
    "SHAPE_SCALES",
    "UPSTREAMS",
    "CoefficientSet",
    "MuonSpec",
    "RowSplit",
    "Triple",
    "adam_hyperparameters",
    "block_shapes",
    "check_ndim",
    "check_row_split",
    "choice_fields",
    "choices",
    "decay_lr",
    "decay_stages",
    "dion2_select_dim",
    "field_names",
    "from_upstream",
    "get_preset",
    "matrix_view_shape",
    "normuon_reduce_axis",
    "normuon_state_shape",
    "resolve_coefficients",
    "resolve_spec",
    "scale_dims",
    "schedule",
    "second_moment_shape",
    "shape_scale",
    "update_scale",
]
