"""Triton kernels, each with a torch twin. Import the modules directly (they import triton):

* `muonlab.fast.kernels.symmetric`: ``xxt(x, out=None)``, ``ba_plus_caa(a, b, c, out=None)`` and their
  ``*_torch`` twins; ``supports(dtype)`` (float32, bfloat16, float16).
* `muonlab.fast.kernels.elementwise`: ``fused_momentum(buf, grad, *, beta, form, nesterov)`` and its
  ``fused_momentum_torch`` twin; ``supports(dtype)`` (float32, bfloat16, float16, float64).

Each module also exposes its launch tables (``launch_table`` / ``momentum_table``, block
configs per device family) and ``variants(family)``, the compiled forms that
``conformance/kernels/test_kern_compile.py`` builds ahead of time for sm_80 and sm_90.
"""
