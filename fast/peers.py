"""Another Muon's ``state_dict`` as `muonlab.fast.Muon`'s: switching implementations keeps the run's state.

`Muon.load_state_dict` calls `from_peer` on every state dict; it returns None for muonlab's own format and
otherwise builds muonlab's from the peer's (docs/fast.md, "Switching from torch.optim.Muon / Keller's Muon"):

* groups map by position and parameters by position within a group, as torch's own loader maps them; Keller's
  ``Muon`` and ``MuonWithAuxAdam`` keep a Muon group's parameters sorted by size, largest first, which is
  undone (the order that fits the saved buffers' shapes; a stable sort, so it is unique);
* Muon state: the peer's EMA momentum buffer, converted to the spec's `momentum_form` (table `_FROM_EMA`);
  NorMuon's ``S`` starts at zero (no peer keeps one); Adam state: ``exp_avg`` / ``exp_avg_sq`` / ``step``;
  state dtypes follow `muonlab.fast.state.state_dtype`;
* the live hyperparameters (``lr``, ``momentum``, ``weight_decay``; Adam ``betas``, ``eps``; a scheduler's
  ``initial_lr``) come from the peer, as torch's loader restores them; the spec stays the optimizer's own.

What cannot be mapped raises `ValueError` naming it, before anything is loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from muonlab.contract import MuonSpec

from .state import init_adam_state, init_muon_state, state_dtype

__all__ = ["PEERS", "from_peer"]

_TORCH_KEYS = frozenset({"lr", "weight_decay", "momentum", "nesterov", "ns_coefficients", "eps", "ns_steps"})
_KELLER_MUON_KEYS = frozenset({"params", "lr", "momentum", "weight_decay"})
_KELLER_ADAM_KEYS = frozenset({"params", "lr", "betas", "eps", "weight_decay", "use_muon"})

# The peers' momentum is the EMA ``M = beta M + (1 - beta) G`` (torch ``buf.lerp_(grad, 1 - momentum)``, Keller
# ``momentum.lerp_(grad, 1 - beta)``); from zero buffers the sum form's ``M = mu M + G`` is that over (1 - beta).
_FROM_EMA: dict[str, Callable[[torch.Tensor, float], torch.Tensor] | None] = {
    "ema": lambda m, beta: m,
    "sum": lambda m, beta: m / (1.0 - beta),
    "optax": None,  # its bias correction reads the step count t, which neither peer keeps for Muon parameters
}


def _kind(group: dict[str, Any]) -> str | None:
    """The algorithm of a peer's param group ("muon" / "adamw"), or None when no peer has such a group."""
    keys = set(group) - {"initial_lr"}  # an LR scheduler's, on any optimizer
    if keys >= _TORCH_KEYS and "adjust_lr_fn" in keys:
        return "muon"
    if "use_muon" in keys:
        return "muon" if group["use_muon"] else "adamw" if keys == _KELLER_ADAM_KEYS else None
    return "muon" if keys == _KELLER_MUON_KEYS else None


PEERS: dict[str, Callable[[Sequence[dict[str, Any]]], bool]] = {
    "torch.optim.Muon": lambda groups: all("adjust_lr_fn" in g for g in groups),
    "KellerJordan/Muon": lambda groups: all("adjust_lr_fn" not in g and _kind(g) is not None for g in groups),
}
"""The peers whose state dicts `from_peer` reads, each with the test of its param groups."""


def _peer_of(groups: Sequence[dict[str, Any]]) -> str:
    for name, matches in PEERS.items():
        if groups and matches(groups) and all(_kind(g) is not None for g in groups):
            return name
    keys = sorted({k for g in groups for k in g})
    raise ValueError(
        f"state_dict: not a muonlab.fast.Muon state dict (its param groups have no 'spec') nor one of "
        f"{', '.join(PEERS)} (param group keys: {', '.join(keys) or 'none'})"
    )


def _order(params: Sequence[torch.Tensor], saved: Sequence[torch.Size | None], name: str) -> list[int]:
    """Which parameter each saved slot of a Keller Muon group holds: Keller's ``Muon`` sorts the group by size,
    largest first (``sorted(params, key=lambda x: x.size(), reverse=True)``, stable), ``SingleDeviceMuon`` does
    not; the state dict does not say which, the saved shapes do (both orders agree where they fit both)."""
    plain = list(range(len(params)))
    ranked = sorted(plain, key=lambda i: params[i].size(), reverse=True)
    for order in (plain, ranked):
        if all(s is None or s == params[i].shape for s, i in zip(saved, order, strict=True)):
            return order
    raise ValueError(
        f"{name}: the saved buffers' shapes {[None if s is None else tuple(s) for s in saved]} fit the group's "
        f"parameters {[tuple(p.shape) for p in params]} neither in order nor sorted by size"
    )


def _tensor(value: object, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name}: expected a tensor, got {type(value).__name__}")
    return value


