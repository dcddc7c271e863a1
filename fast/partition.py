"""Route a model's parameters to Muon or AdamW by module type, name and shape (explicit, printable,
overridable).

Rules, first match wins (docs/variants.md sections 1.3, 3.1, 7.2):

1. a ``muon=`` / ``adamw=`` pattern (fnmatch on the parameter name) matches: that route ("override");
2. the weight of an ``nn.Embedding`` (or tied to one), or a name with an ``embed``, ``wte``, ``wpe`` or
   ``tok_emb`` component: AdamW ("embedding");
3. a parameter of a module named ``lm_head`` or ``head`` (or whose name contains ``lm_head``): AdamW
   ("output head");
4. parameters of normalization layers (``nn.LayerNorm``, ``nn.RMSNorm``, ``nn.GroupNorm``, batch/instance
   norms) or with ``norm`` in the module name: AdamW ("norm");
5. ``ndim < 2`` (biases, gains, scalars): AdamW ("bias" / "scalar or 1-D");
6. ``ndim >= 2``: Muon ("matmul weight" for ``nn.Linear`` / ``nn.Conv*`` / transformers' ``Conv1D``, "expert
   bank" for a 3-D ``[E, out, in]`` parameter (E matrices, orthogonalized in one batched call), else
   "ndim >= 2 weight").

Tied and shared parameters appear once, under their first name (a tied LM head goes to AdamW once, as the
embedding).

Orientation (`muonlab.fast.layout`): Muon reads a parameter as ``[..., out, in]`` (``nn.Linear``). Each Muon
parameter gets a ``matrix_dims`` entry: ``None`` for that layout, ``(1, 0)`` for a detected transformers GPT-2
``Conv1D`` (class name ``Conv1D`` with ``nx``/``nf`` attributes matching its ``[in, out]`` weight; detected
without importing transformers), or what a ``matrix_dims=`` pattern says (``(row_dim, col_dim)``, ``"in_out"``
= the last two dims swapped, ``"out_in"`` = the default). The plan prints it; `ParamPlan.param_groups` passes
it to `muonlab.fast.Muon` as the group key ``"matrix_dims"``.

Per-head Muon (``per_head=True``; group key ``"heads"``, docs/fast.md "Per-head Muon"): the attention input
projections are split into one block per head, with the head counts read from the model's ``config``
(Hugging Face names and config fields, `_heads_of`): a fused GPT-2 ``c_attn`` (Q, K and V, ``3 n_head`` blocks), a fused
``qkv_proj`` (``H + 2 KV`` blocks), and ``q_proj`` (``H``) / ``k_proj`` and ``v_proj`` (``KV``) in Llama-style
models. ``heads=`` patterns override (fnmatch -> head count, or None for the whole matrix). The plan prints
each choice.

Split QKV (``split_qkv=True``; group key ``"split"``, `muonlab.contract.RowSplit`): a fused QKV weight is
orthogonalized as three matrices, all query heads, all keys, all values (Megatron-core's ``muon_split_qkv``), with
the layout read from the name and ``config`` (`_split_of`): GPT-2's ``c_attn`` and Phi-3's ``qkv_proj`` store
``[Q; K; V]``; GPT-NeoX's and BLOOM's ``query_key_value`` store each head's ``q, k, v`` together (``groups = H``);
Megatron's ``linear_qkv`` each query group's (``groups = num_query_groups``). ``split=`` patterns override
(fnmatch -> row sizes, ``{"sizes": ..., "groups": ...}``, or None).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from muonlab.contract.split import RowSplit, check_row_split

from .layout import MatrixDims, check_matrix_dims, matrix_shape

__all__ = ["ParamPlan", "partition_params"]

_NORMS = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.RMSNorm,
)
_MATMUL = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_EMBED_NAME = re.compile(r"(^|[._])(embed\w*|\w*embedding\w*|wte|wpe|tok_emb\w*)([._]|$)")


@dataclass
class ParamPlan:
    """Where each parameter goes: ``muon`` and ``adamw`` lists of ``(name, param)`` and a reason per name."""

    muon: list[tuple[str, nn.Parameter]] = field(default_factory=list)
    adamw: list[tuple[str, nn.Parameter]] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)
    matrix_dims: dict[str, MatrixDims] = field(default_factory=dict)
    """Muon parameter name -> its ``(row_dim, col_dim)``, ``None`` for ``[..., out, in]`` (absent = ``None``)."""
    heads: dict[str, int] = field(default_factory=dict)
    """Muon parameter name -> the number of row blocks it is orthogonalized as (absent: the whole matrix)."""
    split: dict[str, RowSplit] = field(default_factory=dict)
    """Muon parameter name -> its row split (absent: the whole matrix)."""

    def param_groups(self, **muon_group_kwargs: Any) -> list[dict[str, Any]]:
        """Groups for `muonlab.fast.Muon`: the Muon group (with ``muon_group_kwargs`` and ``"matrix_dims"``, a
        list parallel to its params) and an ``algorithm="adamw"`` group; empty groups are left out."""
        if {"matrix_dims", "params", "heads", "split"} & set(muon_group_kwargs):
            raise ValueError(
                "muon_group_kwargs: 'params', 'matrix_dims', 'heads' and 'split' come from the plan (partition_params)"
            )
        groups: list[dict[str, Any]] = []
        if self.muon:
            groups.append(
                {
                    "params": [p for _, p in self.muon],
                    "matrix_dims": [self.matrix_dims.get(n) for n, _ in self.muon],
                    **({"heads": [self.heads.get(n) for n, _ in self.muon]} if self.heads else {}),
                    **({"split": [self.split.get(n) for n, _ in self.muon]} if self.split else {}),
                    **muon_group_kwargs,
                }
            )
        if self.adamw:
            groups.append({"params": [p for _, p in self.adamw], "algorithm": "adamw"})
        return groups

    def matrix_text(self, name: str, shape: Sequence[int]) -> str:
        """How Muon reads a parameter: ``[batch x] rows x cols`` and, when not ``[..., out, in]``, the dims."""
        dims = self.matrix_dims.get(name)
        view = matrix_shape(shape, dims)
        text = "x".join(map(str, view[-2:]))
        if len(view) > 2:
            text = f"{'x'.join(map(str, view[:-2]))} of {text}"
        heads = self.heads.get(name)
        if heads is not None:
            text = f"{text} as {heads} heads of {view[-2] // heads}x{view[-1]}"
        split = self.split.get(name)
        if split is not None:
            blocks = " + ".join(f"{split.groups * s}x{view[-1]}" for s in split.sizes)
            text = f"{text} as {blocks}" + (f" ({split.groups} groups)" if split.groups > 1 else "")
        return text if dims is None else f"{text} (rows=dim {dims[0]}, cols=dim {dims[1]})"

    def __str__(self) -> str:
        def shape(p: torch.Tensor) -> str:
            return "x".join(map(str, p.shape)) or "scalar"

        rows = [(n, shape(p), "muon", self.matrix_text(n, p.shape), self.reasons[n]) for n, p in self.muon]
        rows += [(n, shape(p), "adamw", "-", self.reasons[n]) for n, p in self.adamw]
        header = ("name", "shape", "route", "matrix (out x in)", "reason")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)).rstrip()]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        n_m = sum(p.numel() for _, p in self.muon)
        n_a = sum(p.numel() for _, p in self.adamw)
        lines.append(
            f"muon: {len(self.muon)} tensors, {n_m} elements; adamw: {len(self.adamw)} tensors, {n_a} elements"
        )
        return "\n".join(lines)


def _module_of(model: nn.Module) -> dict[str, nn.Module]:
    """Parameter name -> owning module (first registration)."""
    owner: dict[str, nn.Module] = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        for pname, _ in module.named_parameters(recurse=False, remove_duplicate=False):
            owner.setdefault(f"{mname}.{pname}" if mname else pname, module)
    return owner


def _is_conv1d(module: nn.Module | None, p: torch.Tensor) -> bool:
    """transformers' ``Conv1D`` (GPT, GPT-2, ...): weight ``[nx, nf]`` = ``[in, out]``; matched by class name and
    its ``nx`` / ``nf`` attributes, so transformers is never imported."""
    if module is None or type(module).__name__ != "Conv1D" or p is not getattr(module, "weight", None):
        return False
    nx, nf = getattr(module, "nx", None), getattr(module, "nf", None)
    return isinstance(nx, int) and isinstance(nf, int) and tuple(p.shape) == (nx, nf)


def _rule(name: str, p: torch.Tensor, module: nn.Module | None, embed_ids: set[int]) -> tuple[str, str]:
    parts = name.split(".")
    module_names = parts[:-1]
    if id(p) in embed_ids or isinstance(module, nn.Embedding):
        return "adamw", "embedding (nn.Embedding weight or tied to one)"
    if _EMBED_NAME.search(name):
        return "adamw", "embedding (by name)"
    if "lm_head" in name or "head" in module_names:
        return "adamw", "output head"
    if isinstance(module, _NORMS) or any("norm" in m.lower() for m in module_names):
        return "adamw", "norm"
    if p.ndim < 2:
        return "adamw", "bias" if parts[-1] == "bias" else "scalar or 1-D"
    if isinstance(module, _MATMUL):
        return "muon", f"matmul weight ({type(module).__name__})"
    if _is_conv1d(module, p):
        return "muon", "matmul weight (Conv1D, stored [in, out])"
    if p.ndim == 3:
        return "muon", f"batch of {p.shape[0]} matrices (e.g. MoE experts)"
    return "muon", "ndim >= 2 weight"


def _config_int(config: object, *names: str) -> int | None:
    for n in names:
        value = getattr(config, n, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _heads_of(name: str, model: nn.Module) -> int | None:
    """The head count of an attention input projection named like Hugging Face's, from ``model.config``
    (``H = num_attention_heads`` or ``n_head``, ``KV = num_key_value_heads``, default ``H``): ``c_attn`` 3 H,
    ``qkv_proj`` H + 2 KV, ``q_proj`` H, ``k_proj`` / ``v_proj`` KV; None for any other name or a config without
    the counts."""
    config = getattr(model, "config", None)
    query = _config_int(config, "num_attention_heads", "n_head", "num_heads")
    if query is None:
        return None
    kv = _config_int(config, "num_key_value_heads", "n_kv_heads", "multi_query_group_num") or query
    module = name.split(".")[-2] if "." in name else ""
    counts = {"c_attn": 3 * query, "qkv_proj": query + 2 * kv, "q_proj": query, "k_proj": kv, "v_proj": kv}
    return counts.get(module) if name.endswith(".weight") else None


def _split_of(name: str, model: nn.Module, rows: int) -> RowSplit | None:
    """The Q / K / V row split of a fused QKV weight with ``rows`` rows named like Hugging Face's or Megatron's,
    from ``model.config`` (module docstring); None for any other name, a config without the counts, or counts
    that do not fit ``rows``."""
    config = getattr(model, "config", None)
    module = name.split(".")[-2] if "." in name else ""
    if not name.endswith(".weight"):
        return None
    query = _config_int(config, "num_attention_heads", "n_head", "num_heads")
    kv = _config_int(config, "num_key_value_heads", "n_kv_heads", "multi_query_group_num") or query
    sizes: tuple[int, ...] = ()
    groups = 1
    if module == "c_attn" and rows % 3 == 0:
        sizes = (rows // 3,) * 3
    elif module == "qkv_proj" and query and kv and rows % (query + 2 * kv) == 0:
        d = rows // (query + 2 * kv)
        sizes = (query * d, kv * d, kv * d)
    elif module == "query_key_value" and query and getattr(config, "model_type", None) in ("gpt_neox", "bloom"):
        groups, sizes = query, (rows // (3 * query),) * 3
    elif module == "linear_qkv" and query:
        groups = _config_int(config, "num_query_groups") or query
        d = _config_int(config, "kv_channels") or 0
        sizes = (query // groups * d, d, d)
    if not sizes or not all(sizes) or groups * sum(sizes) != rows:
        return None
    return RowSplit(sizes, groups)


def _explicit_dims(value: object, shape: Sequence[int], name: str) -> MatrixDims:
    """A ``matrix_dims=`` value for one parameter: ``"in_out"``, ``"out_in"``, ``None`` or ``(row, col)``."""
    if value == "in_out":
        value = (-1, -2)
    elif value == "out_in":
        value = None
    elif isinstance(value, str):
        raise ValueError(f"{name}: matrix_dims string must be 'in_out' or 'out_in', got {value!r}")
    return check_matrix_dims(shape, value, name)


def partition_params(
    model: nn.Module,
    *,
    muon: Sequence[str] = (),
    adamw: Sequence[str] = (),
    matrix_dims: Mapping[str, object] | None = None,
    per_head: bool = False,
    heads: Mapping[str, int | None] | None = None,
    split_qkv: bool = False,
    split: Mapping[str, object] | None = None,
    verbose: bool = False,
) -> ParamPlan:
    """Split ``model``'s trainable parameters between Muon and AdamW (rules in the module docstring).

    ``muon`` / ``adamw`` are fnmatch patterns on parameter names that override the rules; a pattern that
    matches no parameter, or a name matched by both lists, raises `ValueError`. ``matrix_dims`` maps fnmatch
    patterns to a layout for the Muon parameters they match (``(row_dim, col_dim)``: which stored dims are
    fan_out and fan_in, other dims batch; ``"in_out"``; ``"out_in"``), overriding the ``Conv1D`` detection; a
    pattern matching no Muon parameter, a name matched by two patterns, or dims invalid for the parameter's
    shape raises `ValueError` naming it. ``per_head`` splits the attention input projections into heads
    (module docstring); ``heads`` maps fnmatch patterns to a head count (or None) for the Muon parameters they
    match, overriding the detection, with the same errors as ``matrix_dims``. ``split_qkv`` cuts fused QKV weights
    into Q, K and V (module docstring); ``split`` maps fnmatch patterns to a row split (row sizes,
    ``{"sizes", "groups"}``, a `RowSplit`, or None), overriding it, with the same errors. A parameter split
    both ways raises. ``verbose`` prints the plan.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    for label, pats in (("muon", muon), ("adamw", adamw)):
        if isinstance(pats, str):
            raise TypeError(f"{label}: expected a sequence of patterns, got the string {pats!r}")
    layouts = dict(matrix_dims or {})
    for pat in layouts:
        if not isinstance(pat, str):
            raise TypeError(f"matrix_dims: keys are fnmatch patterns (str), got {pat!r}")
    layout_used = dict.fromkeys(layouts, False)
    head_rules = dict(heads or {})
    heads_used = dict.fromkeys(head_rules, False)
    split_rules = dict(split or {})
    split_used = dict.fromkeys(split_rules, False)
    owner = _module_of(model)
    embed_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    used: dict[str, bool] = {
        f"{label}:{pat}": False for label, pats in (("muon", muon), ("adamw", adamw)) for pat in pats
    }
    plan = ParamPlan()
    for name, p in named:
        hits = {
            label
            for label, pats in (("muon", muon), ("adamw", adamw))
            for pat in pats
            if fnmatch.fnmatchcase(name, pat)
        }
        for label, pats in (("muon", muon), ("adamw", adamw)):
            for pat in pats:
                if fnmatch.fnmatchcase(name, pat):
                    used[f"{label}:{pat}"] = True
        if len(hits) == 2:
            raise ValueError(f"{name}: matched by both a muon= and an adamw= pattern")
        if hits:
            route = hits.pop()
            reason = f"override ({route}= pattern)"
            if route == "muon" and p.ndim < 2:
                raise ValueError(f"muon: {name} has shape {tuple(p.shape)}; Muon needs ndim >= 2")
        else:
            route, reason = _rule(name, p, owner.get(name), embed_ids)
        (plan.muon if route == "muon" else plan.adamw).append((name, p))
        plan.reasons[name] = reason
        pats = [pat for pat in layouts if fnmatch.fnmatchcase(name, pat)]
        if route == "muon":
            if len(pats) > 1:
                raise ValueError(f"matrix_dims: {name} is matched by several patterns {pats}")
            if pats:
                layout_used[pats[0]] = True
                dims = _explicit_dims(layouts[pats[0]], p.shape, f"matrix_dims[{pats[0]!r}] ({name})")
            else:
                dims = (1, 0) if _is_conv1d(owner.get(name), p) else None
            if dims is not None:
                plan.matrix_dims[name] = dims
            hpats = [pat for pat in head_rules if fnmatch.fnmatchcase(name, pat)]
            if len(hpats) > 1:
                raise ValueError(f"heads: {name} is matched by several patterns {hpats}")
            count = head_rules[hpats[0]] if hpats else (_heads_of(name, model) if per_head else None)
            if hpats:
                heads_used[hpats[0]] = True
            if count is not None and count != 1:
                rows = matrix_shape(p.shape, dims)
                if len(rows) != 2 or isinstance(count, bool) or not isinstance(count, int) or rows[0] % count:
                    raise ValueError(f"heads: {count!r} heads cannot split {name}, a {'x'.join(map(str, rows))} matrix")
                plan.heads[name] = count
                plan.reasons[name] += (
                    f"; {count} heads ({f'heads={hpats[0]!r}' if hpats else 'per_head, model.config'})"
                )
            spats = [pat for pat in split_rules if fnmatch.fnmatchcase(name, pat)]
            if len(spats) > 1:
                raise ValueError(f"split: {name} is matched by several patterns {spats}")
            view = matrix_shape(p.shape, dims)
            if spats:
                split_used[spats[0]] = True
                rule = check_row_split(split_rules[spats[0]], view, f"split[{spats[0]!r}] ({name})")
            else:
                rule = _split_of(name, model, view[-2]) if split_qkv and len(view) == 2 else None
            if rule is not None:
                if name in plan.heads:
                    raise ValueError(f"split: {name} is split into heads already; a parameter takes one of the two")
                plan.split[name] = rule
                plan.reasons[name] += f"; split Q/K/V ({f'split={spats[0]!r}' if spats else 'split_qkv, model.config'})"
    unused = [k for k, hit in used.items() if not hit]
    if unused:
        label, pat = unused[0].split(":", 1)
        raise ValueError(f"{label}: pattern {pat!r} matches no parameter of the model")
    unused_layouts = [pat for pat, hit in layout_used.items() if not hit]
    if unused_layouts:
        raise ValueError(f"matrix_dims: pattern {unused_layouts[0]!r} matches no parameter routed to Muon")
    unused_heads = [pat for pat, hit in heads_used.items() if not hit]
    if unused_heads:
        raise ValueError(f"heads: pattern {unused_heads[0]!r} matches no parameter routed to Muon")
    unused_splits = [pat for pat, hit in split_used.items() if not hit]
    if unused_splits:
        raise ValueError(f"split: pattern {unused_splits[0]!r} matches no parameter routed to Muon")
    if verbose:
        print(plan)
    return plan
