"""The noise every fused kernel adds: given, or drawn from Philox at the counters all kernels
share, ``offset + element index`` under the key ``seed`` (both read from the device), so the
MANI and exchange kernels draw the same normals for the same (seed, offset, element)."""

import triton
import triton.language as tl


@triton.jit
def _seed_offset(rng_ptr, NOISE_GIVEN: tl.constexpr):
    """The Philox key and base counter from the int64 ``[2]`` device state (unused with given noise)."""
    if NOISE_GIVEN:
        seed = 0
        offset = 0
    else:
        seed = tl.load(rng_ptr)
        offset = tl.load(rng_ptr + 1)
    return seed, offset


@triton.jit
def _noise(
    noise_ptr,
    noise_out_ptr,
    seed,
    offset,
    offs,
    mask,
    NOISE_GIVEN: tl.constexpr,
    STORE_NOISE: tl.constexpr,
):
    """z at element indices ``offs``: loaded when given, else drawn (and stored when the backward
    needs it)."""
    if NOISE_GIVEN:
        z = tl.load(noise_ptr + offs, mask=mask, other=0.0)
    else:
        z = tl.randn(seed, offset + offs)
        if STORE_NOISE:
            tl.store(noise_out_ptr + offs, z, mask=mask)
    return z
