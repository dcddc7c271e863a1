"""The array type of the float64 reference."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["Array"]

Array = npt.NDArray[np.float64]
"""A float64 NumPy array: every value the reference computes."""
