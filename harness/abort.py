"""Abort rules for unstable runs (docs/harness.md "Abort rules").

1. non-finite train loss (NaN or Inf): abort at once;
2. rising loss: the train loss exceeds ``rise_factor`` x the median of the last ``window`` normal losses
   for ``patience`` consecutive steps (checked once ``window`` losses have been seen; a loss above the
   threshold is kept out of the window, so a sustained rise cannot drag its own reference up);
3. weight blow-up: some layer's weight norm exceeds ``weight_norm_factor`` x its early median (the
   median of its first ``early_points`` stats records).

`AbortMonitor` is a small state machine; its state round-trips through `state_dict` so a resumed run
takes exactly the same decisions as an uninterrupted one.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Any


class AbortMonitor:
    def __init__(
        self,
        *,
        window: int = 50,
        rise_factor: float = 1.25,
        patience: int = 20,
        weight_norm_factor: float = 3.0,
        early_points: int = 3,
        enabled: bool = True,
    ) -> None:
        for name, v in (("window", window), ("patience", patience), ("early_points", early_points)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if not rise_factor > 1.0:
            raise ValueError(f"rise_factor: must be > 1, got {rise_factor!r}")
        if not weight_norm_factor > 1.0:
            raise ValueError(f"weight_norm_factor: must be > 1, got {weight_norm_factor!r}")
        self.window = window
        self.rise_factor = rise_factor
        self.patience = patience
        self.weight_norm_factor = weight_norm_factor
        self.early_points = early_points
        self.enabled = enabled
        self.losses: deque[float] = deque(maxlen=window)
        self.above = 0
        self.early_norms: dict[str, list[float]] = {}
        self.reason: str | None = None

    @property
    def aborted(self) -> bool:
        return self.reason is not None

    def observe_loss(self, step: int, loss: float) -> str | None:
        """Feed the train loss of ``step``; returns the abort reason once a rule fires (else None)."""
        if self.reason is not None:
            return self.reason
        if not math.isfinite(loss):
            self.reason = f"non-finite loss ({loss}) at step {step}"
            return self.reason
        if not self.enabled:
            return None
        if len(self.losses) == self.window:
            median = statistics.median(self.losses)
            if loss > self.rise_factor * median:
                self.above += 1
                if self.above >= self.patience:
                    self.reason = (
                        f"loss above {self.rise_factor} x rolling median ({median:.4g}, window {self.window}) "
                        f"for {self.above} steps, at step {step} (loss {loss:.4g})"
                    )
                    return self.reason
                return None  # a loss above the threshold does not enter the reference window
            self.above = 0
        self.losses.append(loss)
        return None

    def observe_weight_norms(self, step: int, norms: dict[str, float]) -> str | None:
        """Feed per-layer weight norms from one stats record; returns the abort reason if a rule fires."""
        if self.reason is not None:
            return self.reason
        for name, w in norms.items():
            if not math.isfinite(w):
                self.reason = f"non-finite weight norm of {name} at step {step}"
                return self.reason
        if not self.enabled:
            return None
        for name, w in norms.items():
            early = self.early_norms.setdefault(name, [])
            if len(early) < self.early_points:
                early.append(w)
                continue
            ref = statistics.median(early)
            if ref > 0 and w > self.weight_norm_factor * ref:
                self.reason = (
                    f"weight norm of {name} = {w:.4g} > {self.weight_norm_factor} x its early median "
                    f"{ref:.4g}, at step {step}"
                )
                return self.reason
        return None

    def state_dict(self) -> dict[str, Any]:
        return {
            "losses": list(self.losses),
            "above": self.above,
            "early_norms": {k: list(v) for k, v in self.early_norms.items()},
            "reason": self.reason,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses = deque((float(x) for x in state["losses"]), maxlen=self.window)
        self.above = int(state["above"])
        self.early_norms = {k: [float(x) for x in v] for k, v in state["early_norms"].items()}
        self.reason = state["reason"]
