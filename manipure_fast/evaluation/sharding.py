"""Multi-process sharding of an evaluation (``torchrun --nproc_per_node N``) with exact
remainders: rank r of W gets the contiguous slice of ``n // W + (r < n % W)`` samples, so every
sample is counted exactly once and no padding duplicates appear (unlike DistributedSampler)."""

from __future__ import annotations

import os

import torch


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s share of ``n`` samples."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def distributed_context() -> tuple[int, int]:
    """(rank, world_size) from torchrun's environment, initialising the process group when there
    is more than one process (nccl on CUDA, gloo otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def sum_across_ranks(counts: dict[str, int], device: torch.device) -> dict[str, int]:
    """All-reduce (sum) integer counters; a no-op in a single process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return dict(counts)
    keys = sorted(counts)
    values = torch.tensor([counts[k] for k in keys], dtype=torch.int64, device=device)
    dist.all_reduce(values)
    return dict(zip(keys, values.tolist()))
