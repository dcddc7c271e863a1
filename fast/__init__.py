"""muonlab.fast: drop-in torch optimizers for the Muon family, with Triton kernels on CUDA.

* `Muon` — a ``torch.optim.Optimizer`` for every `muonlab.reference.MuonSpec` / preset;
* `orthogonalize` — ``Orth(X)`` on tensors (batched over leading dims);
* `partition_params` / `ParamPlan` — route matrix weights to Muon and the rest to AdamW.

The math mirrors `muonlab.reference` function for function (same names where a concept exists in both).
"""

from muonlab.contract import PRESETS, MuonSpec, get_preset, resolve_spec

from .backend import use_triton
from .optimizer import Muon
from .orthogonalize import orthogonalize
from .partition import ParamPlan, partition_params

__all__ = [
    "PRESETS",
    "Muon",
    "MuonSpec",
    "ParamPlan",
    "get_preset",
    "orthogonalize",
    "partition_params",
    "resolve_spec",
    "use_triton",
]
