"""The one entry-point convention: `python -m stages.<name> [--params FILE] [--traceback]`.

A stage module defines `main(params)` and ends with `run_stage("<name>", Params, main)`. User-facing
problems (`StageError`) print as one line naming the input and the problem, with exit status 2 and
no traceback unless `--traceback` (or STAGES_TRACEBACK=1) asks for one.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from stages.common.errors import StageError
from stages.common.params import PARAMS_FILE, load_section

P = TypeVar("P")

EXIT_STAGE_ERROR = 2


def run_stage(name: str, params_type: type[P], main: Callable[[P], None]) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m stages.{name}", description=main.__doc__)
    parser.add_argument("--params", type=Path, default=PARAMS_FILE, help="params file (params.yaml)")
    parser.add_argument("--traceback", action="store_true", help="show tracebacks of errors")
    args = parser.parse_args()
    show_traceback = args.traceback or os.environ.get("STAGES_TRACEBACK") == "1"
    logging.basicConfig(level=logging.INFO, format=f"{name}: %(message)s", stream=sys.stderr)
    started = time.perf_counter()
    try:
        main(load_section(params_type, name, args.params))
    except StageError as exc:
        if show_traceback:
            raise
        print(f"{name}: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_STAGE_ERROR)
    except KeyboardInterrupt:
        print(f"{name}: interrupted; no output was replaced", file=sys.stderr)
        sys.exit(130)
    logging.getLogger().info("done in %.1f s", time.perf_counter() - started)
