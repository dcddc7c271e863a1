"""`Muon`: a drop-in ``torch.optim.Optimizer`` for every variant of the family (one `MuonSpec` per group).

Param groups carry ``"algorithm"`` (``"muon"`` default, or ``"adamw"`` for embeddings, heads, norms,
biases and scalars), ``"spec"`` (a preset name or `MuonSpec`; default the optimizer's), ``"lr"`` and the
live hyperparameters a scheduler may change: ``"momentum"``, ``"weight_decay"`` (Muon) and ``"betas"``,
``"eps"``, ``"weight_decay"`` (AdamW). ``lr`` may be a float or a 0-D tensor.

Policies (docs/variants.md "Decisions"): ``p.grad`` is never written (A10); a ``None`` gradient skips its
parameter, state untouched (A9); non-finite gradients are found by one batched check before any state
changes and either raise a `ValueError` naming the parameter or skip it (``spec.nonfinite``).
State (`muonlab.fast.state`) is float32 for bf16/fp16 parameters and survives ``state_dict`` round trips
with its dtype, so a resumed run is bit-identical.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch.optim import Optimizer

from muonlab.contract import MuonSpec, RowSplit, block_shapes, resolve_spec

from .adamw import adamw_step_
from .backend import Backend, check_backend, warn_if_slow_compute
from .distributed import DistributedMode
from .layout import (
    MatrixDims,
    check_group_heads,
    check_group_matrix_dims,
    check_group_split,
    matrix_shape,
    matrix_view,
    row_blocks,
)
from .peers import from_peer
from .pipeline import GroupStacks
from .state import state_dtype

__all__ = ["Muon"]

_ALGORITHMS = ("muon", "adamw")
_MODES: tuple[DistributedMode, ...] = ("none", "replicated", "sharded", "gathered")


def _is_dtensor(x: object) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(x, DTensor)


def _local(x: torch.Tensor) -> torch.Tensor:
    """The rank-local tensor of a DTensor (shares its storage), else ``x``."""
    return cast(torch.Tensor, x.to_local()) if _is_dtensor(x) else x  # type: ignore[attr-defined]


_SHARD_LIKE = frozenset({"momentum_buffer", "exp_avg", "exp_avg_sq"})
"""State entries laid out like their parameter: a DTensor parameter's rank holds its shard of each (the step keeps
plain local tensors). ``"step"`` and NorMuon's ``"second_moment"`` are whole and identical on every rank."""


