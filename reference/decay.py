"""Weight decay (docs/variants.md "Weight decay", decisions A8 and "Decay placement"; [S §4.3, §10]).

All sources are algebraic variants of ``W <- W - eta_u O - eta_d lambda mask (.) W`` on the pre-update ``W``:

* ``eta_d`` (`decay_lr`): ``"base"`` = ``eta`` (Keller, Moonlight Eq. 3-4, torch, optax, dion);
  ``"scaled"`` = ``eta_u`` (nanochat; the CWD paper with a per-parameter lr);
  ``"lr2"`` = ``eta * eta_u`` (modded-nanogpt ``_cautious_wd_and_update_inplace``: decay proportional to lr^2);
* ``mask`` (`cautious_mask`): all ones (``"off"``), ``O (.) W >= 0`` (``"ge"``, CWD arXiv 2510.12402 Alg. 1,
  modded NorMuon, dion, nanochat) or ``> 0`` (``"gt"``, modded Adam);
* coupled (L2) decay, `coupled_decay`, adds ``lambda W`` to the gradient before momentum (no source uses it;
  ``decay_placement="update"`` or ``"both"``).

``lambda`` may be negative: the weights then grow, and the cautious mask selects the coordinates grown.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from muonlab.contract.decay import decay_lr
from muonlab.contract.spec import Cautious, MuonSpec, lookup

from .array import Array

__all__ = ["CAUTIOUS_TESTS", "cautious_mask", "coupled_decay", "decay_lr", "decoupled_decay"]

CAUTIOUS_TESTS: dict[Cautious, Callable[[Array], npt.NDArray[np.bool_]] | None] = {
    "off": None,  # every coordinate decays
    "ge": lambda prod: prod >= 0.0,  # CWD arXiv 2510.12402 Alg. 1
    "gt": lambda prod: prod > 0.0,  # modded-nanogpt: an exact zero is not decayed
}
"""``spec.cautious`` -> the test on ``O (.) W`` that selects the decayed coordinates (the fast side's table is
`muonlab.fast.decay.CAUTIOUS_TESTS`)."""


def cautious_mask(update: Array, weight: Array, mode: Cautious) -> Array:
    """``1[O (.) W >= 0]`` (``"ge"``), ``1[O (.) W > 0]`` (``"gt"``) or ones (``"off"``), as float64.

    ``update`` is the (positively scaled) update direction subtracted from ``W``; the mask is invariant to
    its positive rescaling.
    """
    test = lookup(CAUTIOUS_TESTS, mode, "cautious")
    if test is None:
        return np.ones(np.shape(weight), dtype=np.float64)
    return test(np.asarray(update, dtype=np.float64) * np.asarray(weight, dtype=np.float64)).astype(np.float64)


def decoupled_decay(weight: Array, update: Array, lr: float, lr_update: float, spec: MuonSpec) -> Array:
    """``W - eta_d lambda mask (.) W`` (stage 6 of docs/variants.md, "The step, stage by stage"), a new array."""
    w = np.asarray(weight, dtype=np.float64)
    if spec.weight_decay == 0.0:
        return w.copy()
    mask = cautious_mask(update, w, spec.cautious)
    out: Array = w - decay_lr(lr, lr_update, spec) * spec.weight_decay * (mask * w)
    return out


def coupled_decay(grad: Array, weight: Array, spec: MuonSpec) -> Array:
    """``G + lambda W`` (stage 1, coupled L2 decay), a new array."""
    out: Array = np.asarray(grad, dtype=np.float64) + spec.weight_decay * np.asarray(weight, dtype=np.float64)
    return out
