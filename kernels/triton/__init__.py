"""Triton kernels. Importing this package imports triton; the ops layer does so only when the
triton backend is used."""
