"""KellerJordan/Muon's optimizers re-implemented from their source (``muon.py`` at 857d1adc, 2025-11-23) for
the switching tests: the same param-group keys, state layout and update math, one process (world size 1).

Not installable from a package index, so not imported: written here from the source and cited line by line.

* ``Muon(params, lr=0.02, weight_decay=0, momentum=0.95)`` sorts its parameters by ``size()``, largest first;
  ``SingleDeviceMuon`` keeps the given order. ``MuonWithAuxAdam(param_groups)`` sorts each ``use_muon`` group;
  ``SingleDeviceMuonWithAuxAdam`` does not. Adam groups default to lr 3e-4, betas (0.9, 0.95), eps 1e-10.
* Muon state ``momentum_buffer`` (``zeros_like(p)``): ``M.lerp_(G, 1 - beta)``; Nesterov ``G.lerp_(M, beta)``;
  4-D updates viewed ``[out, -1]``; NS5 in bf16 with ``X / (||X||_F + 1e-7)``, (3.4445, -4.7750, 2.0315);
  times ``max(1, rows / cols) ** 0.5``; ``p *= 1 - lr wd``; ``p -= lr update``.
* Adam state ``exp_avg``, ``exp_avg_sq`` (``zeros_like(p)``) and ``step`` (a Python int, incremented first);
  ``m_hat / (sqrt(v_hat) + eps)``; ``p *= 1 - lr wd``; ``p -= lr update``.
* A parameter without a gradient steps on a zero gradient (``p.grad = zeros_like(p)``).
"""

from __future__ import annotations

from typing import Any

import torch

KELLER_COMMIT = "857d1adc159e098212f828d927460782d3da59e9"
_ABC = (3.4445, -4.7750, 2.0315)


def _ns5(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    a, b, c = _ABC
    x = g.bfloat16()
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.mT if tall else x


def _muon_direction(grad: torch.Tensor, buf: torch.Tensor, beta: float) -> torch.Tensor:
    buf.lerp_(grad, 1 - beta)
    update = grad.lerp_(buf, beta)  # nesterov=True, the only setting the optimizers use
    if update.ndim == 4:
        update = update.view(len(update), -1)
    return _ns5(update) * max(1, grad.size(-2) / grad.size(-1)) ** 0.5


def _adam_direction(grad: torch.Tensor, state: dict[str, Any], betas: tuple[float, float], eps: float) -> torch.Tensor:
    state["step"] += 1
    t = state["step"]
    state["exp_avg"].lerp_(grad, 1 - betas[0])
    state["exp_avg_sq"].lerp_(grad.square(), 1 - betas[1])
    m_hat = state["exp_avg"] / (1 - betas[0] ** t)
    v_hat = state["exp_avg_sq"] / (1 - betas[1] ** t)
    return m_hat / (v_hat.sqrt() + eps)


class _Keller(torch.optim.Optimizer):
    sort_muon = False

    def __init__(self, param_groups: list[dict[str, Any]]) -> None:
        for group in param_groups:
            if group["use_muon"]:
                if self.sort_muon:
                    group["params"] = sorted(group["params"], key=lambda x: x.size(), reverse=True)
                group.setdefault("lr", 0.02)
                group.setdefault("momentum", 0.95)
                group.setdefault("weight_decay", 0)
            else:
                group.setdefault("lr", 3e-4)
                group.setdefault("betas", (0.9, 0.95))
                group.setdefault("eps", 1e-10)
                group.setdefault("weight_decay", 0)
        super().__init__(param_groups, {})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                state = self.state[p]
                if group.get("use_muon", True):
                    if not state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    update = _muon_direction(p.grad, state["momentum_buffer"], group["momentum"]).reshape(p.shape)
                else:
                    if not state:
                        state.update(exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p), step=0)
                    update = _adam_direction(p.grad, state, group["betas"], group["eps"])
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"])


class SingleDeviceMuonWithAuxAdam(_Keller):
    pass


class MuonWithAuxAdam(_Keller):
    sort_muon = True


class _PlainMuon(_Keller):
    """``Muon`` / ``SingleDeviceMuon``: one group without ``use_muon`` (keys: params, lr, momentum,
    weight_decay)."""

    def __init__(
        self, params: list[torch.nn.Parameter], lr: float = 0.02, weight_decay: float = 0.0, momentum: float = 0.95
    ) -> None:
        super().__init__([{"params": list(params), "use_muon": True}])
        group = self.param_groups[0]
        del group["use_muon"]
        group.update(lr=lr, weight_decay=weight_decay, momentum=momentum)


class SingleDeviceMuon(_PlainMuon):
    pass


class Muon(_PlainMuon):
    sort_muon = True
