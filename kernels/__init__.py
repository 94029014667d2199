"""Device code: Triton kernels (``kernels/triton``) and CUDA C++ sources (``kernels/cuda``, compiled by
the cuda backend at first use). Installed as ``manipure_fast.kernels``.
Nothing here knows the public API; the ops layer (``manipure_fast.ops``) launches these."""
