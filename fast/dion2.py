"""Dion2's submatrix selection on torch ``[C, m, n]`` stacks (mirrors `muonlab.reference.dion2`, which states the
math; microsoft/dion 0a059a4 ``dion/dion2.py``)."""

from __future__ import annotations

import math

import torch

from muonlab.contract.shapes import dion2_select_dim

__all__ = ["dion2_scatter", "dion2_select_"]


def _slices(t: torch.Tensor, rows: bool) -> torch.Tensor:
    """``t`` with the selected dim as rows (a view: transposed for column selection; ``rows``: NorDion2's
    rows whatever the shape)."""
    return t if rows or dion2_select_dim(t.shape[-2], t.shape[-1]) == -2 else t.mT


def dion2_select_(
    buf: torch.Tensor,
    grad: torch.Tensor,
    beta: float,
    fraction: float,
    keep: torch.Tensor | None = None,
    rows: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``M <- M + G`` in place, then ``(U, index)``: ``U`` the selected slices (a new tensor) and ``index``
    ``[C, k]``; the buffer's selected slices are multiplied by ``beta`` where ``keep`` (bool ``[C, 1, 1]``; None:
    everywhere), so a skipped matrix's buffer stays unchanged bit for bit (its gradient is zero)."""
    buf.add_(grad)
    sl = _slices(buf, rows)
    k = max(1, math.ceil(fraction * sl.shape[-2]))
    scores = sl.abs().sum(dim=-1)  # [C, s]: each slice's L1 norm
    index = torch.topk(scores, k, dim=-1, sorted=False).indices  # the order is immaterial: Orth commutes with it
    at = index.unsqueeze(-1).expand(-1, -1, sl.shape[-1])
    picked = torch.gather(sl, -2, at)
    factor = beta if keep is None else torch.where(keep, beta, 1.0).to(buf.dtype)
    sl.scatter_(-2, at, picked * factor)  # error feedback, in place through the view
    return (picked if sl is buf else picked.mT), index


def dion2_scatter(
    o: torch.Tensor, index: torch.Tensor, shape: torch.Size | tuple[int, ...], rows: bool = False
) -> torch.Tensor:
    """The ``[C, m, n]`` update: ``o`` (``Orth(U)``) at the selected slices, 0 elsewhere."""
    out = torch.zeros(shape, dtype=o.dtype, device=o.device)
    sl = _slices(out, rows)
    src = o if sl is out else o.mT
    sl.scatter_(-2, index.unsqueeze(-1).expand(-1, -1, sl.shape[-1]), src)
    return out
