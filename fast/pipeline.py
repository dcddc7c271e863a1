"""The step of a Muon param group: one pipeline for one process and for every distributed mode.

`GroupStacks` holds a group's `muonlab.fast.plan` (computed once) and, per bucket, one ``[B, m, n]`` momentum
tensor (and NorMuon ``S``, and the step counts) of which every parameter's ``Optimizer.state`` entries are views:
the state stays per parameter (``state_dict`` saves and loads it as usual) while the step reads a whole stack
without copying. State created elsewhere (loaded from a checkpoint) is copied into new stacks on the next step
(`GroupStacks.bind`).

`GroupStacks.step` runs the stages of docs/variants.md ("The step, stage by stage") on *units* of stacks:

1-2. gather the gradients into a stack in the state dtype (coupled decay added), momentum (`momentum_`, or the
     fused kernel);
3-4. orthogonalization (`muonlab.fast.orthogonalize.orthogonalizer`) and NorMuon (`normuon_normalize_`);
5-8. the shape-scaled update, decoupled decay and the cautious mask (`apply_stack_`), or the hypersphere step.

On one process a unit is one chunk of a bucket (so the transient memory is a few chunk-sized tensors). With a
``distributed`` mode the unit is the whole group, and only stages 3-4 differ: they run on owner ranks on whole
matrices (`muonlab.fast.distributed.muon_directions`); NorMuon's ``S`` is then a per-parameter tensor of the
full matrix, replicated on every rank, instead of a stack. Per-matrix learning rates and decay factors are
computed in float64 from ``lr`` (a float or a tensor on the parameters' device) and rounded once, so a float
and a tensor ``lr`` give equal results. Parameters to skip (``None`` gradient, or ``keep`` False: a non-finite
gradient under ``nonfinite="skip"``) are masked on the device: their gradient is zeroed and every weight of
their update is exactly 0, so their values and state stay unchanged bit for bit (docs/fast.md, "Host syncs").
"""

from __future__ import annotations

import math
from collections.abc import Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from muonlab.contract import MuonSpec, decay_stages, matrix_view_shape, normuon_state_shape, update_scale
from muonlab.contract.spec import lookup

from .backend import Backend, route
from .decay import Coefficients, Scalar, apply_stack_, coefficients, decay_lr
from .dion2 import dion2_decay, dion2_feedback_, dion2_scatter, dion2_select_
from .distributed import DistributedMode, Group, local_shard, muon_directions, on_owners, world_of
from .momentum import MOMENTUM_FORMS, momentum_, momentum_weight
from .normuon import gradient_statistic, normuon_normalize_
from .orthogonalize import as_matrices, contiguous_as, orthogonalizer
from .plan import Bucket, Chunk, plan_buckets
from .sphere import sphere_step
from .state import init_muon_state, state_dtype, wide_dtype
from .transforms import AroundOrth

__all__ = ["GroupStacks", "Skip", "gather", "matrices_of"]

State = MutableMapping[str, Any]


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


