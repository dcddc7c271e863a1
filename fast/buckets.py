"""A Muon param group's stacked state and its step (the single-process path of `muonlab.fast.Muon`).

`GroupStacks` holds a group's `muonlab.fast.plan` (computed once) and, per bucket, one ``[B, m, n]``
momentum tensor (and NorMuon ``S``, and the step counts) of which every parameter's ``Optimizer.state``
entries are views: the state stays per parameter (``state_dict`` saves and loads it as usual) while the
step reads a whole stack without copying. State created elsewhere (loaded from a checkpoint, or made by
`muonlab.fast.step`) is copied into new stacks on the next step (`GroupStacks.bind`).

One step (docs/variants.md, the step's stages) per chunk of a bucket: gather the gradients into a stack
(stage 1), `muonlab.fast.stack.stack_directions` (2-4), `muonlab.fast.decay.apply_stack_` (5-7) or the
hypersphere step (8). Per-matrix learning rates and decay factors are computed in float64 from ``lr`` (a
float or a tensor on the parameters' device) and rounded once, so a float and a tensor ``lr`` give equal
results. Parameters to skip (``None`` gradient, or ``keep`` False: a non-finite gradient under
``nonfinite="skip"``) are masked on the device: their gradient is zeroed and every weight of their update
is exactly 0, so their values and state stay unchanged bit for bit (docs/fast.md, "Host syncs").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from muonlab.contract import MuonSpec, decay_stages, matrix_view_shape, normuon_state_shape, update_scale

from .backend import Backend
from .decay import Coefficients, Scalar, apply_stack_, coefficients, decay_lr
from .orthogonalize import as_matrices
from .plan import Bucket, Chunk, plan_buckets
from .sphere import sphere_step
from .stack import Skip, stack_directions
from .state import state_dtype

__all__ = ["GroupStacks", "matrices_of"]


def _slots(t: torch.Tensor, a: int, b: int) -> torch.Tensor:
    return t if t.ndim == 0 else t[a:b]


State = dict[str, Any]


def matrices_of(t: torch.Tensor, spec: MuonSpec, name: str) -> torch.Tensor:
    """``t`` as ``[k, m, n]`` (the matrices of `matrix_view_shape`), as a view of ``t`` so writes land in it."""
    view = matrix_view_shape(t.shape, spec, name)
    try:
        return t.view(math.prod(view[:-2]), view[-2], view[-1])
    except RuntimeError as err:
        raise ValueError(
            f"{name}: its matrix view {tuple(view)} of shape {tuple(t.shape)} with strides {t.stride()} cannot "
            f"be a view; with nd_mode='flatten', name matrix dims that keep the flattened dims contiguous"
        ) from err


@dataclass
class _Store:
    """One bucket's state stacks, the per-slot constants, and the views handed out as per-parameter state."""

    momentum: torch.Tensor
    second: torch.Tensor | None
    steps: torch.Tensor
    scale: torch.Tensor
    slot_params: torch.Tensor
    param_of_slot: list[int]
    views: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]


@dataclass
class _Lane:
    """The buckets on one device with one state dtype: their per-slot vectors concatenated (bucket ``i`` of the
    lane owns slots ``offsets[i] : offsets[i] + size``), so masks, coefficients and step counts take one op per
    lane instead of one per bucket. ``steps`` is the storage of every bucket's step counts."""

    buckets: list[int]
    offsets: list[int]
    steps: torch.Tensor
    scale: torch.Tensor
    slot_params: torch.Tensor
    param_of_slot: list[int]
    dtype: torch.dtype


def _coef_rows(c: Coefficients, a: int, b: int) -> Coefficients:
    return Coefficients(
        c.lr_update[a:b],
        None if c.decay is None else _slots(c.decay, a, b),
        None if c.retain is None else _slots(c.retain, a, b),
    )


