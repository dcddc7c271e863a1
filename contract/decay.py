"""Weight-decay rules both sides share (docs/variants.md "Weight decay"): which stages decay (`decay_stages`, table
`DECAY_PLACEMENTS`) and the decay's learning rate ``eta_d`` (`decay_lr`, table `DECAY_LRS`). Plain arithmetic on
whatever ``lr`` is (a float, a NumPy or a torch scalar), so the reference and `muonlab.fast` run the same rule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeVar

from .spec import DecayLr, DecayPlacement, MuonSpec, lookup

__all__ = ["DECAY_LRS", "DECAY_PLACEMENTS", "decay_lr", "decay_stages"]

T = TypeVar("T")

DECAY_PLACEMENTS: Final[dict[DecayPlacement, tuple[bool, bool]]] = {
    "param": (False, True),  # decoupled only: W <- W - eta_d lambda mask (.) W (Moonlight Eq. 3)
    "update": (True, False),  # coupled only: G <- G + lambda W before momentum and orthogonalization
    "both": (True, True),
}
"""``decay_placement`` -> (stage 1 coupled decay runs, stage 6 decoupled decay runs)."""

DECAY_LRS: Final[dict[DecayLr, Callable[[Any, Any], Any]]] = {
    "base": lambda lr, lr_update: lr,
    "scaled": lambda lr, lr_update: lr_update,  # eta_u: the shape-scaled lr
    "lr2": lambda lr, lr_update: lr * lr_update,  # modded-nanogpt: decay proportional to lr^2
    "base_squared": lambda lr, lr_update: lr * lr,  # NeMo weight_decay_method="palm"
    "unit": lambda lr, lr_update: lr * 0.0 + 1.0,  # NeMo "independent": lambda alone (kept lr's type)
}
"""``decay_lr`` -> ``eta_d`` from ``(eta, eta_u)``."""


def decay_stages(spec: MuonSpec, weight_decay: float | None = None) -> tuple[bool, bool]:
    """Whether the coupled (stage 1) and the decoupled (stage 6) decay run for ``spec`` with ``weight_decay``
    (default the spec's; a group's live value otherwise): neither when it is 0."""
    lam = spec.weight_decay if weight_decay is None else weight_decay
    coupled, decoupled = lookup(DECAY_PLACEMENTS, spec.decay_placement, "decay_placement")
    return coupled and lam != 0.0, decoupled and lam != 0.0


def decay_lr(lr: T, lr_update: T, spec: MuonSpec) -> T:
    """``eta_d`` from ``lr`` and ``lr_update`` = ``eta_u`` by `DECAY_LRS`."""
    out: T = lookup(DECAY_LRS, spec.decay_lr, "decay_lr")(lr, lr_update)
    return out