def _as_dtensor(value: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """This rank's shard ``value`` of a state entry as a DTensor with ``p``'s mesh, placements and global shape,
    over a copy: the live entry is a view into the group's stack, and torch.save cannot pickle a DTensor whose
    local tensor starts inside a shared storage."""
    from torch.distributed.tensor import DTensor

    dt = cast(Any, p)
    local = value.clone(memory_format=torch.contiguous_format)
    return cast(
        torch.Tensor,
        DTensor.from_local(local, dt.device_mesh, dt.placements, run_check=False, shape=p.shape, stride=p.stride()),
    )


def _local_state(value: torch.Tensor, p: torch.Tensor, name: str) -> torch.Tensor:
    """This rank's shard of a saved state entry for DTensor ``p``: a DTensor's local part (redistributed to ``p``'s
    placements), a full tensor's rows of this rank, or (per-rank checkpoints) the shard itself."""
    dt = cast(Any, p)
    local = dt.to_local()
    if _is_dtensor(value):
        value = cast(Any, value).redistribute(dt.device_mesh, dt.placements).to_local()
    elif value.shape == p.shape and value.shape != local.shape:
        from .distributed import local_shard

        mesh = dt.device_mesh
        value = local_shard(value, mesh.size(), mesh.get_local_rank())
    if value.shape != local.shape:
        raise ValueError(
            f"{name}: shape {tuple(value.shape)} is neither this rank's shard {tuple(local.shape)} "
            f"nor the parameter's {tuple(p.shape)}"
        )
    return value.to(device=local.device, copy=True)


def _check_lr(lr: object, name: str) -> float | torch.Tensor:
    if isinstance(lr, torch.Tensor):
        if lr.ndim != 0 or not lr.is_floating_point():
            raise ValueError(
                f"{name}: a tensor learning rate must be a 0-D floating tensor, got {tuple(lr.shape)} {lr.dtype}"
            )
        return lr
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise ValueError(f"{name}: expected a real number or a 0-D tensor, got {lr!r}")
    v = float(lr)
    if not v >= 0.0 or v == float("inf"):
        raise ValueError(f"{name}: must be finite and >= 0, got {lr!r}")
    return v


def _norms(grads: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of each gradient (one multi-tensor op), accumulated in float32 (float64 for float64): NaN or
    inf when the gradient holds a NaN or an Inf. A finite gradient whose sum of squares overflows (entries
    near 1e19 in float32 / bfloat16) also reads inf (docs/fast.md "Non-finite gradients"). The 2-norm is
    used because the inf-norm is many times slower on CPU."""
    dtype = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
    norms = torch._foreach_norm(grads, 2.0, dtype=dtype)
    home = grads[0].device
    return torch.stack([n if n.device == home else n.to(home) for n in norms])  # device-to-device, no sync


def _agree(flags: list[torch.Tensor | None], group: Any) -> None:
    """Make ``flags`` (per group, bools per gradient) the AND over the ranks of ``group``, in place: one
    ``all_reduce`` of all of them, on the device (no host sync)."""
    import torch.distributed as dist

    live = [f for f in flags if f is not None]
    if not live:
        return
    both = torch.cat([f.to(live[0].device, torch.int32) for f in live])
    dist.all_reduce(both, op=dist.ReduceOp.MIN, group=group)
    parts = iter(torch.split(both, [f.numel() for f in live]))
    for i, f in enumerate(flags):
        if f is not None:
            flags[i] = next(parts).to(f.device, torch.bool)


def _layouts(group: dict[str, Any]) -> list[tuple[MatrixDims, int | None]]:
    """Each parameter's ``(matrix_dims, heads)`` in a Muon group (`muonlab.fast.layout`)."""
    n = len(group["params"])
    return list(zip(group.get("matrix_dims") or [None] * n, group.get("heads") or [None] * n, strict=True))


class _BlockState(MutableMapping[str, Any]):
    """The state of block ``j`` of a row-split parameter: its entries live in the parameter's state dict as
    ``"<key>.<j>"`` (``"momentum_buffer.1"``), so ``state_dict`` saves them as usual."""

    def __init__(self, parent: dict[str, Any], j: int) -> None:
        self.parent, self.suffix = parent, f".{j}"

    def __getitem__(self, key: str) -> Any:
        return self.parent[key + self.suffix]

    def __setitem__(self, key: str, value: Any) -> None:
        self.parent[key + self.suffix] = value

    def __delitem__(self, key: str) -> None:
        del self.parent[key + self.suffix]

    def __iter__(self) -> Iterator[str]:
        return (k[: -len(self.suffix)] for k in list(self.parent) if k.endswith(self.suffix))

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclass(frozen=True)
class _Members:
    """A Muon group's step members: its parameters' matrix views, each row-split parameter as its blocks."""

    views: list[torch.Tensor]
    grads: list[torch.Tensor | None]
    states: list[MutableMapping[str, Any]]
    shapes: list[tuple[int, ...]]
    owner: list[int]
    """The parameter index of each member."""


def _members(
    group: dict[str, Any], views: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None], states: Sequence[Any]
) -> _Members:
    splits: list[RowSplit | None] = group.get("split") or [None] * len(views)
    out = _Members([], [], [], [], [])
    for i, (v, g, st, split) in enumerate(zip(views, grads, states, splits, strict=True)):
        if split is None:
            out.views.append(v)
            out.grads.append(g)
            out.states.append(st)
            out.shapes.append(tuple(v.shape))
            out.owner.append(i)
            continue
        gb = [None] * len(split.sizes) if g is None else row_blocks(g, split)
        for j, (vb, gj, shape) in enumerate(
            zip(row_blocks(v, split), gb, block_shapes(split, v.shape[-1]), strict=True)
        ):
            out.views.append(vb)
            out.grads.append(gj)
            out.states.append(_BlockState(st, j))
            out.shapes.append(shape)
            out.owner.append(i)
    return out


def _spec(group: dict[str, Any]) -> MuonSpec:
    return cast(MuonSpec, group["spec"])


def _spread(finite: torch.Tensor, grads: list[torch.Tensor | None]) -> torch.Tensor:
    """``finite`` (one entry per present gradient) spread to one entry per parameter (True where absent)."""
    present = [i for i, g in enumerate(grads) if g is not None]
    out = torch.ones(len(grads), dtype=torch.bool, device=finite.device)
    out[present] = finite
    return out


def _spec_to_dict(spec: MuonSpec) -> dict[str, Any]:
    return dataclasses.asdict(spec)


def _spec_from(value: object, name: str) -> MuonSpec:
    if isinstance(value, MuonSpec):
        return value
    if isinstance(value, str):
        return resolve_spec(value)
    if isinstance(value, dict):
        fields = dict(value)
        for key in ("adam_betas",):
            if key in fields and isinstance(fields[key], list):
                fields[key] = tuple(fields[key])
        coeffs = fields.get("ns_coefficients")
        if isinstance(coeffs, (list, tuple)):
            fields["ns_coefficients"] = tuple(tuple(float(c) for c in t) for t in coeffs)
        return MuonSpec().replace(**fields)
    raise ValueError(f"{name}: expected a preset name or a MuonSpec, got {type(value).__name__}")


class Muon(Optimizer):
    """Muon for matrix parameters (``ndim >= 2``) with AdamW groups for the rest.

    ``Muon(params, preset="keller", lr=None, *, backend="auto", **overrides)``: ``preset`` is a preset name
    (`muonlab.reference.PRESETS`) or a `MuonSpec`; ``overrides`` are `MuonSpec` field names (unknown names
    raise `ValueError` naming them); ``lr=None`` uses ``spec.lr``. ``backend``: ``"auto"``, ``"torch"`` or
    ``"triton"``, decided per stack by `muonlab.fast.backend.route` (docs/fast.md "Speed").
    ``max_stack_bytes`` caps the state bytes of a stack computed at once (None: half the state bytes of all
    Muon parameters), which bounds the step's transient memory. A Muon group may carry ``"matrix_dims"``, a
    list parallel to its params of None or ``(row_dim, col_dim)`` (`muonlab.fast.layout`): the step, its
    state and its shape rules see ``matrix_view(p, dims)``; and ``"heads"``, a list of None or head counts: each
    matrix's rows are split into that many blocks, each orthogonalized and scaled on its own (per-head Muon).

    ``distributed`` (docs/distributed.md) splits orthogonalization and NorMuon over the ranks of
    ``process_group`` (default: the world, or the DTensor mesh's group): ``"replicated"`` under DDP (plain
    full parameters, identical gradients after DDP's all-reduce), ``"sharded"`` under FSDP2 (``Shard(0)``
    DTensor parameters; each owner rank orthogonalizes whole matrices), ``"gathered"`` (same input as
    ``"sharded"``, every rank computes everything). ``"none"`` is the single-process optimizer. Every rank
    must construct the optimizer with the same parameters and call ``step`` together.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        preset: str | MuonSpec = "keller",
        lr: float | torch.Tensor | None = None,
        *,
        backend: Backend = "auto",
        distributed: DistributedMode = "none",
        process_group: Any = None,
        max_stack_bytes: int | None = None,
        **overrides: Any,
    ) -> None:
        if max_stack_bytes is not None and (
            isinstance(max_stack_bytes, bool) or not isinstance(max_stack_bytes, int) or max_stack_bytes < 1
        ):
            raise ValueError(f"max_stack_bytes: expected a positive int (bytes) or None, got {max_stack_bytes!r}")
        self.max_stack_bytes: int | None = max_stack_bytes
        self._stacks: dict[int, tuple[tuple[int, ...], GroupStacks]] = {}
        self._dtypes: list[list[torch.dtype]] = []  # per group, each parameter's dtype when it was added
        if not isinstance(distributed, str) or distributed not in _MODES:
            raise ValueError(f"distributed: expected one of {', '.join(map(repr, _MODES))}, got {distributed!r}")
        if distributed == "none" and process_group is not None:
            raise ValueError("process_group: only used with distributed='replicated', 'sharded' or 'gathered'")
        self.spec: MuonSpec = resolve_spec(preset, **overrides)
        self.distributed: DistributedMode = distributed
        self.process_group: Any = process_group
        self.backend: Backend = check_backend(backend)
        self._explicit_lr = lr is not None
        base_lr = _check_lr(self.spec.lr if lr is None else lr, "lr")
        defaults: dict[str, Any] = {"lr": base_lr, "algorithm": "muon"}
        super().__init__(params, defaults)

    # -- param groups ---------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Fill a group's defaults per its ``"algorithm"`` and validate it (Muon params need ``ndim >= 2``)."""
        index = len(self.param_groups)
        group = dict(param_group)
        algorithm = group.get("algorithm", "muon")
        if algorithm not in _ALGORITHMS:
            raise ValueError(f"param_groups[{index}]['algorithm']: expected 'muon' or 'adamw', got {algorithm!r}")
        group["algorithm"] = algorithm
        spec = _spec_from(group.get("spec", self.spec), f"param_groups[{index}]['spec']")
        group["spec"] = spec
        base_lr: float | torch.Tensor = (
            self.defaults["lr"] if self._explicit_lr or "spec" not in param_group else spec.lr
        )
        if algorithm == "muon":
            group["lr"] = _check_lr(group.get("lr", base_lr), f"param_groups[{index}]['lr']")
            group.setdefault("momentum", spec.momentum)
            group.setdefault("weight_decay", spec.weight_decay)
        else:
            eta = base_lr if spec.adam_lr is None else spec.adam_lr
            lam = spec.weight_decay if spec.adam_weight_decay is None else spec.adam_weight_decay
            group["lr"] = _check_lr(group.get("lr", eta), f"param_groups[{index}]['lr']")
            group.setdefault("betas", spec.adam_betas)
            group.setdefault("eps", spec.adam_eps)
            group.setdefault("weight_decay", lam)
        params = group["params"]
        plist = [params] if isinstance(params, torch.Tensor) else list(params)
        for j, p in enumerate(plist):
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"param_groups[{index}]['params'][{j}]: expected a tensor, got {type(p).__name__}")
            if algorithm == "muon" and p.ndim < 2:
                raise ValueError(
                    f"param_groups[{index}]['params'][{j}] has shape {tuple(p.shape)}: Muon needs ndim >= 2 "
                    f"(route it to an 'adamw' group, e.g. with muonlab.fast.partition_params)"
                )
            if p.is_complex():
                raise ValueError(f"param_groups[{index}]['params'][{j}]: complex parameters are not supported")
            if algorithm == "muon":
                if p.numel() == 0:  # the global shape for a DTensor: an empty local shard is fine
                    raise ValueError(
                        f"param_groups[{index}]['params'][{j}] has shape {tuple(p.shape)}: a zero-size matrix has "
                        f"nothing to orthogonalize (drop it from the optimizer's parameters)"
                    )
                self._check_layout(p, f"param_groups[{index}]['params'][{j}]")
                warn_if_slow_compute(_local(p).device, spec.compute_dtype)
        group["params"] = plist
        if "matrix_dims" in group:
            name = f"param_groups[{index}]['matrix_dims']"
            if algorithm != "muon":
                raise ValueError(f"{name}: only Muon groups have matrix dims (this group is {algorithm!r})")
            dims = check_group_matrix_dims(group["matrix_dims"], [tuple(p.shape) for p in plist], name)
            if self.distributed in ("sharded", "gathered") and any(d is not None and 0 in d for d in dims):
                raise ValueError(
                    f"{name}: with distributed={self.distributed!r} dim 0 is sharded and must stay a batch dim, "
                    f"got {dims!r}"
                )
            group["matrix_dims"] = dims
        if "heads" in group:
            name = f"param_groups[{index}]['heads']"
            if algorithm != "muon":
                raise ValueError(f"{name}: only Muon groups split matrices into heads (this group is {algorithm!r})")
            if self.distributed in ("sharded", "gathered"):
                raise ValueError(f"{name}: heads split the rows, which distributed={self.distributed!r} shards")
            mdims = group.get("matrix_dims") or [None] * len(plist)
            views = [matrix_shape(p.shape, d) for p, d in zip(plist, mdims, strict=True)]
            group["heads"] = check_group_heads(group["heads"], views, name)
        if "split" in group:
            name = f"param_groups[{index}]['split']"
            if algorithm != "muon":
                raise ValueError(f"{name}: only Muon groups split matrices (this group is {algorithm!r})")
            if self.distributed in ("sharded", "gathered"):
                raise ValueError(f"{name}: a split cuts the rows, which distributed={self.distributed!r} shards")
            mdims = group.get("matrix_dims") or [None] * len(plist)
            views = [matrix_shape(p.shape, d) for p, d in zip(plist, mdims, strict=True)]
            group["split"] = check_group_split(group["split"], views, name)
            heads = group.get("heads") or [None] * len(plist)
            both = [i for i, (h, sp) in enumerate(zip(heads, group["split"], strict=True)) if h and sp]
            if both:
                raise ValueError(f"{name}[{both[0]}]: a parameter takes 'heads' or 'split', not both")
        if isinstance(group["lr"], torch.Tensor) and plist and group["lr"].device != _local(plist[0]).device:
            # Once, here: schedulers fill this tensor in place, and the step reads it on the device.
            group["lr"] = group["lr"].to(_local(plist[0]).device)
        self._stacks.clear()
        super().add_param_group(group)
        self._dtypes.append([p.dtype for p in plist])

    def _check_layout(self, p: torch.Tensor, name: str) -> None:
        """Muon parameters match the mode: ``Shard(0)`` DTensors on a 1-D mesh for ``"sharded"`` /
        ``"gathered"``, plain tensors otherwise."""
        if self.distributed in ("sharded", "gathered"):
            from torch.distributed.tensor import Shard

            if not _is_dtensor(p):
                raise TypeError(
                    f"{name}: distributed={self.distributed!r} needs DTensor parameters sharded on dim 0 "
                    f"(FSDP2 fully_shard), got a plain {type(p).__name__}"
                )
            dt = cast(Any, p)
            if dt.device_mesh.ndim != 1 or tuple(dt.placements) != (Shard(0),):
                raise ValueError(
                    f"{name}: distributed={self.distributed!r} supports Shard(0) on a 1-D mesh, got placements "
                    f"{tuple(dt.placements)} on a {dt.device_mesh.ndim}-D mesh"
                )
        elif _is_dtensor(p):
            raise TypeError(
                f"{name}: a DTensor parameter needs distributed='sharded' or 'gathered', got {self.distributed!r}"
            )

    def _group_of(self, params: list[torch.Tensor]) -> Any:
        if self.process_group is not None or self.distributed not in ("sharded", "gathered"):
            return self.process_group
        return cast(Any, params[0]).device_mesh.get_group()

    # -- state dict -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch's state dict with each group's spec stored as a plain dict (loadable with weights_only). For
        DTensor (FSDP2) parameters the entries laid out like the parameter are DTensors of its placement
        (`_SHARD_LIKE`), so torch.distributed.checkpoint saves every rank's shard and can reshard them."""
        sd = super().state_dict()
        sd["param_groups"] = [
            {**g, "spec": _spec_to_dict(g["spec"]) if isinstance(g.get("spec"), MuonSpec) else g.get("spec")}
            for g in sd["param_groups"]
        ]
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, entry in list(sd["state"].items()):
            p = params[pid]
            if _is_dtensor(p):  # a new dict: torch's entries are the live state dicts
                sd["state"][pid] = {k: _as_dtensor(v, p) if k in _SHARD_LIKE else v for k, v in entry.items()}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's loader, keeping the saved state dtypes (torch would cast fp32 buffers to a bf16 param's
        dtype, which would break bit-identical resume). Also takes a ``torch.optim.Muon`` or KellerJordan/Muon
        state dict (`muonlab.fast.peers`)."""
        state_dict = from_peer(self.param_groups, state_dict) or state_dict  # torch.optim.Muon, Keller's
        groups = [
            {**g, "spec": _spec_from(g["spec"], f"state_dict['param_groups'][{i}]['spec']")}
            for i, g in enumerate(state_dict["param_groups"])
        ]
        sd = {**state_dict, "param_groups": groups}
        super().load_state_dict(sd)
        saved_ids = [pid for g in groups for pid in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(saved_ids, params, strict=True):
            saved = state_dict["state"].get(pid)
            if saved is None:
                continue
            for key, value in saved.items():
                if isinstance(value, torch.Tensor) and key in _SHARD_LIKE and _is_dtensor(p):
                    self.state[p][key] = _local_state(value, p, f"state_dict['state'][{pid}][{key!r}]")
                elif isinstance(value, torch.Tensor) and key != "step":
                    self.state[p][key] = value.to(device=p.device, copy=True)
                elif isinstance(value, torch.Tensor):
                    self.state[p][key] = value.clone()

    # -- step -------------------------------------------------------------------------------------------
    def _check_inputs(self) -> None:
        """What the step cannot take, found from metadata before anything changes (no host sync): sparse or
        meta-device gradients, a gradient whose shape or dtype is not its parameter's, and a parameter whose
        dtype changed since it was added (its stacks and state were made for the old one)."""
        for gi, (group, dtypes) in enumerate(zip(self.param_groups, self._dtypes, strict=True)):
            for pi, (p, dtype) in enumerate(zip(group["params"], dtypes, strict=True)):
                g = p.grad
                if g is None:
                    continue
                name = f"param_groups[{gi}]['params'][{pi}] (shape {tuple(p.shape)})"
                problem = None
                if g.layout != torch.strided:
                    problem = f"its gradient is {g.layout} (sparse); Muon and AdamW here need dense gradients"
                elif p.device.type == "meta" or g.device.type == "meta":
                    problem = "it lives on the meta device (no data): materialize the model before stepping"
                elif p.dtype != dtype:
                    problem = (
                        f"its dtype changed from {dtype} to {p.dtype} after it was given to the optimizer; build "
                        f"the optimizer after casting the model (state_dict() / load_state_dict() carry the state)"
                    )
                elif g.dtype != p.dtype or g.shape != p.shape:
                    problem = f"its gradient is {g.dtype} {tuple(g.shape)}, the parameter {p.dtype} {tuple(p.shape)}"
                if problem is not None:
                    raise ValueError(f"{name}: {problem}; no parameter or state was changed")

    def _finite_flags(self) -> list[torch.Tensor | None]:
        """Per group, a bool per parameter with a gradient (a device tensor): whether its gradient is finite
        (`_norms` below inf: NaN and Inf fail; an empty gradient passes); None for a group without gradients
        and for ``nonfinite="raise"`` groups, which are checked with one host sync for the whole step: a
        non-finite gradient raises before any parameter or state changes. With shards (``"sharded"``,
        ``"gathered"``) a rank sees only its rows, so one ``all_reduce`` makes every rank take the same decision
        (else a rank would be left waiting in a collective)."""
        flags: list[torch.Tensor | None] = []
        for group in self.param_groups:
            grads = [_local(p.grad) for p in group["params"] if p.grad is not None]
            if not grads:
                flags.append(None)
                continue
            full = [j for j, g in enumerate(grads) if g.numel() > 0]
            norms = _norms([grads[j] for j in full]) if full else None
            if norms is not None and len(full) == len(grads):
                flags.append(norms < float("inf"))
                continue
            ok = torch.ones(len(grads), dtype=torch.bool, device=grads[0].device)
            if norms is not None:
                ok[full] = norms < float("inf")
            flags.append(ok)
        if self.distributed in ("sharded", "gathered"):
            first = next(p for g in self.param_groups for p in g["params"])
            _agree(flags, self._group_of([first]))
        raising = [
            f for f, g in zip(flags, self.param_groups, strict=True) if f is not None and _spec(g).nonfinite == "raise"
        ]
        if raising:
            top = (
                raising[0].all()
                if len(raising) == 1
                else torch.stack([f.all().to(raising[0].device) for f in raising]).all()
            )
            if not bool(top):  # the one host sync of the step
                self._raise_nonfinite(flags)
        return [
            None if f is None or _spec(g).nonfinite == "raise" else f
            for f, g in zip(flags, self.param_groups, strict=True)
        ]

    def _raise_nonfinite(self, flags: list[torch.Tensor | None]) -> None:
        """Raise for the first non-finite gradient of a ``nonfinite="raise"`` group (the rare path: syncs)."""
        for gi, (group, ok) in enumerate(zip(self.param_groups, flags, strict=True)):
            if ok is None or _spec(group).nonfinite != "raise":
                continue
            present = [(pi, p) for pi, p in enumerate(group["params"]) if p.grad is not None]
            for (pi, p), fine in zip(present, ok.tolist(), strict=True):
                if fine:
                    continue
                g = _local(cast(torch.Tensor, p.grad))
                nan, inf = bool(g.isnan().any()), bool(g.isinf().any())
                kind = (
                    "NaN and Inf" if nan and inf else "NaN" if nan else "Inf" if inf else "NaN or Inf on another rank"
                )
                raise ValueError(
                    f"param_groups[{gi}]['params'][{pi}] (shape {tuple(g.shape)}): gradient contains {kind}; "
                    f"no parameter or state was changed (set nonfinite='skip' to skip such parameters)"
                )

    def _group_stacks(self, index: int, group: dict[str, Any], members: _Members) -> GroupStacks:
        """The group's cached `GroupStacks` (planned on first use, again if its parameters change)."""
        params = group["params"]
        key = tuple(id(p) for p in params)
        cached = self._stacks.get(index)
        if cached is not None and cached[0] == key:
            return cached[1]
        # the global matrix shapes (a DTensor's view is its shard; splits, refused under shards, are whole)
        full = [matrix_shape(p.shape, *lay) for p, lay in zip(params, _layouts(group), strict=True)]
        stacks = GroupStacks(
            members.views,
            _spec(group),
            self._stack_cap(),
            shapes=members.shapes,
            full_shapes=members.shapes if group.get("split") else full,
            distributed=self.distributed,
            process_group=self._group_of(params) if self.distributed != "none" else None,
        )
        self._stacks[index] = (key, stacks)
        return stacks

    def _stack_cap(self) -> int:
        """``max_stack_bytes``, or by default half the state bytes of all Muon parameters (docs/fast.md)."""
        if self.max_stack_bytes is not None:
            return self.max_stack_bytes
        total: int = sum(
            int(p.numel()) * state_dtype(p).itemsize
            for g in self.param_groups
            if g["algorithm"] == "muon"
            for p in g["params"]
        )
        return max(total // 2, 1)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One step over every group; ``closure`` (optional) re-evaluates the loss with grad enabled.

        Single-process, with ``nonfinite="skip"``, nothing is read on the host (docs/fast.md "Host syncs")."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_inputs()
        flags = self._finite_flags()
        for gi, (group, finite) in enumerate(zip(self.param_groups, flags, strict=True)):
            params = group["params"]
            if all(p.grad is None for p in params):
                continue
            local = [_local(p) for p in params]  # a DTensor's shard: a view, so updates land in the parameter
            grads = [None if p.grad is None else _local(p.grad) for p in params]
            if group["algorithm"] == "muon":
                layouts = _layouts(group)
                members = _members(
                    group,
                    [matrix_view(x, *lay) for x, lay in zip(local, layouts, strict=True)],
                    [None if g is None else matrix_view(g, *lay) for g, lay in zip(grads, layouts, strict=True)],
                    [self.state[p] for p in params],
                )
                keep = None
                if finite is not None:
                    # finite covers the params with a gradient; those without are skipped by the stacks
                    keep = finite if all(g is not None for g in grads) else _spread(finite, grads)
                    if len(members.owner) != len(params):  # per block of a split parameter
                        keep = keep[members.owner]
                self._group_stacks(gi, group, members).step(
                    members.views,
                    members.grads,
                    members.states,
                    lr=group["lr"],
                    momentum=float(group["momentum"]),
                    weight_decay=float(group["weight_decay"]),
                    keep=keep,
                    backend=self.backend,
                )
                continue
            live = [i for i, g in enumerate(grads) if g is not None]
            b1, b2 = group["betas"]
            adamw_step_(
                [local[i] for i in live],
                [cast(torch.Tensor, grads[i]) for i in live],
                [self.state[params[i]] for i in live],
                lr=group["lr"],
                betas=(float(b1), float(b2)),
                eps=float(group["eps"]),
                weight_decay=float(group["weight_decay"]),
                eps_mode=_spec(group).adam_eps_mode,
                keep=None if finite is None else list(finite.unbind(0)),
            )
        return loss
