"""Suite-wide settings: hypothesis profiles and the Triton interpreter on machines without CUDA.

`HYPOTHESIS_PROFILE=thorough` (used by `nox -s conformance`) draws more examples; the default `ci` profile
keeps `nox -s tests` fast on two cores and is derandomized (the same examples on every run, so CI is
reproducible); `thorough` draws fresh examples each run and prints the seed of a failure.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# Triton reads TRITON_INTERPRET when a kernel is defined, so it must be set before any kernel module
# is imported; without CUDA the interpreter is the only way to execute the kernels.
if os.environ.get("MUONLAB_DEVICE", "cpu") != "cuda":
    os.environ.setdefault("TRITON_INTERPRET", "1")

settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
