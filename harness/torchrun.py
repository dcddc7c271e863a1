"""Multi-process runs under ``torchrun`` (docs/harness.md "Several GPUs").

`setup` reads ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` from the environment torchrun sets; with
``WORLD_SIZE > 1`` it initializes the default process group (``"nccl"`` on CUDA, ``"gloo"`` on the CPU)
and, on CUDA, binds this process to ``cuda:LOCAL_RANK``. With one process (or no launcher) it is a no-op
and every helper below reduces to the single-process behaviour.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

T = TypeVar("T")

#: ``train.distributed`` values a DDP run accepts (``"sharded"`` / ``"gathered"`` need FSDP2 parameters).
DDP_MODES = ("replicated", "none")


@dataclass(frozen=True)
class DistEnv:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    owns_group: bool = False
    """True when `setup` initialized the process group (so `teardown` destroys it)."""

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}: expected an integer in the environment, got {raw!r}") from None


def env_world() -> tuple[int, int, int]:
    """``(WORLD_SIZE, RANK, LOCAL_RANK)`` from the environment (``(1, 0, 0)`` when unset)."""
    world, rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK / WORLD_SIZE: inconsistent environment (RANK={rank}, WORLD_SIZE={world})")
    return world, rank, local


def setup(device: torch.device) -> tuple[DistEnv, torch.device]:
    """Initialize the process group when ``WORLD_SIZE > 1``; returns the env and this rank's device."""
    import torch.distributed as dist

    world, rank, local = env_world()
    if world == 1:
        return DistEnv(), device
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK: {local} but only {torch.cuda.device_count()} CUDA device(s) visible")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        owns = True
    if dist.get_world_size() != world or dist.get_rank() != rank:
        raise ValueError(
            f"WORLD_SIZE / RANK: environment ({world}, {rank}) disagrees with the process group "
            f"({dist.get_world_size()}, {dist.get_rank()})"
        )
    return DistEnv(world_size=world, rank=rank, local_rank=local, owns_group=owns), device


def teardown(env: DistEnv, *, sync: bool = True) -> None:
    """Destroy the group `setup` created; ``sync`` first waits for every rank (so no rank tears down its
    connections while a peer still finishes the last collective). Pass ``sync=False`` on an error path."""
    import torch.distributed as dist

    if env.owns_group and dist.is_initialized():
        if sync:
            dist.barrier()
        dist.destroy_process_group()


def local_batch_size(batch_size: int, world_size: int) -> int:
    """This rank's share of the global ``train.batch_size``."""
    if batch_size % world_size:
        raise ValueError(
            f"train.batch_size: {batch_size} is not divisible by the world size {world_size} "
            f"(batch_size is global: every rank takes batch_size / WORLD_SIZE sequences)"
        )
    return batch_size // world_size


def rank_slice(x: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Rows ``[rank * b, (rank + 1) * b)`` of a global batch, ``b = len(x) / world_size``."""
    if not env.enabled:
        return x
    b = local_batch_size(x.shape[0], env.world_size)
    return x[env.rank * b : (env.rank + 1) * b]


def mean(value: torch.Tensor, env: DistEnv) -> float:
    """The mean of a scalar over the ranks (SUM then divide; the value itself on one process)."""
    if not env.enabled:
        return float(value)
    import torch.distributed as dist

    t = value.detach().reshape(1).to(torch.float32).clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t) / env.world_size


def any_rank(flag: bool, env: DistEnv, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on at least one (keeps stop decisions in lockstep)."""
    if not env.enabled:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(env: DistEnv) -> None:
    if env.enabled:
        import torch.distributed as dist

        dist.barrier()


def main_first(env: DistEnv, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0, then on the other ranks (e.g. fill a cache once, then read it)."""
    if not env.enabled:
        return fn()
    if env.is_main:
        out = fn()
        barrier(env)
        return out
    barrier(env)
    return fn()


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not env.enabled:
        return obj
    import torch.distributed as dist

    box = [obj if env.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
