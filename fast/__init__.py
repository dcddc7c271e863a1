"""muonlab.fast: drop-in torch optimizers for the Muon family, with Triton kernels on CUDA."""
