"""Device code: Triton kernels (``kernels/triton``). Installed as ``manipure_fast.kernels``.
Nothing here knows the public API; the ops layer (``manipure_fast.ops``) launches these."""
