"""Shape scaling ``eta_u = eta * shape_scale(m, n)`` (docs/variants.md A3).

The rules are pure Python on shapes, shared with the reference: `shape_scale`, `scale_dims`, `update_scale`
are `muonlab.reference.scaling`'s (``"keller"`` ``sqrt(max(1, m/n))``, ``"moonlight"``
``rms_scale sqrt(max(m, n))``, ``"dion"`` ``sqrt(m/n)``, ``"none"`` 1, on PyTorch ``[out, in]`` layout).
"""

from __future__ import annotations

from muonlab.reference.scaling import scale_dims, shape_scale, update_scale

__all__ = ["scale_dims", "shape_scale", "update_scale"]
