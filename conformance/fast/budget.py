"""Yardsticks for what one optimizer step costs, measured on CPU: kernel launches, host syncs, transient memory.

`StepMeter` is a ``TorchDispatchMode`` (every aten op of the step passes through it) that also hooks Triton's
launch path, so one ``with StepMeter() as m: opt.step()`` yields:

* **launches** (`StepMeter.launches`): the ops that would each launch one kernel on a GPU. Counted: every aten op
  that computes, copies or fills (``add_``, ``bmm``, ``copy_``, ``zeros``, ``_to_copy`` ...), a ``_foreach_*`` op
  once (it is one multi-tensor launch, or a few, on CUDA), and every Triton kernel launch
  (``JITFunction.run`` and, under ``TRITON_INTERPRET=1``, ``InterpretedFunction.run``; the interpreter's own
  tensor traffic inside a launch is not counted). Not counted: views and aliases (ops whose schema returns an
  alias of an input: ``view``, ``reshape`` as a view, ``split``, ``transpose``, ``detach`` ...), metadata-only
  ops (``sym_size``, ``is_contiguous``, ``set_``), bare allocations (``empty``, ``empty_strided``,
  ``empty_like``, ``new_empty``: no kernel runs), and *host ops* (below). `StepMeter.breakdown` counts per op.
* **syncs** (`StepMeter.syncs`): ops that make the host wait for device data: ``_local_scalar_dense``
  (``.item()``, ``bool(t)``, ``float(t)``, ``if t:``), ``is_nonzero``, ``equal``, ``allclose``, ops with a
  data-dependent output shape (``nonzero``, ``masked_select``, ``unique``, boolean-mask indexing and
  ``index_put_``, ``repeat_interleave`` without ``output_size``), and ``Tensor.tolist()`` / ``Tensor.numpy()``
  (which on a CPU tensor read memory without any aten op, so they are hooked as Python methods).
* **peak transient bytes** (`StepMeter.peak_bytes`): the largest total, at any point of the call, of the bytes
  of storages *allocated inside the call* that are still alive. Storages that existed before (parameters,
  gradients, state) are not counted, however they are written. Method: after each op, an output whose storage
  is not one of the op's inputs' storages was allocated by that op; its bytes are added and a
  ``weakref.finalize`` on every tensor sharing that storage (views of it pass through the mode too) subtracts
  them when the last one dies. Allocations internal to one aten kernel (workspaces freed before it returns)
  are not seen; `StepMeter.retained_bytes` is what is still alive when the call ends.

**Host tensors.** ``Optimizer.state[p]["step"]`` is a 0-D CPU tensor on every device (as torch's Adam keeps it),
so arithmetic on it and ``.item()`` of it cost no kernel and no device sync on a GPU. On a CPU machine every
tensor is a CPU tensor, so the meter tells host from device by provenance: a tensor is *device data* if it has
at least one dimension, or comes from an op with device data among its inputs, or is a 0-D result of a
factory given an explicit ``device``; other 0-D tensors (pre-existing scalars such as the step counters, or
``torch.tensor(x)``) are *host*. Ops whose tensors are all host are counted in `StepMeter.host_ops`, reads of a
host tensor in `StepMeter.host_reads`, neither in launches nor syncs. Limit: a 0-D tensor that exists before the
call and lives on the device in a GPU run (a tensor ``lr`` moved there) reads as host here.

The GPT-2 fixture (`gpt2_hidden`) builds GPT-2 small's 72 hidden matrices (12 layers x q, k, v, o at
768x768, MLP up 3072x768 and down 768x3072) at a scale (1, 1/2, 1/4), in fp32 or bf16, with gradients, and
`optimizer_pair` a ``muonlab.fast.Muon`` and a ``torch.optim.Muon`` on identical copies.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

__all__ = [
    "GPT2_SMALL_LAYERS",
    "StepCost",
    "StepMeter",
    "gpt2_hidden",
    "gpt2_hidden_shapes",
    "measure_step",
    "optimizer_pair",
    "param_bytes",
]

aten = torch.ops.aten

# Ops that allocate without running a kernel.
_ALLOCATIONS = {
    "empty",
    "empty_strided",
    "empty_like",
    "new_empty",
    "new_empty_strided",
    "empty_permuted",
    "resize_",
    "resize_as_",
}
# Ops that only read or write metadata.
_METADATA = {
    "sym_size",
    "sym_stride",
    "sym_numel",
    "sym_storage_offset",
    "is_contiguous",
    "is_strides_like_format",
    "is_non_overlapping_and_dense",
    "set_",
    "lift_fresh",
    "_has_compatible_shallow_copy_type",
    "record_stream",
    "size",
    "stride",
    "numel",
    "dim",
    "_nested_tensor_size",
    "_unsafe_view",  # a view the schema does not mark as one (matmul's reshape of a bmm result)
    # in-place metadata changes: the schema marks ``self`` as written, but no element is touched
    "squeeze_",
    "unsqueeze_",
    "transpose_",
    "t_",
    "swapdims_",
    "as_strided_",
    "detach_",
}
# Ops that read device data on the host, whatever their arguments.
_SYNC_OPS = {
    "_local_scalar_dense",
    "is_nonzero",
    "equal",
    "allclose",
    "nonzero",
    "masked_select",
    "_unique",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "unique_dim_consecutive",
    "argwhere",
}
# Factories: their 0-D results are device data only when a device is named.
_FACTORIES = {"zeros", "ones", "full", "scalar_tensor", "arange", "rand", "randn", "zeros_like", "ones_like"}


def _base_name(func: Any) -> str:
    """``aten.add_.Tensor`` -> ``add_``."""
    return str(func.overloadpacket.__name__)


def _is_alias(func: Any) -> bool:
    """Whether ``func`` returns an alias of an input (a view, ``detach``, ``alias``), per its schema; in-place and
    ``out=`` ops, which alias their written argument, are kernels and return False."""
    schema = func._schema
    if func.is_view:
        return True
    if not schema.returns:
        return False
    written = any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments)
    returns_alias = all(r.alias_info is not None for r in schema.returns)
    return returns_alias and not written


def _bool_index(func: Any, args: Sequence[Any]) -> bool:
    """``x[mask]`` / ``x[mask] = v``: an index list holding a bool/uint8 tensor (its nonzero is read)."""
    if _base_name(func) not in ("index", "index_put", "index_put_", "_index_put_impl_", "_unsafe_index"):
        return False
    if len(args) < 2 or not isinstance(args[1], (list, tuple)):
        return False
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1])


def _tensors(tree: Any) -> list[torch.Tensor]:
    leaves, _ = tree_flatten(tree)
    return [x for x in leaves if isinstance(x, torch.Tensor)]


def _storage_key(t: torch.Tensor) -> int | None:
    """Identity of ``t``'s storage (its data pointer), or None for a storage of no bytes."""
    st = t.untyped_storage()
    return int(st.data_ptr()) if st.nbytes() > 0 else None


