"""Progress bars for long work, quiet enough for DVC and CI logs."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it") -> tqdm:
    """A tqdm bar on stderr; redraws often on a terminal, every 10 s in a log file."""
    interactive = sys.stderr.isatty()
    return tqdm(
        items,
        desc=desc,
        total=total,
        unit=unit,
        file=sys.stderr,
        mininterval=0.2 if interactive else 10.0,
        dynamic_ncols=interactive,
        disable=None if interactive else False,
    )
