"""Where a measurement came from: the commit of the code that produced it.

Benchmarks and reports record this beside their numbers. A tree with uncommitted changes to
tracked files is marked ``+dirty``: its numbers came from code no commit holds. Call it when the
measurement starts, not when it is written: a long run outlives later commits. Where the code runs
from a copy without its ``.git`` (a device machine is sent the working tree alone), the caller
names the commit in ``MANIPURE_COMMIT``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

_SOURCE = Path(__file__).resolve().parent


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], capture_output=True, text=True, check=True, cwd=_SOURCE, timeout=10
    ).stdout.strip()


def git_commit(short: bool = False) -> str:
    """``HEAD`` of the checkout this package runs from, with ``+dirty`` when tracked files have
    uncommitted changes. Outside a git checkout: ``MANIPURE_COMMIT`` if set, else ``"unknown"``."""
    try:
        commit = _git("rev-parse", "--short" if short else "--verify", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return os.environ.get("MANIPURE_COMMIT") or "unknown"
    return commit + ("+dirty" if dirty else "")
