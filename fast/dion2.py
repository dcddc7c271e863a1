"""Dion2's submatrix selection on torch ``[C, m, n]`` stacks (mirrors `muonlab.reference.dion2`, which states the
math; microsoft/dion 0a059a4 ``dion/dion2.py``)."""

from __future__ import annotations

import math

import torch

from muonlab.contract.shapes import dion2_select_dim

__all__ = ["dion2_decay", "dion2_feedback_", "dion2_index_shape", "dion2_pick", "dion2_scatter", "dion2_select_"]


def _slices(t: torch.Tensor, rows: bool) -> torch.Tensor:
    """``t`` with the selected dim as rows (a view: transposed for column selection; ``rows``: NorDion2's
    rows whatever the shape)."""
    return t if rows or dion2_select_dim(t.shape[-2], t.shape[-1]) == -2 else t.mT


def dion2_index_shape(view: tuple[int, ...] | torch.Size, fraction: float, rows: bool = False) -> tuple[int, int]:
    """``(C, k)``: the shape of the index `dion2_pick` returns for the matrices of matrix-view shape ``view``."""
    m, n = int(view[-2]), int(view[-1])
    along = m if rows or dion2_select_dim(m, n) == -2 else n
    return math.prod(int(d) for d in view[:-2]), max(1, math.ceil(fraction * along))


def dion2_pick(n: torch.Tensor, fraction: float, rows: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, index)`` of the ``[C, m, n]`` accumulation ``n`` (not written): ``index`` ``[C, k]`` the slices of
    largest L1 norm, ``U`` those slices (a new tensor; ``[C, k, n]`` rows or ``[C, m, k]`` columns)."""
    sl = _slices(n, rows)
    k = max(1, math.ceil(fraction * sl.shape[-2]))
    scores = torch.linalg.vector_norm(sl, ord=1, dim=-1)  # [C, s]: each slice's L1 norm, in one pass
    index = torch.topk(scores, k, dim=-1, sorted=False).indices  # the order is immaterial: Orth commutes with it
    picked = torch.gather(sl, -2, index.unsqueeze(-1).expand(-1, -1, sl.shape[-1]))
    return (picked if sl is n else picked.mT), index


def dion2_feedback_(
    buf: torch.Tensor,
    index: torch.Tensor,
    decay: float | torch.Tensor,
    rows: bool = False,
    picked: torch.Tensor | None = None,
) -> torch.Tensor:
    """Error feedback, in place: the buffer's selected slices times ``decay`` (``beta``, or per matrix
    `dion2_decay`: 1 for a skipped matrix, whose buffer then stays unchanged bit for bit since its gradient is
    zero). ``picked``: those slices as `dion2_pick` returned them, if at hand (saves a gather)."""
    sl = _slices(buf, rows)
    at = index.unsqueeze(-1).expand(-1, -1, sl.shape[-1])
    if isinstance(decay, torch.Tensor):  # one product per selected entry, in place (the indices are distinct)
        sl.scatter_reduce_(-2, at, decay.expand(at.shape), "prod")
        return buf
    got = torch.gather(sl, -2, at) if picked is None else (picked if sl is buf else picked.mT)
    sl.scatter_(-2, at, got * decay)
    return buf


def dion2_decay(beta: float, keep: torch.Tensor | None, dtype: torch.dtype) -> float | torch.Tensor:
    """The error feedback's factor: ``beta``, or per matrix ``beta`` where ``keep`` (bool ``[C, 1, 1]``) and 1
    elsewhere, in ``dtype``."""
    if keep is None:
        return beta
    # beta rounded once, to ``dtype`` (float64 keeps it exact, as the float path does)
    return torch.ones(keep.shape, dtype=dtype, device=keep.device).masked_fill_(keep, beta)


def dion2_select_(
    buf: torch.Tensor, grad: torch.Tensor, decay: float | torch.Tensor, fraction: float, rows: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``M <- M + G`` in place, then ``(U, index)`` (`dion2_pick`) and the error feedback (`dion2_feedback_`)."""
    u, index = dion2_pick(buf.add_(grad), fraction, rows)
    dion2_feedback_(buf, index, decay, rows, picked=u)
    return u, index


def dion2_scatter(
    o: torch.Tensor, index: torch.Tensor, shape: torch.Size | tuple[int, ...], rows: bool = False
) -> torch.Tensor:
    """The ``[C, m, n]`` update: ``o`` (``Orth(U)``) at the selected slices, 0 elsewhere."""
    out = torch.zeros(shape, dtype=o.dtype, device=o.device)
    sl = _slices(out, rows)
    src = o if sl is out else o.mT
    sl.scatter_(-2, index.unsqueeze(-1).expand(-1, -1, sl.shape[-1]), src)
    return out
