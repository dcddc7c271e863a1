"""Triton kernels, each with a torch twin."""