class GroupStacks:
    """The plan and stacked state of one Muon group whose parameters (matrix views) are ``views``."""

    def __init__(self, views: Sequence[torch.Tensor], spec: MuonSpec, max_stack_bytes: int | None) -> None:
        self.spec = spec
        self.shapes = [tuple(v.shape) for v in views]
        mats = [matrices_of(v, spec, f"params[{i}]") for i, v in enumerate(views)]
        self.mats = [(int(m.shape[0]), int(m.shape[1]), int(m.shape[2])) for m in mats]
        self.dtypes = [state_dtype(v) for v in views]
        self.buckets: tuple[Bucket, ...] = plan_buckets(
            self.mats, [v.device for v in views], self.dtypes, spec, max_stack_bytes
        )
        self.stores: list[_Store] = []
        self.lanes: list[_Lane] = []
        self._coef_cache: dict[tuple[float, float], list[Coefficients]] = {}

    # -- state -----------------------------------------------------------------------------------------
    def _views(self, bucket: Bucket, mom: torch.Tensor, second: torch.Tensor | None, steps: torch.Tensor) -> list[Any]:
        out = []
        for j, member in enumerate(bucket.members):
            s, k = bucket.slots[j], bucket.counts[j]
            m = mom[s : s + k]
            sm = None if second is None else second[s : s + k]
            shape = self.shapes[member]
            out.append(
                (
                    m.view(shape),
                    None if sm is None else sm.view(normuon_state_shape(shape, self.spec)),
                    steps[s],
                )
            )
        return out

    def _store(self, bucket: Bucket, states: Sequence[State], steps: torch.Tensor) -> _Store:
        dev, dt = bucket.device, bucket.dtype
        mom = torch.zeros(bucket.size, bucket.rows, bucket.cols, dtype=dt, device=dev)
        second = None
        if self.spec.normuon:
            shape = (bucket.size, bucket.rows, 1) if bucket.reduce == -1 else (bucket.size, 1, bucket.cols)
            second = torch.zeros(shape, dtype=dt, device=dev)
        scale = torch.tensor(
            [
                update_scale(self.shapes[m], self.spec)
                for m, k in zip(bucket.members, bucket.counts, strict=True)
                for _ in range(k)
            ],
            dtype=torch.float64,
        ).to(dev)
        param_of_slot = [m for m, k in zip(bucket.members, bucket.counts, strict=True) for _ in range(k)]
        slot_params = torch.tensor(param_of_slot, dtype=torch.long).to(dev)
        views = self._views(bucket, mom, second, steps)
        with torch.no_grad():
            for j, member in enumerate(bucket.members):
                st = states[member]
                if not st:
                    continue
                views[j][0].copy_(st["momentum_buffer"])
                sv = views[j][1]
                if sv is not None:
                    sv.copy_(st["second_moment"])
                steps[bucket.slots[j] : bucket.slots[j] + bucket.counts[j]].copy_(st["step"])
        return _Store(mom, second, steps, scale.view(-1, 1, 1), slot_params, param_of_slot, views)

    def bind(self, states: Sequence[State]) -> None:
        """Make every member's state entries views into this group's stacks: new stacks (zeros, or copies of
        state made elsewhere) when any entry is not the view handed out before."""
        fresh = len(self.stores) != len(self.buckets)
        if not fresh:
            for bucket, store in zip(self.buckets, self.stores, strict=True):
                for j, member in enumerate(bucket.members):
                    st = states[member]
                    mv, sv, tv = store.views[j]
                    stale = st.get("momentum_buffer") is not mv or st.get("step") is not tv
                    if stale or (sv is not None and st.get("second_moment") is not sv):
                        fresh = True
        if not fresh:
            return
        self._coef_cache.clear()
        lanes: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for i, b in enumerate(self.buckets):
            lanes.setdefault((b.device, b.dtype), []).append(i)
        self.lanes = []
        stores: dict[int, _Store] = {}
        for (dev, dt), members in lanes.items():
            sizes = [self.buckets[i].size for i in members]
            offsets = [sum(sizes[:j]) for j in range(len(sizes))]
            steps = torch.zeros(sum(sizes), dtype=torch.float32, device=dev)
            for i, off, size in zip(members, offsets, sizes, strict=True):
                stores[i] = self._store(self.buckets[i], states, steps[off : off + size])
            self.lanes.append(
                _Lane(
                    buckets=members,
                    offsets=offsets,
                    steps=steps,
                    scale=torch.cat([stores[i].scale for i in members]),
                    slot_params=torch.cat([stores[i].slot_params for i in members]),
                    param_of_slot=[m for i in members for m in stores[i].param_of_slot],
                    dtype=dt,
                )
            )
        self.stores = [stores[i] for i in range(len(self.buckets))]
        for bucket, store in zip(self.buckets, self.stores, strict=True):
            for j, member in enumerate(bucket.members):
                mv, sv, tv = store.views[j]
                st = states[member]
                st["step"] = tv
                st["momentum_buffer"] = mv
                if sv is not None:
                    st["second_moment"] = sv

    # -- per-matrix coefficients -------------------------------------------------------------------------
    def _coefs(self, lane: _Lane, lr: Scalar, lam: float, keep: torch.Tensor | None) -> Coefficients:
        """Per slot: ``eta_u = lr * update_scale`` and ``eta_d lambda`` in float64 (0 where ``keep`` is False),
        rounded once by `coefficients`."""
        spec = self.spec
        lr_u = lane.scale * lr
        dec = None
        if decay_stages(spec, lam)[1]:
            dec = torch.as_tensor(decay_lr(lr, lr_u, spec), dtype=torch.float64, device=lr_u.device) * lam
        if keep is not None:  # exact: x * True = x, x * False = 0
            lr_u = lr_u * keep
            dec = None if dec is None else dec * keep
        return coefficients(lr_u, dec, lane.dtype)

    def _all_coefs(self, lr: Scalar, lam: float, keeps: list[torch.Tensor | None]) -> list[Coefficients]:
        """`_coefs` of every lane; cached while a float ``lr`` and ``lam`` repeat and nothing is skipped."""
        key = None if isinstance(lr, torch.Tensor) or any(k is not None for k in keeps) else (float(lr), lam)
        if key is not None and key in self._coef_cache:
            return self._coef_cache[key]
        out = [self._coefs(lane, lr, lam, k) for lane, k in zip(self.lanes, keeps, strict=True)]
        if key is not None:
            self._coef_cache = {key: out}
        return out

    # -- the step ---------------------------------------------------------------------------------------
    def step(
        self,
        views: Sequence[torch.Tensor],
        grads: Sequence[torch.Tensor | None],
        states: Sequence[State],
        *,
        lr: Scalar,
        momentum: float,
        weight_decay: float,
        keep: torch.Tensor | None = None,
        backend: Backend = "auto",
    ) -> None:
        """One step of every matrix. ``views``/``grads``: the matrix views of the parameters and gradients
        (``None``: skip that parameter); ``keep``: bool per parameter on the device (None: all finite)."""
        self.bind(states)
        spec = self.spec
        missing = [g is None for g in grads]
        keeps: list[torch.Tensor | None] = []
        for lane in self.lanes:
            kp: torch.Tensor | None = None
            if keep is not None:
                kp = keep.to(lane.steps.device).index_select(0, lane.slot_params)
            if any(missing[m] for m in lane.param_of_slot):
                present = torch.tensor([not missing[m] for m in lane.param_of_slot], device=lane.steps.device)
                kp = present if kp is None else kp & present
            keeps.append(None if kp is None else kp.view(-1, 1, 1))
        coefs = self._all_coefs(lr, weight_decay, keeps)
        coupled, _ = decay_stages(spec, weight_decay)
        for lane, kp, coef in zip(self.lanes, keeps, coefs, strict=True):
            lane.steps.add_(1.0 if kp is None else kp.view(-1))
            skip = None if kp is None else Skip.of(kp, spec, momentum, lane.dtype)
            for i, off in zip(lane.buckets, lane.offsets, strict=True):
                bucket, store = self.buckets[i], self.stores[i]
                end = off + bucket.size
                slot_steps = store.steps.view(-1, 1, 1) if spec.momentum_form == "optax" else None
                for chunk in bucket.chunks:
                    self._chunk(
                        bucket,
                        store,
                        chunk,
                        views,
                        grads,
                        _coef_rows(coef, off, end),
                        None if skip is None else skip.rows(off, end),
                        slot_steps,
                        momentum,
                        weight_decay,
                        coupled,
                        backend,
                    )

    def _pieces(self, chunk: Chunk, views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The chunk's parameter pieces, ``[count, m, n]`` views in the stack's orientation."""
        out = []
        for pc in chunk.pieces:
            part = matrices_of(views[pc.member], self.spec, f"params[{pc.member}]")[pc.first : pc.first + pc.count]
            out.append(part)
        return out

    def _chunk(
        self,
        bucket: Bucket,
        store: _Store,
        chunk: Chunk,
        views: Sequence[torch.Tensor],
        grads: Sequence[torch.Tensor | None],
        coef: Coefficients,
        skip: Skip | None,
        steps: torch.Tensor | None,
        beta: float,
        lam: float,
        coupled: bool,
        backend: Backend,
    ) -> None:
        spec = self.spec
        a, b = chunk.start, chunk.stop
        targets = self._pieces(chunk, views)
        o = stack_directions(
            self._grad_pieces(chunk, grads, views),
            store.momentum[a:b],
            None if store.second is None else store.second[a:b],
            spec,
            beta=beta,
            weights=targets if coupled else None,
            weight_decay=lam,
            reduce=bucket.reduce,
            steps=None if steps is None else steps[a:b],
            skip=None if skip is None else skip.rows(a, b),
            backend=backend,
        )
        counts = [p.count for p in chunk.pieces]
        part = _coef_rows(coef, a, b)
        if spec.sphere == "none":
            apply_stack_(targets, o, counts, part, spec.cautious, bucket.dtype)
            return
        for w, u, eta, kp in zip(
            targets,
            torch.split(o, counts),
            torch.split(part.lr_update, counts),
            [None] * len(counts) if skip is None else torch.split(skip.keep[a:b], counts),
            strict=True,
        ):
            wf = w.detach().to(bucket.dtype, copy=True)
            new = sphere_step(wf, -(u.to(bucket.dtype) * eta), spec, eta)
            w.copy_(new if kp is None else torch.where(kp, new, wf))

    def _grad_pieces(
        self, chunk: Chunk, grads: Sequence[torch.Tensor | None], views: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        out = []
        for pc in chunk.pieces:
            g = grads[pc.member]
            if g is None:
                _, m, n = self.mats[pc.member]
                v = views[pc.member]
                part = torch.zeros((pc.count, m, n), dtype=v.dtype, device=v.device)
            else:
                mats, _ = as_matrices(g, self.spec, f"grads[{pc.member}]")
                part = mats[pc.first : pc.first + pc.count]
            out.append(part)
        return out
