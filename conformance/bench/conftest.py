"""Benchmark suite setup (run with ``pytest conformance/bench --benchmark-only``; the default test run
ignores this folder).

Benchmarks time compiled kernels: on a CUDA machine the Triton interpreter is switched off here even if
the suite-wide conftest turned it on (kernel modules are imported only when a case is built, after this).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

if torch.cuda.is_available():
    os.environ.pop("TRITON_INTERPRET", None)

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
