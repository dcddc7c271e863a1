"""muonlab.reference: every Muon variant as pure NumPy float64 functions (the specification, as code)."""

from .coefficients import COEFFICIENT_SETS, resolve_coefficients, schedule
from .presets import PRESETS, get_preset, resolve_spec
from .spec import MuonSpec, field_names

__all__ = [
    "COEFFICIENT_SETS",
    "PRESETS",
    "MuonSpec",
    "field_names",
    "get_preset",
    "resolve_coefficients",
    "resolve_spec",
    "schedule",
]