@dataclass
class _Live:
    nbytes: int
    refs: int = 0


@dataclass
class StepCost:
    """What one measured call cost (see the module docstring for what each count includes)."""

    launches: int
    torch_launches: int
    triton_launches: int
    syncs: int
    host_ops: int
    host_reads: int
    peak_bytes: int
    retained_bytes: int
    breakdown: dict[str, int] = field(default_factory=dict)
    sync_breakdown: dict[str, int] = field(default_factory=dict)

    def top(self, k: int = 12) -> str:
        """The ``k`` most frequent launching ops, ``"name xN"``, for reports and failure messages."""
        items = sorted(self.breakdown.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        return ", ".join(f"{name} x{n}" for name, n in items)


class StepMeter(TorchDispatchMode):
    """Counts launches, syncs and host ops, and tracks transient storage, of everything run inside ``with``."""

    def __init__(self) -> None:
        super().__init__()
        self.breakdown: Counter[str] = Counter()
        self.sync_breakdown: Counter[str] = Counter()
        self.triton_launches = 0
        self.host_ops = 0
        self.host_reads = 0
        # Keyed by identity (a WeakSet would compare tensors with ``==``).
        self._provenance: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._live: dict[int, _Live] = {}
        self._bytes = 0
        self.peak_bytes = 0
        self._in_triton = 0
        self._undo: list[Callable[[], None]] = []

    # -- results ----------------------------------------------------------------------------------------
    @property
    def torch_launches(self) -> int:
        return sum(self.breakdown.values()) - self.triton_launches

    @property
    def launches(self) -> int:
        return sum(self.breakdown.values())

    @property
    def syncs(self) -> int:
        return sum(self.sync_breakdown.values())

    @property
    def retained_bytes(self) -> int:
        return self._bytes

    def cost(self) -> StepCost:
        return StepCost(
            launches=self.launches,
            torch_launches=self.torch_launches,
            triton_launches=self.triton_launches,
            syncs=self.syncs,
            host_ops=self.host_ops,
            host_reads=self.host_reads,
            peak_bytes=self.peak_bytes,
            retained_bytes=self.retained_bytes,
            breakdown=dict(self.breakdown),
            sync_breakdown=dict(self.sync_breakdown),
        )

    # -- provenance -------------------------------------------------------------------------------------
    def _is_device(self, t: torch.Tensor) -> bool:
        if t.ndim > 0 or t.device.type != "cpu":
            return True
        return bool(self._provenance.get(t, False))

    # -- memory -----------------------------------------------------------------------------------------
    def _release(self, key: int) -> None:
        live = self._live.get(key)
        if live is None:
            return
        live.refs -= 1
        if live.refs <= 0:
            self._bytes -= live.nbytes
            del self._live[key]

    def _track(self, t: torch.Tensor, key: int) -> None:
        self._live[key].refs += 1
        weakref.finalize(t, self._release, key)

    def _account(self, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
        input_keys = {_storage_key(t) for t in inputs}
        for t in outputs:
            key = _storage_key(t)
            if key is None:
                continue
            if key in self._live:
                self._track(t, key)  # a view or an in-place result of a storage born in this call
            elif key not in input_keys:
                self._live[key] = _Live(t.untyped_storage().nbytes())
                self._bytes += self._live[key].nbytes
                self.peak_bytes = max(self.peak_bytes, self._bytes)
                self._track(t, key)

    # -- dispatch ---------------------------------------------------------------------------------------
    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self._in_triton:
            return out  # the interpreter's own traffic inside a Triton launch
        name = _base_name(func)
        inputs = _tensors((args, kwargs))
        outputs = _tensors(out)
        device_in = any(self._is_device(t) for t in inputs)
        if name in _FACTORIES and not inputs:
            device_in = kwargs.get("device") is not None
        for t in outputs:
            self._provenance[t] = device_in or t.ndim > 0
        self._account(inputs, outputs)

        if (
            name in _SYNC_OPS
            or _bool_index(func, args)
            or (name == "repeat_interleave" and "output_size" not in kwargs)
        ):
            if device_in:
                self.sync_breakdown[name] += 1
            else:
                self.host_reads += 1
            if name in ("_local_scalar_dense", "is_nonzero", "equal", "allclose"):
                return out
        if name in _ALLOCATIONS or name in _METADATA or _is_alias(func):
            return out
        if not device_in and not any(t.ndim > 0 for t in outputs):
            self.host_ops += 1
            return out
        self.breakdown[name] += 1
        return out

    # -- hooks outside the dispatcher ---------------------------------------------------------------------
    def _patch(self, owner: Any, attr: str, make: Callable[[Any], Any]) -> None:
        original = getattr(owner, attr)
        setattr(owner, attr, make(original))
        self._undo.append(lambda: setattr(owner, attr, original))

    def _triton_run(self, original: Any) -> Any:
        meter = self

        def run(kernel: Any, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> Any:
            if warmup or meter._in_triton:
                return original(kernel, *args, grid=grid, warmup=warmup, **kwargs)
            meter.breakdown[f"triton:{getattr(kernel, '__name__', 'kernel')}"] += 1
            meter.triton_launches += 1
            meter._in_triton += 1
            try:
                return original(kernel, *args, grid=grid, warmup=warmup, **kwargs)
            finally:
                meter._in_triton -= 1

        return run

    def _host_read(self, what: str) -> Callable[[Any], Any]:
        meter = self

        def make(original: Any) -> Any:
            def read(t: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
                if not meter._in_triton:
                    if meter._is_device(t):
                        meter.sync_breakdown[what] += 1
                    else:
                        meter.host_reads += 1
                return original(t, *args, **kwargs)

            return read

        return make

    def __enter__(self) -> StepMeter:
        try:
            from triton.runtime.interpreter import InterpretedFunction
            from triton.runtime.jit import JITFunction

            self._patch(JITFunction, "run", self._triton_run)
            self._patch(InterpretedFunction, "run", self._triton_run)
        except ImportError:  # no Triton: only the torch path can run
            pass
        self._patch(torch.Tensor, "tolist", self._host_read("tolist"))
        self._patch(torch.Tensor, "numpy", self._host_read("numpy"))
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            super().__exit__(*exc)
        finally:
            while self._undo:
                self._undo.pop()()


# -- the GPT-2 small fixture ------------------------------------------------------------------------------
GPT2_SMALL_LAYERS = 12


def gpt2_hidden_shapes(scale: float = 1.0) -> list[tuple[int, int]]:
    """GPT-2 small's 72 hidden matrices at ``scale`` (d = 768 scale): per layer q, k, v, o ``[d, d]``, MLP up
    ``[4d, d]``, MLP down ``[d, 4d]``."""
    d = round(768 * scale)
    if d < 1 or abs(d - 768 * scale) > 1e-9:
        raise ValueError(f"scale: 768 * scale must be a positive integer, got scale={scale!r}")
    return [s for _ in range(GPT2_SMALL_LAYERS) for s in [(d, d)] * 4 + [(4 * d, d), (d, 4 * d)]]


def gpt2_hidden(scale: float = 1.0, dtype: torch.dtype = torch.float32, seed: int = 0) -> list[torch.nn.Parameter]:
    """The 72 matrices as parameters of ``dtype`` (values ``N(0, 1/n)``) with gradients ``N(0, 1)`` of the same
    dtype; the same ``seed`` gives the same values."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for m, n in gpt2_hidden_shapes(scale):
        p = torch.nn.Parameter((torch.randn(m, n, generator=gen) / n**0.5).to(dtype))
        p.grad = torch.randn(m, n, generator=gen).to(dtype)
        out.append(p)
    return out


def param_bytes(params: Sequence[torch.Tensor]) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def optimizer_pair(
    scale: float = 0.25,
    dtype: torch.dtype = torch.float32,
    preset: str = "keller",
    **fast_kwargs: Any,
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer, list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """``(fast, torch_muon, fast_params, torch_params)``: `muonlab.fast.Muon` (``preset``, ``fast_kwargs``) and
    ``torch.optim.Muon(lr=1e-3, weight_decay=0.1)`` on identical copies of `gpt2_hidden` (``scale``, ``dtype``)."""
    from muonlab.fast import Muon

    fast_params, torch_params = gpt2_hidden(scale, dtype), gpt2_hidden(scale, dtype)
    fast = Muon(fast_params, preset=preset, **fast_kwargs)
    ref = torch.optim.Muon(torch_params, lr=1e-3, weight_decay=0.1)
    return fast, ref, fast_params, torch_params


def measure_step(step: Callable[[], object], warmup: int = 1) -> StepCost:
    """Run ``step`` ``warmup`` times unmeasured (lazy state allocation counts as state, not transient), then
    once inside a `StepMeter`; returns that call's cost."""
    for _ in range(warmup):
        step()
    with torch.no_grad(), StepMeter() as meter:
        step()
    cost = meter.cost()
    del meter
    return cost
