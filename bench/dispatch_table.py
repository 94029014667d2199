"""Write the auto-dispatch table (``manipure_fast/ops/dispatch_table.json``) from measured op rows.

    python bench/dispatch_table.py bench/results/ops-*.json

For each op and benchmarked shape, the providers that passed their correctness gate, fastest
first (p50), become one entry; ``manipure_fast.ops.dispatch`` reads them. Rows must come from one
GPU: a table mixing GPUs would rank nothing. The table keeps the GPU, commit and date of the rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from manipure_fast.ops.dispatch import PROVIDER_BACKENDS, TABLE_PATH, parse_table  # noqa: E402


def build_table(rows: list[dict]) -> dict:
    gpus = {row.get("gpu") for row in rows}
    if len(gpus) != 1 or None in gpus:
        raise ValueError(f"the rows must come from one GPU, got {sorted(map(str, gpus))}")
    groups: dict[tuple, dict[str, float]] = {}
    for row in rows:
        backend = PROVIDER_BACKENDS.get(row["provider"])
        if backend is None or row.get("direction", "forward") != "forward":
            continue  # the reference-structure baseline is not a backend; dispatch ranks forwards
        key = (row["op"], *row["shape"])
        timings = groups.setdefault(key, {})
        timings[backend] = min(row["p50_ms"], timings.get(backend, float("inf")))
    entries = []
    for (op, b, c, h, w), timings in sorted(groups.items()):
        order = sorted(timings, key=timings.get)
        entries.append(dict(op=op, height=h, width=w, planes=b * c, order=order, p50_ms=timings))
    first = rows[0]
    provenance = {k: first.get(k) for k in ("gpu", "sm_count", "torch", "triton", "cuda", "commit", "date")}
    return dict(provenance=provenance, entries=entries)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", nargs="+", type=Path, help="bench_ops.py JSON files")
    parser.add_argument("-o", "--out", type=Path, default=TABLE_PATH)
    args = parser.parse_args(argv)
    rows = [row for path in args.results for row in json.loads(path.read_text())]
    table = build_table(rows)
    parse_table(table)  # what the library will read back
    args.out.write_text(json.dumps(table, indent=2) + "\n")
    gpu = table["provenance"]["gpu"]
    print(f"wrote {args.out}: {len(table['entries'])} entries from {len(rows)} rows on {gpu}")


if __name__ == "__main__":
    main()
