"""One rank of the MoE / layout distributed run: `python _moe_worker.py RANK WORLD PORT OUT_JSON`.

MoE expert banks ``[E, out, in]`` (E matrices in one batched call) and ``matrix_dims`` layouts (transformers'
``Conv1D`` ``[in, out]``, a bank stored ``[E, in, out]``) under `muonlab.fast.Muon(distributed=...)`: a
DDP-wrapped model (``"replicated"``) and ``Shard(0)`` DTensor banks, the experts split over the ranks
(``"sharded"``, ``"gathered"``), each against one-process `Muon` bit for bit. Writes ``{check: [ok, detail]}``.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from _worker import Counter, bitwise, keys_same_on_all_ranks, same_on_all_ranks, total

from muonlab.contract import MuonSpec, get_preset

# Banks: 4 experts (2 per rank on 2 ranks), 3 experts (uneven), 1 expert (fewer than ranks).
BANKS: list[tuple[int, int, int]] = [(4, 8, 6), (3, 5, 7), (1, 6, 6)]


class Conv1D(torch.nn.Module):
    """transformers' Conv1D (weight ``[nx, nf]`` = ``[in, out]``), detected by `partition_params` by name."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf, self.nx = nf, nx
        self.weight = torch.nn.Parameter(torch.randn(nx, nf) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


class Experts(torch.nn.Module):
    """A dense-routed MoE bank ``[E, out, in]``: every expert sees every token, outputs averaged."""

    def __init__(self, e: int, d_in: int, d_out: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(e, d_out, d_in) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bi,eoi->bo", x, self.w) / self.w.shape[0]


def _moe_model(conv1d: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    first: torch.nn.Module = Conv1D(12, 6) if conv1d else torch.nn.Linear(6, 12, bias=False)
    return torch.nn.Sequential(first, torch.nn.Tanh(), Experts(4, 12, 8), torch.nn.Tanh(), Experts(3, 8, 1))


def check_ddp(spec: MuonSpec, conv1d: bool, world: int, steps: int = 3) -> tuple[bool, str]:
    """DDP model with expert banks (and a Conv1D, routed with matrix_dims (1, 0)) stepped by
    ``Muon(distributed="replicated")`` from `partition_params` vs one-process `Muon` stepping a copy on the same
    (DDP-averaged) gradients: bitwise, identical on ranks, each matrix orthogonalized once over the ranks."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from muonlab.fast import Muon, partition_params

    model, single = _moe_model(conv1d), _moe_model(conv1d)
    plan, plan1 = partition_params(model), partition_params(single)
    dims = plan.param_groups()[0]["matrix_dims"]
    ddp = DDP(model)
    opt = Muon(plan.param_groups(), spec, lr=0.02, distributed="replicated")
    opt_single = Muon(plan1.param_groups(), spec, lr=0.02)
    twin = _moe_model(False)  # the same network with nn.Linear ([out, in]) in place of the Conv1D ([in, out])
    with torch.no_grad():
        for p, q in zip(twin.parameters(), single.parameters(), strict=True):
            p.copy_(q.T if conv1d and q.ndim == 2 else q)
    opt_twin = Muon(partition_params(twin).param_groups(), spec, lr=0.02)
    with Counter() as c:  # counts distributed orthogonalizations only (one process does not go through them)
        for t in range(steps):
            g = torch.Generator().manual_seed(100 * t + dist.get_rank())
            x, y = torch.randn(5, 6, generator=g), torch.randn(5, 1, generator=g)
            opt.zero_grad()
            torch.nn.functional.mse_loss(ddp(x), y).backward()
            for p, q, r in zip(model.parameters(), single.parameters(), twin.parameters(), strict=True):
                q.grad = p.grad.clone()  # type: ignore[union-attr]
                r.grad = q.grad.T.contiguous() if conv1d and q.ndim == 2 else q.grad.clone()
            opt.step()
            opt_single.step()
            opt_twin.step()
    done = total(c.count)
    want = steps * (1 + 4 + 3)  # the first layer's matrix and 4 + 3 experts, each once over all ranks
    ok, msg = bitwise([p.detach() for p in model.parameters()], [q.detach() for q in single.parameters()])
    same = all(same_on_all_ranks(p) for p in model.parameters())
    twin_ok = all(
        torch.allclose(p.T if conv1d and p.ndim == 2 else p, r, rtol=1e-5, atol=1e-6)
        for p, r in zip(model.parameters(), twin.parameters(), strict=True)
    )
    keys = keys_same_on_all_ranks(opt.state_dict())
    want_dims = [(1, 0), None, None] if conv1d else [None, None, None]
    return (ok and same and twin_ok and keys and done == want and dims == want_dims), (
        f"params vs one process: {msg}; identical on ranks: {same}; equal to the nn.Linear twin: {twin_ok}; "
        f"matrices orthogonalized {done} (want {want}); matrix_dims {dims} (want {want_dims}); "
        f"state_dict keys identical: {keys}"
    )


def _full_banks(seed: int, layout: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    banks = [torch.randn(e, o, i, generator=g) for e, o, i in BANKS]
    return banks if layout == "out_in" else [b.transpose(1, 2).contiguous() for b in banks]


def check_banks_dtensor(spec: MuonSpec, mode: str, layout: str, world: int, steps: int = 3) -> tuple[bool, str]:
    """Expert banks as ``Shard(0)`` DTensors (experts split over the ranks) stepped by ``Muon(distributed=mode)``
    vs one process on the full banks and the rank-averaged gradients: bitwise. ``layout="in_out"`` stores the
    banks ``[E, in, out]`` with matrix_dims ``(2, 1)`` (the sharded dim stays the batch dim)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from muonlab.fast import Muon

    mesh = init_device_mesh("cpu", (world,))
    params = [torch.nn.Parameter(distribute_tensor(w, mesh, [Shard(0)])) for w in _full_banks(3, layout)]
    single = [torch.nn.Parameter(w) for w in _full_banks(3, layout)]
    dims = [None if layout == "out_in" else (2, 1)] * len(BANKS)
    opt = Muon([{"params": params, "matrix_dims": dims}], spec, lr=0.02, distributed=mode)  # type: ignore[arg-type]
    opt_single = Muon([{"params": single, "matrix_dims": dims}], spec, lr=0.02)
    # the layout must not change the math: [E, in, out] with (2, 1) steps as [E, out, in] does
    twin = [torch.nn.Parameter(w) for w in _full_banks(3, "out_in")]
    opt_twin = Muon(twin, spec, lr=0.02)
    with Counter() as c:
        for t in range(steps):
            g = torch.Generator().manual_seed(500 + 31 * t + dist.get_rank())
            avg = [torch.randn(w.shape, generator=g) for w in single]
            for a in avg:
                dist.all_reduce(a)
                a.div_(world)
            for p, q, a in zip(params, single, avg, strict=True):
                p.grad = distribute_tensor(a, mesh, [Shard(0)])
                q.grad = a.clone()
            for p2, a in zip(twin, avg, strict=True):
                p2.grad = a.clone() if layout == "out_in" else a.transpose(1, 2).contiguous()
            opt.step()
            opt_single.step()
            opt_twin.step()
    done = total(c.count)
    want = steps * sum(e for e, _, _ in BANKS) * (world if mode == "gathered" else 1)
    fulls = [p.detach().full_tensor() for p in params]  # type: ignore[attr-defined]
    ok, msg = bitwise(fulls, [q.detach() for q in single])
    moved = all(not torch.equal(f, w) for f, w in zip(fulls, _full_banks(3, layout), strict=True))
    as_out_in = [f if layout == "out_in" else f.transpose(1, 2) for f in fulls]
    twin_ok = all(torch.allclose(f, w, rtol=1e-5, atol=1e-6) for f, w in zip(as_out_in, twin, strict=True))
    keys = keys_same_on_all_ranks(opt.state_dict(), shapes=False)
    return ok and moved and twin_ok and keys and done == want, (
        f"params vs one process: {msg}; moved: {moved}; equal to the [E, out, in] twin: {twin_ok}; matrices "
        f"orthogonalized {done} (want {want}); state_dict keys identical: {keys}"
    )


def main() -> None:
    rank, world, port, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    fp32 = get_preset("keller").replace(compute_dtype="float32")
    normuon = get_preset("modded_normuon").replace(compute_dtype="float32")
    checks: dict[str, Callable[[], tuple[bool, str]]] = {
        "moe_ddp_replicated_keller": lambda: check_ddp(fp32, False, world),
        "moe_ddp_replicated_conv1d_normuon": lambda: check_ddp(normuon, True, world),
        "moe_banks_sharded_normuon": lambda: check_banks_dtensor(normuon, "sharded", "out_in", world),
        "moe_banks_gathered_keller": lambda: check_banks_dtensor(fp32, "gathered", "out_in", world),
        "moe_banks_in_out_sharded_keller": lambda: check_banks_dtensor(fp32, "sharded", "in_out", world),
    }
    results: dict[str, list[Any]] = {}
    for name, fn in checks.items():
        try:
            ok, detail = fn()
        except Exception:  # recorded, so one failure does not hide the others
            ok, detail = False, traceback.format_exc()
        results[name] = [bool(ok), detail]
    dist.barrier()
    dist.destroy_process_group()
    with open(out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
    # Results are on disk: skip interpreter teardown, where gloo's background threads can abort the process
    # ("terminate called without an active exception", exit -6) after a complete, correct run.
    sys.stdout.flush()
    os._exit(0)
