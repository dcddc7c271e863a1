"""Row splits (param-group key ``"split"``, `muonlab.contract.RowSplit`): uneven blocks (dion ``split_sizes``, a
fused ``[Q; K; V]``) and Megatron's split QKV per query group. A split parameter steps as its blocks, each a
parameter of its own: the reference's step on `muonlab.reference.row_blocks`, put back by `from_row_blocks`
(docs/fast.md, "Row splits and Megatron's split QKV"); Megatron's reshaping is transcribed from its source below."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from fasthelpers import FP32_REL, np64, rel

import muonlab.reference as R
from muonlab.contract import RowSplit, update_scale
from muonlab.fast import Muon

SPLITS = {
    "uneven": RowSplit((10, 4, 4)),  # dion split_sizes / a fused [Q; K; V] with 10 query rows and 4 KV rows each
    "megatron": RowSplit((6, 2, 2), groups=2),  # GQA: 2 query groups, 3 heads of 2 rows per group, 1 K and 1 V
}


def _grads(shape: tuple[int, ...], n: int, seed: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


@pytest.mark.parametrize("preset", ["keller", "moonlight", "modded_normuon", "nanochat", "muonh"])
@pytest.mark.parametrize("kind", sorted(SPLITS))
@pytest.mark.parametrize("layout", ["linear", "conv1d"])
def test_split_step_is_the_reference_on_the_blocks(preset: str, kind: str, layout: str) -> None:
    """Three steps with the preset's weight decay (nanochat: cautious; muonh: the hyperball step), a second plain
    parameter in the same group, and the split matrix stored ``[out, in]`` or ``[in, out]`` (GPT-2 ``Conv1D``)."""
    split = SPLITS[kind]
    n = 12
    spec = R.get_preset(preset).replace(compute_dtype="float32")
    if spec.sphere == "none":
        spec = spec.replace(weight_decay=0.1)
    w0 = torch.randn(split.rows, n, generator=torch.Generator().manual_seed(1))
    other0 = torch.randn(split.rows, n, generator=torch.Generator().manual_seed(2))
    p = torch.nn.Parameter(w0.clone() if layout == "linear" else w0.T.contiguous())
    other = torch.nn.Parameter(other0.clone())
    group: dict[str, object] = {"params": [p, other], "split": [split, None]}
    if layout == "conv1d":
        group["matrix_dims"] = [(1, 0), None]
    opt = Muon([group], spec, backend="torch")
    whole = torch.nn.Parameter(w0.clone())
    opt_whole = Muon([whole], spec, backend="torch")
    blocks = R.row_blocks(np64(w0), split)
    states = [R.init_muon_state(b, spec) for b in blocks]
    wo, so = np64(other0), R.init_muon_state(np64(other0), spec)
    for g, go in zip(_grads((split.rows, n), 3), _grads((split.rows, n), 3, seed=4), strict=True):
        p.grad = g.clone() if layout == "linear" else g.T.contiguous()
        other.grad = go.clone()
        whole.grad = g.clone()
        opt.step()
        opt_whole.step()
        stepped = [
            R.muon_step(b, gb, st, spec, lr=spec.lr)
            for b, gb, st in zip(blocks, R.row_blocks(np64(g), split), states, strict=True)
        ]
        blocks, states = [b for b, _ in stepped], [st for _, st in stepped]
        wo, so = R.muon_step(wo, np64(go), so, spec, lr=spec.lr)
    got = np64(p.detach() if layout == "linear" else p.detach().T)
    want = R.from_row_blocks(blocks, split)
    w0n = np64(w0)
    assert rel(got - w0n, want - w0n) <= FP32_REL
    assert rel(np64(other.detach()) - np64(other0), wo - np64(other0)) <= FP32_REL
    # a different map from the whole-matrix step (the polar factor of a matrix is not its blocks' polar factors)
    assert rel(np64(whole.detach()) - w0n, got - w0n) > 1e-2


def _megatron_orthogonalize(grad: np.ndarray, split_shapes: list[int], orth_and_scale: object) -> np.ndarray:
    """``TensorParallelMuon.orthogonalize`` with ``split_qkv`` (Megatron-LM
    megatron/core/optimizer/emerging_optimizers.py @000a717), transcribed to NumPy: the gradient viewed as
    ``[num_query_groups, sum(split_shapes), -1]``, split along dim 1, each part reshaped to ``[-1, in]``,
    orthogonalized and scaled on its own shape, viewed back as ``[num_query_groups, -1, in]`` and concatenated along
    dim 1."""
    fn = orth_and_scale
    assert callable(fn)
    num_query_groups = grad.shape[0] // sum(split_shapes)
    grouped = grad.reshape(num_query_groups, sum(split_shapes), -1)
    cuts = np.cumsum(split_shapes)[:-1]
    parts = [g.reshape(-1, grad.shape[-1]) for g in np.split(grouped, cuts, axis=1)]
    done = [fn(g).reshape(num_query_groups, -1, grad.shape[-1]) for g in parts]
    out: np.ndarray = np.concatenate(done, axis=1).reshape(grad.shape)
    return out


def test_megatron_split_qkv_is_row_blocks_of_the_query_groups() -> None:
    """The V8.6 recipe: a GQA layout of 8 heads in 2 query groups, head dim 16 (Megatron's ``_get_qkv_split_shapes``:
    ``[heads / groups * kv_channels, kv_channels, kv_channels]``), against `row_blocks` / `from_row_blocks`; and
    the split differs from orthogonalizing the fused matrix."""
    heads, groups, d_head, hidden = 8, 2, 16, 48
    shapes = [heads // groups * d_head, d_head, d_head]
    split = RowSplit(tuple(shapes), groups=groups)
    spec = R.from_upstream("megatron")
    grad = np.random.default_rng(7).standard_normal((groups * sum(shapes), hidden))

    def orth_and_scale(x: np.ndarray) -> np.ndarray:
        out: np.ndarray = R.orthogonalize(x, spec) * update_scale(x.shape, spec)
        return out

    want = _megatron_orthogonalize(grad, shapes, orth_and_scale)
    got = R.from_row_blocks([orth_and_scale(b) for b in R.row_blocks(grad, split)], split)
    np.testing.assert_array_equal(got, want)
    assert rel(orth_and_scale(grad), want) > 1e-1
    q = R.row_blocks(grad, split)[0]  # all query heads of both groups, group-major
    np.testing.assert_array_equal(q[: shapes[0]], grad[: shapes[0]])
    np.testing.assert_array_equal(q[shapes[0] :], grad[sum(shapes) : sum(shapes) + shapes[0]])


def test_split_state_round_trips_and_skips() -> None:
    """The blocks' state is saved under ``"<key>.<j>"``; a resumed run is bit-identical; a non-finite gradient
    under ``nonfinite="skip"`` leaves every block of its parameter unchanged."""
    split = SPLITS["megatron"]
    spec = R.get_preset("modded_normuon").replace(compute_dtype="float32", nonfinite="skip")

    def run(opt: Muon, p: torch.nn.Parameter, grads: list[torch.Tensor]) -> None:
        for g in grads:
            p.grad = g.clone()
            opt.step()

    grads = _grads((split.rows, 8), 4)
    p1 = torch.nn.Parameter(torch.randn(split.rows, 8, generator=torch.Generator().manual_seed(2)))
    p2 = torch.nn.Parameter(p1.detach().clone())
    o1 = Muon([{"params": [p1], "split": [split]}], spec, backend="torch")
    run(o1, p1, grads)
    o2 = Muon([{"params": [p2], "split": [split]}], spec, backend="torch")
    run(o2, p2, grads[:2])
    saved = copy.deepcopy(o2.state_dict())
    assert {k: tuple(v.shape) for k, v in saved["state"][0].items() if k.startswith("momentum")} == {
        "momentum_buffer.0": (12, 8),
        "momentum_buffer.1": (4, 8),
        "momentum_buffer.2": (4, 8),
    }
    o3 = Muon([{"params": [p2], "split": [split]}], spec, backend="torch")
    o3.load_state_dict(saved)
    run(o3, p2, grads[2:])
    assert torch.equal(p1, p2)
    before = (p1.detach().clone(), copy.deepcopy(o1.state_dict()["state"]))
    bad = grads[0].clone()
    bad[0, 0] = float("nan")
    run(o1, p1, [bad])
    assert torch.equal(p1, before[0])
    for key, value in o1.state_dict()["state"][0].items():
        assert torch.equal(value, before[1][0][key]), key


def test_split_is_validated() -> None:
    p = torch.nn.Parameter(torch.randn(12, 8))
    with pytest.raises(ValueError, match=r"split'\]\[0\]: 1 group\(s\) of sizes \[4, 4\] cover 8 rows"):
        Muon([{"params": [p], "split": [[4, 4]]}])
    with pytest.raises(ValueError, match=r"split'\]\[0\]: row sizes must be positive"):
        Muon([{"params": [p], "split": [[12, 0]]}])
    with pytest.raises(ValueError, match="only Muon groups"):
        Muon([{"params": [p], "split": [[6, 6]], "algorithm": "adamw"}])
    with pytest.raises(ValueError, match="'heads' or 'split', not both"):
        Muon([{"params": [p], "split": [[6, 6]], "heads": [2]}])
    with pytest.raises(ValueError, match="is a batch"):
        Muon([{"params": [torch.nn.Parameter(torch.randn(2, 12, 8))], "split": [[6, 6]]}])
    with pytest.raises(ValueError, match="groups must be a positive int"):
        Muon([{"params": [p], "split": [{"sizes": [3, 3], "groups": 0}]}])
    assert Muon([{"params": [p], "split": [[12]]}]).param_groups[0]["split"] == [None]  # one block: no split
    assert Muon([{"params": [p], "split": [{"sizes": [4, 1, 1], "groups": 2}]}]).param_groups[0]["split"] == [
        RowSplit((4, 1, 1), 2)
    ]
