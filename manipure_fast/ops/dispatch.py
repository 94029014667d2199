"""The measured auto-dispatch table: which backend ``"auto"`` tries first, per op and shape, on a GPU.

``dispatch_table.json`` beside this file is written by ``bench/dispatch_table.py`` from the
``bench/bench_ops.py`` rows measured on a GPU, and committed with them. Each entry is one
benchmarked shape and the capable providers from fastest to slowest::

    {"op": "exchange_update", "height": 32, "width": 32, "planes": 1536,
     "order": ["cuda", "triton", "reference"], "p50_ms": {...}}

For a call, the entry of the same op whose plane size and plane count are nearest (in log scale,
plane size first) gives the order; ``registry.select_backend`` then takes the first capable
backend of it. Without a table, or for tensors off the GPU (the Triton interpreter is a test tool,
not a deployment), ``registry.AUTO_ORDER`` decides.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

TABLE_PATH = Path(__file__).with_name("dispatch_table.json")
# bench_ops' provider names -> backends ("torch-eager" is the vectorised reference).
PROVIDER_BACKENDS = {"triton": "triton", "cuda": "cuda", "torch-eager": "reference"}


@dataclass(frozen=True)
class MeasuredShape:
    op: str
    height: int
    width: int
    planes: int
    order: tuple[str, ...]

    def distance(self, height: int, width: int, planes: int) -> tuple[float, float]:
        side = abs(math.log(self.height * self.width) - math.log(height * width))
        return side, abs(math.log(self.planes) - math.log(planes))


def parse_table(document: dict) -> tuple[MeasuredShape, ...]:
    """The entries of a table document; raises ``ValueError`` naming a malformed entry."""
    entries = []
    for i, entry in enumerate(document.get("entries", [])):
        try:
            order = tuple(entry["order"])
            row = MeasuredShape(
                entry["op"], int(entry["height"]), int(entry["width"]), int(entry["planes"]), order
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"dispatch table entry {i} is malformed ({error!r}): {entry}") from error
        unknown = set(order) - set(PROVIDER_BACKENDS.values())
        if unknown or not order or min(row.height, row.width, row.planes) < 1:
            raise ValueError(
                f"dispatch table entry {i} names unknown backends {sorted(unknown)} or bad sizes"
            )
        entries.append(row)
    return tuple(entries)


@functools.lru_cache(maxsize=4)
def load_table(path: Path = TABLE_PATH) -> tuple[MeasuredShape, ...]:
    """The committed table's entries, or none when no table has been measured."""
    if not path.exists():
        return ()
    return parse_table(json.loads(path.read_text()))


def measured_order(
    op: str, shape: tuple[int, ...], table: tuple[MeasuredShape, ...] | None = None
) -> tuple[str, ...] | None:
    """The fastest-first backends measured nearest to ``shape`` ([B, C, H, W]), or None."""
    entries = [e for e in (load_table() if table is None else table) if e.op == op]
    if not entries:
        return None
    b, c, h, w = shape
    planes = max(b * c, 1)
    return min(entries, key=lambda e: e.distance(h, w, planes)).order
