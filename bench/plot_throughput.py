"""Throughput against batch size from ``bench_purifier.py`` results.

    python bench/plot_throughput.py bench/results/purifier-*.json -o bench/results/throughput.png

One panel per (model, preset); one line per provider; images/s on a log scale. Only measured rows
are drawn: the plot shows what the JSON holds, nothing interpolated.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def load_rows(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        rows += [r for r in json.loads(path.read_text()) if r.get("op") == "purify"]
    if not rows:
        raise SystemExit(f"no purifier rows in {[str(p) for p in paths]}")
    return rows


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        panels[(r["model"], r["preset"])][r["provider"]][r["batch"]] = r["images_per_s"]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, ((model, preset), providers) in zip(axes[0], sorted(panels.items())):
        for provider, points in sorted(providers.items()):
            batches = sorted(points)
            ax.plot(batches, [points[b] for b in batches], marker="o", label=provider)
        ax.set(
            xscale="log", yscale="log", xlabel="batch size", ylabel="images / s", title=f"{model}, {preset}"
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    gpu = rows[0].get("gpu") or rows[0].get("cpu")
    fig.suptitle(f"Purification throughput ({gpu}, commit {str(rows[0].get('commit'))[:7]})")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument(
        "-o", "--out", type=Path, default=Path(__file__).parent / "results" / "throughput.png"
    )
    args = parser.parse_args(argv)
    plot(load_rows(args.results), args.out)


if __name__ == "__main__":
    main()