def gather(views: Sequence[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """A new ``[C, m, n]`` tensor of ``dtype`` holding ``views`` (``[k_i, m, n]`` each, any strides and dtype)
    one after another: one copy, one rounding."""
    first = views[0]
    shape = (sum(v.shape[0] for v in views), first.shape[-2], first.shape[-1])
    return torch.cat(list(views), out=torch.empty(shape, dtype=dtype, device=first.device))


@dataclass(frozen=True)
class Skip:
    """Which matrices of a stack step (``keep``, bool ``[C, 1, 1]``) and the per-matrix factors derived from
    it once per step (`Skip.of`): ``skip = ~keep``, the `momentum_weight` and NorMuon's ``S`` lerp weight."""

    keep: torch.Tensor
    skip: torch.Tensor
    momentum: torch.Tensor
    second: torch.Tensor | None
    feedback: torch.Tensor | None

    @staticmethod
    def of(keep: torch.Tensor, spec: MuonSpec, beta: float, dtype: torch.dtype) -> Skip:
        flags = keep.to(dtype)  # 1 / 0, exact: one cast shared by both weights
        second = flags * (1.0 - spec.beta2) if spec.normuon else None
        feedback = None
        if spec.dion2_fraction is not None:
            decay = dion2_decay(beta, keep, dtype)
            assert isinstance(decay, torch.Tensor)
            feedback = decay
        on, off = lookup(MOMENTUM_FORMS, spec.momentum_form, "momentum_form").weights(beta)
        # `momentum_weight`; with off = 0 ("ema") from the shared cast, one op fewer
        momentum = flags.mul_(on) if off == 0.0 else momentum_weight(keep, spec.momentum_form, beta, dtype)
        return Skip(keep, ~keep, momentum, second, feedback)

    def rows(self, a: int, b: int) -> Skip:
        """The mask of slots ``a:b`` (views)."""

        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[a:b]

        return Skip(self.keep[a:b], self.skip[a:b], self.momentum[a:b], cut(self.second), cut(self.feedback))


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


@dataclass(frozen=True)
class _Work:
    """One chunk of one step: its bucket and state, and its rows of the lane's coefficients and skip mask."""

    bucket: Bucket
    store: _Store
    chunk: Chunk
    coef: Coefficients
    skip: Skip | None


def _slots(t: torch.Tensor, a: int, b: int) -> torch.Tensor:
    return t if t.ndim == 0 else t[a:b]


def _coef_rows(c: Coefficients, a: int, b: int) -> Coefficients:
    return Coefficients(
        c.lr_update[a:b],
        None if c.decay is None else _slots(c.decay, a, b),
        None if c.retain is None else _slots(c.retain, a, b),
    )


class GroupStacks:
    """The plan and stacked state of one Muon group whose parameters (matrix views) are ``views``.

    ``shapes`` (default the views' shapes) are the members' matrix-view shapes, which their state takes; a view of
    another shape with the same elements in the same row-major order (a strided ``[groups, s, n]`` block of a
    Megatron row split, `muonlab.fast.layout.row_blocks`, standing for one ``[groups * s, n]`` matrix) is read
    by copy and written in place. ``full_shapes`` (default ``shapes``) are the global shapes of the matrix
    views, which set the shape scale and NorMuon's statistic when ``views`` are dim-0 shards
    (``distributed="sharded"`` / ``"gathered"``).
    ``distributed`` and ``process_group`` choose where stages 3-4 run (`muonlab.fast.distributed`); every rank
    must build the group with the same parameters and call `step` together."""

    def __init__(
        self,
        views: Sequence[torch.Tensor],
        spec: MuonSpec,
        max_stack_bytes: int | None,
        *,
        shapes: Sequence[tuple[int, ...]] | None = None,
        full_shapes: Sequence[tuple[int, ...]] | None = None,
        distributed: DistributedMode = "none",
        process_group: Group = None,
    ) -> None:
        self.spec = spec
        self.orth = orthogonalizer(spec)
        self.around = AroundOrth.of(spec)
        self.distributed: DistributedMode = distributed
        self.process_group = process_group
        self.shapes = [tuple(v.shape) for v in views] if shapes is None else [tuple(s) for s in shapes]
        self.full_shapes = list(self.shapes if full_shapes is None else full_shapes)
        # a member whose view is not its matrix shape: one matrix, read by copy (`_matrix_pieces`)
        self.strided = [tuple(v.shape) != s for v, s in zip(views, self.shapes, strict=True)]
        self.mats: list[tuple[int, int, int]] = []
        for i, (v, s, strided) in enumerate(zip(views, self.shapes, self.strided, strict=True)):
            k, m, n = (1, math.prod(s[:-1]), s[-1]) if strided else matrices_of(v, spec, f"params[{i}]").shape
            self.mats.append((int(k), int(m), int(n)))
        # A shard with no matrices (a batch dim split over more ranks than it has entries) has no stack slot: its
        # state is its own and it only takes part in the exchange of stages 3-4.
        self.loose = [i for i, (k, _, _) in enumerate(self.mats) if k == 0]
        self.dtypes = [state_dtype(v) for v in views]
        self.buckets: tuple[Bucket, ...] = plan_buckets(
            self.mats,
            [v.device for v in views],
            self.dtypes,
            spec,
            # distributed: every parameter in one piece, since the whole group is exchanged at once anyway
            max_stack_bytes if distributed == "none" else None,
        )
        self.stores: list[_Store] = []
        self.lanes: list[_Lane] = []
        self._coef_cache: dict[tuple[float, float], list[Coefficients]] = {}
        self._dion2_grad: list[torch.Tensor] = []  # the chunk's G, from stage 1 to Dion2's selection
        # NAMO: the chunk's sum(G^2) from stage 1 to stage 4 (distributed: G itself, for the owner)
        self._grad_stats: list[torch.Tensor] = []
        self._namo = spec.normuon and spec.normuon_input == "gradient"
        self._reads_input_norm = spec.normuon and spec.normuon_rescale == "input_norm"
        # a sphere whose vectors (columns, the whole matrix) span the rows a shard splits: stage 8 on the owner too
        self._sphere_on_owners = (
            spec.sphere != "none" and spec.sphere_axis in ("col", "matrix") and distributed in ("sharded", "gathered")
        )

    # -- state -----------------------------------------------------------------------------------------
    @property
    def _stacked_second(self) -> bool:
        """NorMuon ``S`` lives in stacks on one process; distributed, it is a whole-matrix tensor per parameter."""
        return self.spec.normuon and self.distributed == "none"

    def _views(self, bucket: Bucket, mom: torch.Tensor, second: torch.Tensor | None, steps: torch.Tensor) -> list[Any]:
        out = []
        for j, member in enumerate(bucket.members):
            s, k = bucket.slots[j], bucket.counts[j]
            sm = None if second is None else second[s : s + k]
            shape = self.shapes[member]
            out.append(
                (
                    mom[s : s + k].view(shape),
                    None if sm is None else sm.view(normuon_state_shape(shape, self.spec)),
                    steps[s],
                )
            )
        return out

    def _store(self, bucket: Bucket, states: Sequence[State], steps: torch.Tensor) -> _Store:
        dev, dt = bucket.device, bucket.dtype
        mom = torch.zeros(bucket.size, bucket.rows, bucket.cols, dtype=dt, device=dev)
        second = None
        if self._stacked_second:
            assert bucket.reduce is not None  # planned with NorMuon
            shape = [bucket.size, bucket.rows, bucket.cols]
            for d in bucket.reduce:  # the averaged dims are 1
                shape[d] = 1
            second = torch.zeros(shape, dtype=dt, device=dev)
        param_of_slot = [m for m, k in zip(bucket.members, bucket.counts, strict=True) for _ in range(k)]
        scale = torch.tensor([update_scale(self.full_shapes[m], self.spec) for m in param_of_slot], dtype=torch.float64)
        slot_params = torch.tensor(param_of_slot, dtype=torch.long).to(dev)
        views = self._views(bucket, mom, second, steps)
        with torch.no_grad():
            for j, member in enumerate(bucket.members):
                st = states[member]
                if "momentum_buffer" not in st:  # new (a distributed S alone may already be there)
                    continue
                views[j][0].copy_(st["momentum_buffer"])
                sv = views[j][1]
                if sv is not None:
                    sv.copy_(st["second_moment"])
                steps[bucket.slots[j] : bucket.slots[j] + bucket.counts[j]].copy_(st["step"])
        return _Store(mom, second, steps, scale.to(dev).view(-1, 1, 1), slot_params, param_of_slot, views)

    def _fresh(self, states: Sequence[State]) -> bool:
        """Whether any member's state entries are not the views handed out before (new, or loaded)."""
        if len(self.stores) != len(self.buckets):
            return True
        for bucket, store in zip(self.buckets, self.stores, strict=True):
            for j, member in enumerate(bucket.members):
                st = states[member]
                mv, sv, tv = store.views[j]
                if st.get("momentum_buffer") is not mv or st.get("step") is not tv:
                    return True
                if sv is not None and st.get("second_moment") is not sv:
                    return True
        return False

    def bind(self, states: Sequence[State], views: Sequence[torch.Tensor]) -> None:
        """Make every member's state entries views into this group's stacks: new stacks (zeros, or copies of
        state made elsewhere) when any entry is not the view handed out before. Whole-matrix NorMuon ``S`` of the
        distributed modes, and the state of loose members, stay per parameter (initialized when missing)."""
        for i, st in enumerate(states):
            if self.spec.normuon and not self._stacked_second and "second_moment" not in st:
                shape = normuon_state_shape(self.full_shapes[i], self.spec)  # S of the whole matrix
                st["second_moment"] = torch.zeros(shape, dtype=self.dtypes[i], device=views[i].device)
            if i in self.loose and "momentum_buffer" not in st:
                st.update({k: v for k, v in init_muon_state(views[i], self.spec).items() if k not in st})
        if not self._fresh(states):
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
        lr_u = lane.scale * lr
        dec = None
        if decay_stages(self.spec, lam)[1]:
            dec = torch.as_tensor(decay_lr(lr, lr_u, self.spec), dtype=torch.float64, device=lr_u.device) * lam
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

    def _keeps(self, grads: Sequence[torch.Tensor | None], keep: torch.Tensor | None) -> list[torch.Tensor | None]:
        """Per lane, whether each slot steps (bool ``[S, 1, 1]`` on the lane's device), or None: all of them."""
        missing = [g is None for g in grads]
        out: list[torch.Tensor | None] = []
        for lane in self.lanes:
            kp: torch.Tensor | None = None
            if keep is not None:
                kp = keep.to(lane.steps.device).index_select(0, lane.slot_params)
            if any(missing[m] for m in lane.param_of_slot):
                present = torch.tensor([not missing[m] for m in lane.param_of_slot], device=lane.steps.device)
                kp = present if kp is None else kp & present
            out.append(None if kp is None else kp.view(-1, 1, 1))
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
        self.bind(states, views)
        spec = self.spec
        keeps = self._keeps(grads, keep)
        coupled, _ = decay_stages(spec, weight_decay)
        work: list[_Work] = []
        for lane, kp, coef in zip(self.lanes, keeps, self._all_coefs(lr, weight_decay, keeps), strict=True):
            lane.steps.add_(1.0 if kp is None else kp.view(-1))
            skip = None if kp is None else Skip.of(kp, spec, momentum, lane.dtype)
            for i, off in zip(lane.buckets, lane.offsets, strict=True):
                for chunk in self.buckets[i].chunks:
                    a, b = off + chunk.start, off + chunk.stop
                    rows = None if skip is None else skip.rows(a, b)
                    work.append(_Work(self.buckets[i], self.stores[i], chunk, _coef_rows(coef, a, b), rows))
        if self.loose:
            self._advance_loose(states, grads, keep)
        for unit in self._units(work):
            ns = [self._momentum(w, views, grads, momentum, weight_decay, coupled, backend) for w in unit]
            if self.distributed == "none":  # stages 3-4 here, on this chunk
                (w,) = unit
                n, owned = ns.pop()
                selected = None
                if spec.dion2_fraction is not None:  # Orth on the selected slices only (distributed: below)
                    full = n.shape
                    decay = momentum if w.skip is None or w.skip.feedback is None else w.skip.feedback
                    n, selected = dion2_select_(n, self._dion2_grad.pop(), decay, spec.dion2_fraction, spec.normuon)
                    owned = True
                if self.around.equilibrate is not None:
                    n, owned = self.around.before(n), True
                extra = self._normuon_inputs(w, n)  # before Orth: NAMO's alpha reads ||N||_F of its input
                kept = None if self.around.magnitude is None else n  # the magnitude rule reads N after Orth
                box = [n]
                del n  # handed over whole: the orthogonalizer frees it once it has its own normalized copy
                o = self.around.after(kept, self.orth(box, backend, owned and kept is None), w.bucket.dtype)
                del kept
                second = w.store.second
                if second is not None:
                    a, b = w.chunk.start, w.chunk.stop
                    weight = None if w.skip is None else w.skip.second
                    o = o.to(second.dtype)  # rebinding frees a bf16 O before NorMuon's work begins
                    steps = extra.get("steps")
                    if selected is None:
                        o = normuon_normalize_(
                            o,
                            second[a:b],
                            spec,
                            reduce=w.bucket.reduce,
                            weight=weight,
                            steps=steps,
                            statistic=extra.get("statistic"),
                            input_norm=extra.get("input_norm"),
                            overwrite=True,
                        )
                    else:  # NorDion2: the statistic of the selected rows alone is updated and applied
                        at = selected.unsqueeze(-1)
                        s_sel = torch.gather(second[a:b], -2, at)
                        o = normuon_normalize_(o, s_sel, spec, reduce=(-1,), weight=weight, steps=steps, overwrite=True)
                        second[a:b].scatter_(-2, at, s_sel)
                if selected is not None:
                    o = dion2_scatter(o, selected, full, rows=spec.normuon)
                outs = [o]
                del o
            else:  # stages 3-4 on owner ranks, whole matrices only (docs/distributed.md)
                inputs = [n for n, _ in ns]
                picks: list[tuple[torch.Tensor, torch.Size]] = []
                if spec.dion2_fraction is not None:
                    for i, w in enumerate(unit):
                        g = self._dion2_grad.pop(0)
                        if self.distributed != "replicated":  # no rank holds the whole M + G: its owner selects
                            inputs[i] = inputs[i].add_(g)
                            continue
                        full = inputs[i].shape  # every rank selects the same slices
                        decay = momentum if w.skip is None or w.skip.feedback is None else w.skip.feedback
                        inputs[i], pick = dion2_select_(inputs[i], g, decay, spec.dion2_fraction, spec.normuon)
                        picks.append((pick, full))
                outs = self._exchange(unit, inputs, states, grads, keep, backend, [p for p, _ in picks], momentum)
                if picks:
                    outs = [
                        dion2_scatter(o, pick, full, rows=spec.normuon)
                        for o, (pick, full) in zip(outs, picks, strict=True)
                    ]
            del ns
            if self._sphere_on_owners:
                self._sphere_owned(unit, views, states, outs, grads, keep, lr, weight_decay)
                continue
            for w in unit:  # popped: no update outlives its apply
                self._apply(w, views, outs.pop(0))

    def _normuon_inputs(self, w: _Work, n: torch.Tensor) -> dict[str, torch.Tensor]:
        """NorMuon's per-matrix inputs of chunk ``w`` with orthogonalizer input ``n``, by `normuon_normalize_`'s
        keyword, each ``[C, 1, 1]``: NAMO's raw-gradient ``statistic`` (taken in stage 1) and ``input_norm``
        (``||N||_F``), the bias correction's ``steps``; only those the spec reads."""
        out: dict[str, torch.Tensor] = {}
        if self._grad_stats:
            out["statistic"] = self._grad_stats.pop(0)
        if self._reads_input_norm:
            out["input_norm"] = torch.linalg.vector_norm(n, dim=(-2, -1), keepdim=True)
        if self.spec.normuon and self.spec.normuon_bias_correction:
            out["steps"] = w.store.steps.view(-1, 1, 1)[w.chunk.start : w.chunk.stop]
        return out

    def _units(self, work: list[_Work]) -> Iterator[list[_Work]]:
        """One chunk at a time on one process; the whole group at once when stages 3-4 are exchanged."""
        if self.distributed != "none":
            yield work
            return
        for w in work:
            yield [w]

    def _momentum(
        self,
        w: _Work,
        views: Sequence[torch.Tensor],
        grads: Sequence[torch.Tensor | None],
        beta: float,
        lam: float,
        coupled: bool,
        backend: Backend,
    ) -> tuple[torch.Tensor, bool]:
        """Stages 1-2 of a chunk: ``N`` (``[C, m, n]``, state dtype) and whether it is the step's own tensor (not
        the momentum buffer itself). ``G`` is gathered in the state dtype, ``lambda W`` added (coupled decay),
        zeroed for skipped matrices, whose buffer then stays unchanged bit for bit."""
        a, b = w.chunk.start, w.chunk.stop
        buf = w.store.momentum[a:b]
        g = gather(self._grad_pieces(w.chunk, grads, views), buf.dtype)
        if coupled:
            targets = self._matrix_pieces(w.chunk, views)
            torch._foreach_add_(list(torch.split(g, [t.shape[0] for t in targets])), targets, alpha=lam)
        if w.skip is not None:
            g.masked_fill_(w.skip.skip, 0.0)
        if self.spec.normuon and self.spec.normuon_input == "gradient":  # NAMO: G's statistic before G is consumed
            assert w.bucket.reduce is not None  # distributed: G itself, whose whole matrix only the owner sees
            self._grad_stats.append(gradient_statistic(g, w.bucket.reduce) if self.distributed == "none" else g.clone())
        if self.spec.dion2_fraction is not None:  # the step's selection adds G itself (`dion2_select_`)
            self._dion2_grad.append(g)
            return buf, False
        if w.skip is None and self.spec.momentum_form != "optax" and route(backend, buf.device, buf.dtype):
            from .kernels import elementwise

            n = elementwise.fused_momentum(buf, g, beta=beta, form=self.spec.momentum_form, nesterov=self.spec.nesterov)
        else:
            steps = w.store.steps.view(-1, 1, 1)[a:b] if self.spec.momentum_form == "optax" else None
            weight = None if w.skip is None else w.skip.momentum
            n = momentum_(buf, g, self.spec.momentum_form, beta, self.spec.nesterov, steps=steps, weight=weight)
        return n, n is not buf

    def _exchange(
        self,
        unit: list[_Work],
        ns: list[torch.Tensor],
        states: Sequence[State],
        grads: Sequence[torch.Tensor | None],
        keep: torch.Tensor | None,
        backend: Backend,
        picks: list[torch.Tensor],
        beta: float,
    ) -> list[torch.Tensor]:
        """Stages 3-4 of the whole group through `muon_directions`: every parameter's ``N`` in parameter order (the
        same list on every rank), the results cut back into the unit's stacks. NorMuon's per-matrix inputs go along
        per parameter: the bias correction's step count, NAMO's raw gradient. Dion2: ``picks`` (``"replicated"``)
        are the slices each rank selected itself from its full ``N``, and the owners update only the selected rows'
        ``S`` (NorDion2), scattered back on every rank; with shards the owners select (``N`` is ``M + G``) and every
        rank applies the error feedback (``beta``) to its own buffer from the indices they share."""
        spec = self.spec
        owner_selects = spec.dion2_fraction is not None and self.distributed != "replicated"
        parts: list[torch.Tensor | None] = [None] * len(self.shapes)
        steps: list[torch.Tensor | None] = [None] * len(self.shapes)
        namo: list[torch.Tensor | None] = [None] * len(self.shapes)
        rows: dict[int, torch.Tensor] = {}  # NorDion2 under "replicated": member -> its selected rows, [count, k]
        for j, (w, n) in enumerate(zip(unit, ns, strict=True)):
            g = self._grad_stats.pop(0) if self._grad_stats else None
            for pc in w.chunk.pieces:
                first = pc.slot - w.chunk.start
                steps[pc.member] = w.store.steps.view(-1, 1, 1)[pc.slot : pc.slot + 1]  # one count per parameter
                piece = n[first : first + pc.count]
                if g is not None:
                    namo[pc.member] = g[first : first + pc.count].view(self.shapes[pc.member])
                if spec.dion2_fraction is None or owner_selects:
                    parts[pc.member] = piece.view(self.shapes[pc.member])
                else:  # Dion2: the selected slices of its matrices, as one matrix or a batch
                    parts[pc.member] = piece.view(*self.mats[pc.member][:1], *piece.shape[-2:]).squeeze(0)
                    if picks:
                        rows[pc.member] = picks[j][first : first + pc.count]
        for i in self.loose:  # nothing of this parameter is on this rank: empty, of its (local) shape
            parts[i] = states[i]["momentum_buffer"]
            steps[i] = states[i]["step"].view(1, 1, 1)
            namo[i] = torch.zeros_like(states[i]["momentum_buffer"])
        assert all(p is not None for p in parts)
        moments = weights = None
        if spec.normuon:
            moments = [st["second_moment"] for st in states]
            weights = [self._second_weight(i, grads, keep) for i in range(len(states))]
            for i, at in rows.items():  # the selected rows' S, updated on the owner and shared like a whole S
                part = parts[i]
                assert part is not None
                full_s = moments[i].view(self.mats[i][0], -1, 1)
                moments[i] = torch.gather(full_s, -2, at.unsqueeze(-1)).view(*part.shape[:-1], 1)
        selections: dict[int, torch.Tensor] | None = {} if owner_selects else None
        done = muon_directions(
            [p for p in parts if p is not None],  # all of them (asserted above)
            spec,
            mode=self.distributed,
            second_moments=moments,
            second_weights=weights,
            normuon_inputs={"steps": [t for t in steps if t is not None]} if spec.normuon_bias_correction else None,
            gradients=[t for t in namo if t is not None] if self._namo else None,
            selections=selections,
            full_shapes=None if self.distributed == "replicated" else self.full_shapes,
            group=self.process_group,
            backend=backend,
        )
        for i, at in rows.items():
            if moments is not None:  # every rank holds the owner's updated rows now (sync_from_owners)
                full_s = states[i]["second_moment"].view(self.mats[i][0], -1, 1)
                full_s.scatter_(-2, at.unsqueeze(-1), moments[i].view(*at.shape, 1))
        for i, index in (selections or {}).items():
            self._feedback(i, index, states[i]["momentum_buffer"], beta, grads, keep)
        outs = []
        for w in unit:
            pieces = [
                self._as_stack(done[pc.member], pc.member)[pc.first : pc.first + pc.count] for pc in w.chunk.pieces
            ]
            outs.append(pieces[0] if len(pieces) == 1 else torch.cat(pieces))
        return outs

    def _feedback(
        self,
        i: int,
        index: torch.Tensor,
        buf: torch.Tensor,
        beta: float,
        grads: Sequence[torch.Tensor | None],
        keep: torch.Tensor | None,
    ) -> None:
        """Dion2's error feedback on this rank's part of parameter ``i``'s buffer, from the whole matrix's selection
        ``index``: a whole-matrix factor (``beta`` at the selection, 1 elsewhere; 1 everywhere for a skipped
        parameter) of which this rank takes its dim-0 shard, so no layout is inferred."""
        if grads[i] is None:
            return
        world, rank = world_of(self.process_group)
        view = matrix_view_shape(self.full_shapes[i], self.spec, f"params[{i}]")
        factor = torch.ones((index.shape[0], *view[-2:]), dtype=wide_dtype(buf.dtype), device=buf.device)
        kp = None if keep is None else keep[i].view(1, 1, 1)
        dion2_feedback_(factor, index, dion2_decay(beta, kp, factor.dtype), rows=self.spec.normuon)
        buf.mul_(local_shard(factor.view(self.full_shapes[i]), world, rank).view(buf.shape))

    def _as_stack(self, t: torch.Tensor, member: int) -> torch.Tensor:
        """A member's exchanged result as ``[k, m, n]`` (Dion2 under "replicated": its selected slices, ``[k, ., .]``
        as they came)."""
        if self.spec.dion2_fraction is None or self.distributed != "replicated":
            return t.reshape(self.mats[member])
        return t.reshape(self.mats[member][0], *t.shape[-2:])

    def _second_weight(
        self, i: int, grads: Sequence[torch.Tensor | None], keep: torch.Tensor | None
    ) -> torch.Tensor | float | None:
        """NorMuon's ``S`` lerp weight of parameter ``i``: ``1 - beta2``, or 0 when it is skipped."""
        if grads[i] is None:
            return 0.0
        if keep is None:
            return None
        return keep[i].to(self.dtypes[i]) * (1.0 - self.spec.beta2)

    def _advance_loose(
        self, states: Sequence[State], grads: Sequence[torch.Tensor | None], keep: torch.Tensor | None
    ) -> None:
        """Count the step of members without a stack slot as the stacks count theirs."""
        for i in self.loose:
            step = states[i]["step"]
            if grads[i] is None:
                continue
            step.add_(1.0 if keep is None else keep[i].to(step.dtype))

    def _apply(self, w: _Work, views: Sequence[torch.Tensor], o: torch.Tensor) -> None:
        """Stages 5-8 of a chunk: the update ``O`` applied to its parameters, in place."""
        targets = self._pieces(w.chunk, views)
        counts = [pc.count for pc in w.chunk.pieces]
        if self.spec.sphere == "none":
            apply_stack_(targets, o, counts, w.coef, self.spec.cautious, w.bucket.dtype)
            return
        # the whole chunk as one [C, m, n] stack in the arithmetic dtype: one copy in, one foreach copy out; the
        # step D = -eta_u O is written into O (consumed) and the new W into D's storage
        dt = w.bucket.dtype
        eta = w.coef.lr_update
        d = contiguous_as(o, dt).mul_(-eta)  # O may be a transposed view: copied, and let go before W's copy
        del o
        wf = gather(self._matrix_pieces(w.chunk, views), dt)
        retain = w.coef.retain  # decoupled decay before the step (a fixed-radius hyperball, NeMo MuonHyperball)
        if retain is not None:  # a skipped matrix's retain factor is 1: it stays as it was
            wf.mul_(retain)
        new = sphere_step(wf, d, self.spec, eta, overwrite=True)
        if w.skip is not None:  # a skipped matrix is written back as it was (x 1 + 0, x 0 + W: exact)
            new = new.mul_(w.skip.keep).addcmul_(wf, w.skip.skip)
        torch._foreach_copy_(targets, [n.view(t.shape) for n, t in zip(torch.split(new, counts), targets, strict=True)])

    def _sphere_owned(
        self,
        unit: list[_Work],
        views: Sequence[torch.Tensor],
        states: Sequence[State],
        outs: list[torch.Tensor],
        grads: Sequence[torch.Tensor | None],
        keep: torch.Tensor | None,
        lr: Scalar,
        lam: float,
    ) -> None:
        """Stages 5-8 of a sharded group whose sphere vectors span ranks: every parameter's owner takes its whole
        ``O`` and ``W`` (`muonlab.fast.distributed.on_owners`), steps it as `_apply` steps a stack on one process
        (the same ops, so the same bits), and every rank copies its rows of the new ``W`` into its shard. The
        per-parameter ``eta_u``, ``1 - eta_d lambda`` and skip flag are formed as `_coefs` forms them per slot."""
        spec = self.spec
        count = len(self.shapes)
        ups: list[torch.Tensor | None] = [None] * count
        for w, o in zip(unit, outs, strict=True):
            for pc in w.chunk.pieces:
                first = pc.slot - w.chunk.start
                ups[pc.member] = o[first : first + pc.count].view(self.shapes[pc.member])
        outs.clear()
        for i in self.loose:  # an empty shard of O, in the state dtype
            ups[i] = torch.zeros_like(states[i]["momentum_buffer"])
        dev = views[0].device
        present = torch.tensor([g is not None for g in grads], device=dev)
        kp = present if keep is None else keep.to(dev) & present
        lr_u = torch.tensor([update_scale(s, spec) for s in self.full_shapes], dtype=torch.float64, device=dev) * lr
        dec = None
        if decay_stages(spec, lam)[1]:
            dec = torch.as_tensor(decay_lr(lr, lr_u, spec), dtype=torch.float64, device=dev) * lam * kp
        coef = coefficients(lr_u * kp, dec, torch.float64)  # rounded once, per parameter, below

        def step(i: int, wholes: list[torch.Tensor]) -> torch.Tensor:
            o, weight = wholes
            dt = self.dtypes[i]
            eta = coef.lr_update[i].to(dt)
            d = contiguous_as(o, dt).mul_(-eta)
            wf = weight.to(dt, copy=True)
            if coef.retain is not None:  # a skipped parameter's retain factor is 1
                wf.mul_(coef.retain[i].to(dt))
            new = sphere_step(wf, d, spec, eta, overwrite=True)
            return new.mul_(kp[i]).addcmul_(wf, ~kp[i])  # a skipped parameter as it was (exact)

        done = on_owners(
            [[u for u in ups if u is not None], list(views)],
            self.full_shapes,
            step,
            dtypes=[v.dtype for v in views],
            mode="sharded" if self.distributed == "sharded" else "gathered",
            group=self.process_group,
        )
        torch._foreach_copy_(list(views), done)

    def _pieces(self, chunk: Chunk, views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The chunk's parameter pieces, views of the parameters to write: ``[count, m, n]``, or a strided member's
        whole view (its one matrix in its own shape)."""
        return [
            views[pc.member]
            if self.strided[pc.member]
            else matrices_of(views[pc.member], self.spec, f"params[{pc.member}]")[pc.first : pc.first + pc.count]
            for pc in chunk.pieces
        ]

    def _matrix_pieces(self, chunk: Chunk, views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """`_pieces` as ``[count, m, n]`` to read (a strided member's by copy)."""
        return [
            t.reshape(pc.count, *self.mats[pc.member][1:])
            for t, pc in zip(self._pieces(chunk, views), chunk.pieces, strict=True)
        ]

    def _grad_pieces(
        self, chunk: Chunk, grads: Sequence[torch.Tensor | None], views: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        out = []
        for pc in chunk.pieces:
            g = grads[pc.member]
            if g is None:
                _, m, n = self.mats[pc.member]
                v = views[pc.member]
                out.append(torch.zeros((pc.count, m, n), dtype=v.dtype, device=v.device))
            elif self.strided[pc.member]:
                out.append(g.reshape(self.mats[pc.member]))  # one matrix: a copy, which gather copies once more
            else:
                mats, _ = as_matrices(g, self.spec, f"grads[{pc.member}]")
                out.append(mats[pc.first : pc.first + pc.count])
        return out
