"""One optimizer step, as pure functions: `muon_step`, `adamw_step` and `step` over parameter lists.

`muon_step` runs stages 1-8 of docs/variants.md, "The step, stage by stage", in that order; `muon_update`
stops after stage 4 and returns the direction ``O``. Each stage is a function of its sibling module (stage
1 and 6 `muonlab.reference.decay`, 2 `.momentum`, 3 `.orthogonalize`, 4 `.normuon`, 5
`muonlab.contract.scaling`, 8 `.sphere`).

Policies (docs/variants.md, "Decisions"): everything is float64 and nothing passed in is mutated (results
are new arrays, states are new frozen records); a ``None`` gradient skips its parameter (weights and state
untouched); bad input raises `ValueError` naming the parameter; non-finite gradients raise or skip per
``spec.nonfinite``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from muonlab.contract.adam import adam_hyperparameters
from muonlab.contract.decay import decay_stages
from muonlab.contract.presets import resolve_spec
from muonlab.contract.scaling import update_scale
from muonlab.contract.shapes import normuon_state_shape
from muonlab.contract.spec import MuonSpec

from .adamw import adam_direction, adam_moments
from .array import Array
from .decay import coupled_decay, decoupled_decay
from .dion2 import dion2_scatter, dion2_select
from .momentum import apply_momentum
from .normuon import normuon_normalize
from .orthogonalize import as_matrices, magnitude, orthogonalize
from .sphere import sphere_step
from .state import AdamState, MuonState
from .transforms import equilibrate, post_orth

__all__ = ["adamw_step", "muon_step", "muon_update", "step"]

State = MuonState | AdamState


def _as_float64(x: npt.ArrayLike, name: str) -> Array:
    arr = np.asarray(x)
    if np.iscomplexobj(arr):
        raise ValueError(f"{name}: complex arrays are not supported, got dtype {arr.dtype}")
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    return np.array(arr, dtype=np.float64, copy=True)


def _check_lr(lr: float | None, spec: MuonSpec) -> float:
    value = spec.lr if lr is None else lr
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise ValueError(f"lr: expected a real number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0.0:
        raise ValueError(f"lr: must be finite and >= 0, got {value!r}")
    return v


def _check_pair(
    param: npt.ArrayLike, grad: npt.ArrayLike, pname: str, gname: str, min_ndim: int
) -> tuple[Array, Array]:
    p = _as_float64(param, pname)
    g = _as_float64(grad, gname)
    if p.ndim < min_ndim:
        raise ValueError(
            f"{pname} must have at least {min_ndim} dims for Muon (route it to AdamW), got shape {p.shape}"
        )
    if p.size == 0:
        raise ValueError(f"{pname} is empty (shape {p.shape}); a parameter must have at least one element")
    if g.shape != p.shape:
        raise ValueError(f"{gname} has shape {g.shape} but {pname} has shape {p.shape}")
    return p, g


def _grad_finite(g: Array) -> bool:
    return bool(np.all(np.isfinite(g)))


def _nonfinite_error(gname: str, pname: str) -> ValueError:
    return ValueError(
        f"{gname} contains non-finite values (NaN or Inf); {pname} and its state were left unchanged "
        f"(set nonfinite='skip' to skip such steps)"
    )


def _check_muon_state(state: object, shape: tuple[int, ...], spec: MuonSpec, sname: str) -> MuonState:
    if not isinstance(state, MuonState):
        raise ValueError(f"{sname}: expected a MuonState, got {type(state).__name__}")
    if np.shape(state.momentum) != shape:
        raise ValueError(f"{sname}.momentum has shape {np.shape(state.momentum)}, expected {shape}")
    if spec.normuon:
        expected = normuon_state_shape(shape, spec)
        if state.second_moment is None or np.shape(state.second_moment) != expected:
            got = None if state.second_moment is None else np.shape(state.second_moment)
            raise ValueError(f"{sname}.second_moment has shape {got}, expected {expected} (spec.normuon=True)")
    if isinstance(state.step, bool) or not isinstance(state.step, int) or state.step < 0:
        raise ValueError(f"{sname}.step: expected an integer >= 0, got {state.step!r}")
    return state


def _check_adam_state(state: object, shape: tuple[int, ...], sname: str) -> AdamState:
    if not isinstance(state, AdamState):
        raise ValueError(f"{sname}: expected an AdamState, got {type(state).__name__}")
    for field in ("exp_avg", "exp_avg_sq"):
        got = np.shape(getattr(state, field))
        if got != shape:
            raise ValueError(f"{sname}.{field} has shape {got}, expected {shape}")
    if isinstance(state.step, bool) or not isinstance(state.step, int) or state.step < 0:
        raise ValueError(f"{sname}.step: expected an integer >= 0, got {state.step!r}")
    return state


def _muon_update(p: Array, g: Array, state: MuonState, spec: MuonSpec) -> tuple[Array, MuonState]:
    """Stages 1-4 on validated float64 inputs."""
    t = state.step + 1
    if decay_stages(spec)[0]:
        g = coupled_decay(g, p, spec)
    if spec.dion2_fraction is None:
        momentum, n = apply_momentum(np.asarray(state.momentum, dtype=np.float64), g, spec, t)
        nm, restore = as_matrices(n, spec, "n")
        n = restore(equilibrate(nm, spec))
        o = magnitude(n, orthogonalize(n, spec), spec)
        o = restore(post_orth(as_matrices(o, spec, "o")[0], spec))
    else:  # Dion2: Orth on the selected slices of M + G, error feedback on the buffer (reference/dion2.py)
        mm, restore = as_matrices(np.asarray(state.momentum, dtype=np.float64), spec, "momentum")
        rows = spec.normuon  # NorDion2 selects rows
        gm = as_matrices(g, spec, "grad")[0]
        new, u, index = dion2_select(mm, gm, spec.momentum, spec.dion2_fraction, rows)
        momentum = restore(new)
        u = equilibrate(u, spec)
        o_sel = post_orth(magnitude(u, orthogonalize(u, spec), spec), spec)
        if spec.normuon:  # NorDion2: the statistic of the selected rows alone is updated and applied
            assert state.second_moment is not None
            s_all = np.array(state.second_moment, dtype=np.float64).reshape(mm.shape[0], mm.shape[1], 1)
            at = index[:, :, None]
            o_sel, s_sel = normuon_normalize(o_sel, np.take_along_axis(s_all, at, axis=-2), spec, t)
            np.put_along_axis(s_all, at, s_sel, axis=-2)
            o = restore(dion2_scatter(o_sel, index, mm.shape, rows))
            return o, MuonState(momentum=momentum, second_moment=s_all.reshape(np.shape(state.second_moment)), step=t)
        o = restore(dion2_scatter(o_sel, index, mm.shape, rows))
    second: Array | None = None
    if spec.normuon:
        assert state.second_moment is not None
        om, restore = as_matrices(o, spec, "update")
        s_stored = np.asarray(state.second_moment, dtype=np.float64)
        s_view = np.reshape(s_stored, (om.shape[0], *s_stored.shape[-2:]))
        # NAMO reads the raw gradient and the orthogonalizer's input N (Dion2 refuses both, contract/spec.py)
        extra = (
            {"grad": as_matrices(g, spec, "grad")[0], "n": as_matrices(n, spec, "n")[0]}
            if spec.dion2_fraction is None
            else {}
        )
        o_hat, s_new = normuon_normalize(om, s_view, spec, t, **extra)
        o = restore(o_hat)
        second = np.reshape(s_new, s_stored.shape)
    elif state.second_moment is not None:
        second = np.array(state.second_moment, dtype=np.float64, copy=True)
    return o, MuonState(momentum=momentum, second_moment=second, step=t)


def muon_update(
    param: npt.ArrayLike, grad: npt.ArrayLike, state: MuonState, spec: MuonSpec | str
) -> tuple[Array, MuonState]:
    """Stages 1-4: the update direction ``O`` (after NorMuon, before the shape scale) and the new state.

    ``W_new = W - eta_d lambda mask (.) W - eta_u O`` without a sphere (see `muon_step`).
    """
    s = resolve_spec(spec)
    p, g = _check_pair(param, grad, "param", "grad", 2)
    st = _check_muon_state(state, p.shape, s, "state")
    if not _grad_finite(g):
        raise _nonfinite_error("grad", "param")
    return _muon_update(p, g, st, s)


def _muon_step(
    param: npt.ArrayLike,
    grad: npt.ArrayLike,
    state: object,
    spec: MuonSpec,
    lr: float,
    names: tuple[str, str, str],
) -> tuple[Array, MuonState]:
    pname, gname, sname = names
    p, g = _check_pair(param, grad, pname, gname, 2)
    st = _check_muon_state(state, p.shape, spec, sname)
    if not _grad_finite(g):
        if spec.nonfinite == "raise":
            raise _nonfinite_error(gname, pname)
        return p, st
    o, new_state = _muon_update(p, g, st, spec)
    lr_update = lr * update_scale(p.shape, spec)
    w = decoupled_decay(p, o, lr, lr_update, spec) if decay_stages(spec)[1] else p
    if spec.sphere == "none":
        new_p: Array = w - lr_update * o
    else:
        new_p = sphere_step(w, -lr_update * o, spec, lr_update)
    return new_p, new_state


def muon_step(
    param: npt.ArrayLike,
    grad: npt.ArrayLike,
    state: MuonState,
    spec: MuonSpec | str,
    lr: float | None = None,
) -> tuple[Array, MuonState]:
    """One Muon step on a parameter with ``ndim >= 2``: returns ``(new_param, new_state)`` (float64).

    ``lr`` is ``eta`` (default ``spec.lr``); ``spec`` may be a preset name. With a non-finite ``grad`` and
    ``spec.nonfinite="skip"`` a copy of ``param`` and the same ``state`` come back.
    """
    s = resolve_spec(spec)
    return _muon_step(param, grad, state, s, _check_lr(lr, s), ("param", "grad", "state"))


def _adamw_step(
    param: npt.ArrayLike,
    grad: npt.ArrayLike,
    state: object,
    spec: MuonSpec,
    lr: float,
    names: tuple[str, str, str],
) -> tuple[Array, AdamState]:
    pname, gname, sname = names
    p, g = _check_pair(param, grad, pname, gname, 0)
    st = _check_adam_state(state, p.shape, sname)
    if not _grad_finite(g):
        if spec.nonfinite == "raise":
            raise _nonfinite_error(gname, pname)
        return p, st
    t = st.step + 1
    m, v = adam_moments(np.asarray(st.exp_avg, np.float64), np.asarray(st.exp_avg_sq, np.float64), g, spec)
    eta, lam = adam_hyperparameters(spec, lr)
    u = adam_direction(m, v, t, spec)
    new_p: Array = p * (1.0 - eta * lam) - eta * u
    return new_p, AdamState(exp_avg=m, exp_avg_sq=v, step=t)


def adamw_step(
    param: npt.ArrayLike,
    grad: npt.ArrayLike,
    state: AdamState,
    spec: MuonSpec | str,
    lr: float | None = None,
) -> tuple[Array, AdamState]:
    """One AdamW step (`muonlab.reference.adamw`) on a parameter of any ``ndim``.

    ``lr`` is the Muon ``eta`` (default ``spec.lr``); AdamW uses ``spec.adam_lr`` unless that is ``None``.
    """
    s = resolve_spec(spec)
    return _adamw_step(param, grad, state, s, _check_lr(lr, s), ("param", "grad", "state"))


def step(
    params: Sequence[npt.ArrayLike],
    grads: Sequence[npt.ArrayLike | None],
    states: Sequence[State],
    spec: MuonSpec | str,
    lr: float | None = None,
) -> tuple[list[Array], list[State]]:
    """One step over parameter lists: `muon_step` where the state is a `MuonState`, `adamw_step` where it
    is an `AdamState` (build states with `muonlab.reference.state.init_state`).

    A ``None`` gradient skips its parameter: a float64 copy of it and its unchanged state come back.
    Errors name the entry, e.g. ``grads[2] contains non-finite values``; a raise leaves every input intact.
    """
    s = resolve_spec(spec)
    eta = _check_lr(lr, s)
    if not (len(params) == len(grads) == len(states)):
        raise ValueError(
            f"params, grads, states: expected equal lengths, got {len(params)}, {len(grads)}, {len(states)}"
        )
    new_params: list[Array] = []
    new_states: list[State] = []
    for i, (p, g, st) in enumerate(zip(params, grads, states, strict=True)):
        names = (f"params[{i}]", f"grads[{i}]", f"states[{i}]")
        if g is None:
            new_params.append(_as_float64(p, names[0]))
            new_states.append(st)
            continue
        if isinstance(st, MuonState):
            np_, ns = _muon_step(p, g, st, s, eta, names)
            new_params.append(np_)
            new_states.append(ns)
        elif isinstance(st, AdamState):
            ap, ast = _adamw_step(p, g, st, s, eta, names)
            new_params.append(ap)
            new_states.append(ast)
        else:
            raise ValueError(f"states[{i}]: expected a MuonState or an AdamState, got {type(st).__name__}")
    return new_params, new_states
