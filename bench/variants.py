"""One choice at a time against the shipped one: the loop that bench/tune_triton.py and
bench/tune_cuda.py share. Each variant's output is first compared with the shipped one's on the
same inputs (a difference over RED_GATE is reported and not timed), then timed; a variant that
does not compile or launch is a row with its error."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench.bench_ops import time_ms

RED_GATE = 1e-4


def planes(shape, device, count, seed) -> list[torch.Tensor]:
    """``count`` standard normal tensors of ``shape``, from one seeded generator."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(shape, device=device, generator=gen) for _ in range(count)]


def max_diff(a, b) -> float:
    """The largest absolute difference between two outputs (tensors, or tuples of them; None and
    empty entries skipped)."""
    a, b = (a,) if torch.is_tensor(a) else a, (b,) if torch.is_tensor(b) else b
    return max((x - y).abs().max().item() for x, y in zip(a, b) if x is not None and x.numel())


def time_variants(
    row: dict,
    run: Callable,
    variants: list[tuple[str, object]],
    context: Callable[[object], contextlib.AbstractContextManager],
    device: torch.device,
    smoke: bool,
) -> list[dict]:
    """Rows for the shipped choice and each ``(name, settings)`` variant: ``run()`` under
    ``context(settings)`` is the variant, and under ``context({})`` the shipped choice (timed the
    same way); ``row`` (op, direction, label, shape) heads each row, and each row records its
    settings. In ``smoke`` mode nothing is timed: that each variant runs and agrees is the check."""
    where = " ".join(str(row[k]) for k in ("op", "direction", "label"))
    rows = []
    with torch.no_grad():
        shipped = run()
        for name, settings in [("shipped", {})] + variants:
            this = dict(row, variant=name, settings=settings)
            try:
                with context(settings):
                    diff = max_diff(run(), shipped)
                    if diff > RED_GATE:
                        print(f"RED GATE {where} {name}: max diff {diff:.3g}; not timed")
                        rows.append(dict(this, red_gate=diff))
                        continue
                    p50 = p20 = p80 = float("nan")
                    if not smoke:
                        p50, p20, p80 = time_ms(run, device, smoke)
            except Exception as error:  # noqa: BLE001 - a variant that cannot launch is a finding
                print(f"{where} {name}: failed: {repr(error)[:200]}")
                rows.append(dict(this, error=repr(error)[:2000]))
                continue
            rows.append(dict(this, p50_ms=p50, p20_ms=p20, p80_ms=p80, max_diff_vs_shipped=diff))
            print(f"{where} {name:30s} p50 {p50:9.3f} ms  diff {diff:.1e}")
    shipped_ms = rows[0].get("p50_ms")
    for r in rows:
        if shipped_ms and "p50_ms" in r:
            r["speedup_vs_shipped"] = shipped_ms / r["p50_ms"]
    return rows


@dataclass
class Group:
    """One op, direction and shape: a call of its launcher on fixed inputs, the variants to time
    against the shipped choice, and how to put one in place (``context(settings)``)."""

    op: str
    direction: str
    label: str
    shape: tuple
    run: Callable
    context: Callable[[dict], contextlib.AbstractContextManager]
    variants: list[tuple[str, dict]]  # (name, settings)

    def time(self, device: torch.device, smoke: bool) -> list[dict]:
        row = dict(op=self.op, direction=self.direction, label=self.label, shape=list(self.shape))
        return time_variants(row, self.run, self.variants, self.context, device, smoke)
