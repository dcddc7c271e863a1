"""Kernel suite setup: the Triton interpreter on machines without CUDA, and the device the tests run on.

Triton reads ``TRITON_INTERPRET`` when a kernel is defined, so it is set here, before any kernel module is
imported (only when CUDA is unavailable; ``MUONLAB_DEVICE=cuda`` runs the compiled kernels on the GPU).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

if os.environ.get("MUONLAB_DEVICE", "cpu") != "cuda" and not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