def _muon_state(p: torch.Tensor, saved: dict[str, Any], spec: MuonSpec, beta: float, name: str) -> dict[str, Any]:
    convert = _FROM_EMA[spec.momentum_form]
    if convert is None:
        raise ValueError(
            f"{name}: momentum_form={spec.momentum_form!r} needs the step count for its bias correction, which "
            f"the peer does not keep for Muon parameters; load into an 'ema' or 'sum' spec"
        )
    unknown = sorted(set(saved) - {"momentum_buffer"})
    if unknown:
        raise ValueError(f"{name}: unknown Muon state entries {unknown} (a peer keeps only 'momentum_buffer')")
    buf = _tensor(saved.get("momentum_buffer"), f"{name}['momentum_buffer']")
    state = init_muon_state(p, spec)  # step 0 and, with NorMuon, S = 0: nothing of theirs to carry
    state["momentum_buffer"] = convert(buf.to(device=p.device, dtype=state_dtype(p)), beta)
    return state


def _adam_state(p: torch.Tensor, saved: dict[str, Any], name: str) -> dict[str, Any]:
    unknown = sorted(set(saved) - {"exp_avg", "exp_avg_sq", "step"})
    if unknown or "step" not in saved:
        raise ValueError(f"{name}: expected Adam state 'exp_avg', 'exp_avg_sq', 'step', got {sorted(saved)}")
    state = init_adam_state(p)
    for key in ("exp_avg", "exp_avg_sq"):
        state[key] = _tensor(saved.get(key), f"{name}[{key!r}]").to(device=p.device, dtype=state_dtype(p))
    step = saved["step"]
    state["step"] = torch.as_tensor(float(step), dtype=torch.float32, device=p.device)  # Keller: a Python int
    return state


def _saved_shape(entry: dict[str, Any] | None) -> torch.Size | None:
    if not entry:
        return None
    value = entry.get("momentum_buffer", entry.get("exp_avg"))
    return value.shape if isinstance(value, torch.Tensor) else None


_LIVE = {"muon": ("lr", "momentum", "weight_decay"), "adamw": ("lr", "betas", "eps", "weight_decay")}
"""The peers' group hyperparameters that mean what muonlab's group keys of the same name mean."""


def from_peer(param_groups: Sequence[dict[str, Any]], state_dict: dict[str, Any]) -> dict[str, Any] | None:
    """muonlab's state dict for ``param_groups`` (an optimizer's, specs resolved) made from a peer's
    ``state_dict``; None when ``state_dict`` already is muonlab's (its groups carry ``"spec"``)."""
    groups = state_dict.get("param_groups")
    if not isinstance(groups, list) or not isinstance(state_dict.get("state"), dict):
        raise ValueError("state_dict: expected 'state' and 'param_groups' entries (an optimizer's state_dict())")
    if groups and all("spec" in g for g in groups):
        return None
    peer = _peer_of(groups)
    if len(groups) != len(param_groups):
        raise ValueError(
            f"state_dict: the {peer} state has {len(groups)} param groups, this optimizer {len(param_groups)}; "
            f"build the groups in the peer's order (groups and parameters map by position)"
        )
    state: dict[int, dict[str, Any]] = {}
    out_groups: list[dict[str, Any]] = []
    first = 0
    for i, (saved, group) in enumerate(zip(groups, param_groups, strict=True)):
        name = f"state_dict['param_groups'][{i}]"
        kind, params = _kind(saved) or "?", list(group["params"])  # `_peer_of` found a kind for every group
        if kind != group["algorithm"]:
            raise ValueError(f"{name}: a {peer} {kind} group, but param_groups[{i}] is {group['algorithm']!r}")
        if len(saved["params"]) != len(params):
            raise ValueError(f"{name}: {len(saved['params'])} parameters, param_groups[{i}] has {len(params)}")
        if kind == "muon" and any(d is not None for d in group.get("matrix_dims") or []):
            raise ValueError(f"param_groups[{i}]['matrix_dims']: the peer has no such layout; nothing maps onto it")
        entries = [state_dict["state"].get(pid) for pid in saved["params"]]
        order = list(range(len(params)))
        if peer == "KellerJordan/Muon" and kind == "muon":
            order = _order(params, [_saved_shape(e) for e in entries], name)
        beta = float(saved.get("momentum", 0.0))
        spec: MuonSpec = group["spec"]
        for k, (entry, j) in enumerate(zip(entries, order, strict=True)):
            if not entry:
                continue
            p, where = params[j], f"{name} parameter {saved['params'][k]}"
            if _saved_shape(entry) != p.shape:
                raise ValueError(
                    f"{where}: saved state of shape {_saved_shape(entry)} for param_groups[{i}]['params'][{j}] of "
                    f"shape {tuple(p.shape)}"
                )
            if kind == "muon":
                state[first + j] = _muon_state(p, entry, spec, beta, where)
            else:
                state[first + j] = _adam_state(p, entry, where)
        out = {k: v for k, v in group.items() if k != "params"}
        out.update({key: saved[key] for key in _LIVE[kind] if key in saved})
        if "initial_lr" in saved:
            out["initial_lr"] = saved["initial_lr"]
        if kind == "adamw" and "betas" in out:
            out["betas"] = tuple(out["betas"])
        out["params"] = list(range(first, first + len(params)))
        out_groups.append(out)
        first += len(params)
    return {"state": state, "param_groups": out_groups}
