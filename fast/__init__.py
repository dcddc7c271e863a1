"""muonlab.fast: drop-in torch optimizers for the Muon family, with Triton kernels on CUDA.

* `Muon` — a ``torch.optim.Optimizer`` for every `muonlab.reference.MuonSpec` / preset;
* `from_upstream` — the spec of a named upstream optimizer from its own keywords (`muonlab.contract.upstream`);
* `orthogonalize` — ``Orth(X)`` on tensors (batched over leading dims);
* `partition_params` / `ParamPlan` — route matrix weights to Muon and the rest to AdamW;
* `qk_clip_` — MuonClip's post-step QK-Clip, in place, batched over layers;
* `SlowComputeDtypeWarning` — bf16 / fp16 Newton-Schulz asked of a CPU without a native matmul for it.

The math mirrors `muonlab.reference` function for function (same names where a concept exists in both).
"""

from muonlab.contract import PRESETS, MuonSpec, from_upstream, get_preset, resolve_spec

from .backend import SlowComputeDtypeWarning
from .optimizer import Muon
from .orthogonalize import orthogonalize
from .partition import ParamPlan, partition_params
from .qk_clip import qk_clip_

__all__ = [
    "PRESETS",
    "Muon",
    "MuonSpec",
    "ParamPlan",
    "SlowComputeDtypeWarning",
    "from_upstream",
    "get_preset",
    "orthogonalize",
    "partition_params",
    "qk_clip_",
    "resolve_spec",
]
