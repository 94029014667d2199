"""A pytest plugin that records every distinct Triton kernel specialisation a test run launches.

    TRITON_INTERPRET=1 MANIPURE_RECORD_LAUNCHES=launches.json \\
        python -m pytest -p bench.record_triton_launches tests/test_triton_ops.py

Under the interpreter each launch goes through ``InterpretedFunction.run``; the plugin wraps it
and keeps one entry per (kernel, constexpr values, argument types, launch options), which is what
a compiled launch would specialise on (Triton also specialises integers equal to 1, recorded
here as such). ``bench/compile_sm90.py --from-tests`` runs this and compiles every entry for a
GPU, so a specialisation that the interpreter accepts and the compiler rejects shows up on a
machine without a GPU, and the count and compile time of what a GPU test run compiles is known.
"""

from __future__ import annotations

import inspect
import json
import os

import torch

_LAUNCH_OPTIONS = ("num_warps", "num_stages")
_variants: dict[str, dict] = {}


def describe_argument(name: str, value, constexpr: bool) -> dict:
    """What a compiled launch specialises on for one argument (``compile_sm90`` types it)."""
    if constexpr or value is None:
        return dict(name=name, kind="constexpr", value=value)
    if isinstance(value, torch.Tensor):
        return dict(name=name, kind="tensor", dtype=str(value.dtype).removeprefix("torch."))
    if isinstance(value, bool):
        return dict(name=name, kind="bool")
    if isinstance(value, int):
        return dict(name=name, kind="int", one=value == 1, wide=not -(2**31) <= value < 2**31)
    if isinstance(value, float):
        return dict(name=name, kind="float")
    raise TypeError(f"cannot describe argument {name}={value!r}")


def _record(function, args, kwargs) -> None:
    fn = function.fn
    values = dict(zip(function.arg_names, args)) | kwargs
    params = [
        describe_argument(p.name, values.get(p.name, p.default), "constexpr" in str(p.annotation))
        for p in inspect.signature(fn).parameters.values()
    ]
    variant = dict(
        module=fn.__module__,
        kernel=fn.__name__,
        params=params,
        options={k: kwargs[k] for k in _LAUNCH_OPTIONS if k in kwargs},
    )
    key = json.dumps(variant, sort_keys=True)
    _variants.setdefault(key, dict(variant, launches=0))["launches"] += 1


def pytest_configure(config):
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "record_triton_launches needs TRITON_INTERPRET=1 (it records interpreted launches)"
        )
    from triton.runtime.interpreter import InterpretedFunction

    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        _record(self, args, kwargs)
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = run


def pytest_unconfigure(config):
    path = os.environ.get("MANIPURE_RECORD_LAUNCHES")
    if path:
        with open(path, "w") as f:
            json.dump(sorted(_variants.values(), key=lambda v: json.dumps(v, sort_keys=True)), f, indent=1)
