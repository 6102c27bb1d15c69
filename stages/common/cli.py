"""The one entry-point convention: `python -m stages.<area>.<module> [--params FILE] [--traceback]`.

A stage module defines `main(params)` and ends with `run_stage("<name>", Params, main)`. User-facing
problems (`StageError`) print as one line naming the input and the problem, with exit status 2 and
no traceback unless `--traceback` (or STAGES_TRACEBACK=1) asks for one.

`main` may return a mapping of timings and throughputs: they are not results, so they go to the
run log `logs/<stage>.jsonl` (one JSON line per run, ignored by Git and undeclared in dvc.yaml, so
they never change dvc.lock), and the stage prints one summary line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from stages.common.errors import Interrupted, StageError
from stages.common.params import PARAMS_FILE, load_section, parse_overrides

P = TypeVar("P")

EXIT_STAGE_ERROR = 2
RUN_LOG_DIR = Path(os.environ.get("STAGES_RUN_LOG", "logs"))


def run_stage(
    name: str, params_type: type[P], main: Callable[[P], Mapping[str, Any] | None]
) -> None:
    entry = getattr(sys.modules["__main__"].__spec__, "name", None) or f"stages.<area>.{name}"
    parser = argparse.ArgumentParser(prog=f"python -m {entry}", description=main.__doc__)
    parser.add_argument(
        "--params", type=Path, default=PARAMS_FILE, help="params file (params.yaml)"
    )
    parser.add_argument("--traceback", action="store_true", help="show tracebacks of errors")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="lay a value over the stage's params section (a DVC matrix stage's variant)",
    )  # fmt: skip
    args = parser.parse_args()
    show_traceback = args.traceback or os.environ.get("STAGES_TRACEBACK") == "1"
    quiet_third_party(name)
    started = time.perf_counter()
    try:
        overrides = parse_overrides(args.set)
        timings = main(load_section(params_type, name, args.params, overrides)) or {}
    except StageError as exc:
        if show_traceback:
            raise
        print(f"{name}: error: {in_params_file(exc, args.params)}", file=sys.stderr)
        sys.exit(EXIT_STAGE_ERROR)
    except Interrupted as exc:
        print(f"{name}: interrupted; {exc}", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print(f"{name}: interrupted; no output was replaced", file=sys.stderr)
        sys.exit(130)
    seconds = time.perf_counter() - started
    append_run_log(name, {"seconds": round(seconds, 3), **timings})
    logging.getLogger(name).info("done in %.1f s (run log: %s)", seconds, run_log_path(name))


def in_params_file(exc: StageError, params: Path) -> str:
    """The one-line message, naming the params file actually read.

    Stages name a params key as `params.yaml: section.key` (the convention); with `--params` the
    user's file is another one, and the message must say which.
    """
    prefix = f"{PARAMS_FILE}: "
    if params != PARAMS_FILE and exc.where.startswith(prefix):
        return f"{params}: {exc.where.removeprefix(prefix)}: {exc.problem}"
    return str(exc)


def quiet_third_party(name: str) -> None:
    """Our loggers at INFO with the stage's name; libraries (gensim, numba, ...) at WARNING."""
    logging.basicConfig(level=logging.WARNING, format=f"{name}: %(message)s", stream=sys.stderr)
    for ours in ("stages", "__main__", name):
        logging.getLogger(ours).setLevel(logging.INFO)


def run_log_path(name: str) -> Path:
    return RUN_LOG_DIR / f"{name}.jsonl"


def append_run_log(name: str, record: Mapping[str, Any]) -> None:
    """One line per run: when, where, and the timings `main` returned. Best effort by design."""
    line = {
        "stage": name,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        **record,
    }
    try:
        RUN_LOG_DIR.mkdir(parents=True, exist_ok=True)
        with open(run_log_path(name), "a") as handle:
            handle.write(json.dumps(line, default=str) + "\n")
    except OSError as exc:  # a read-only checkout still gets its outputs
        logging.getLogger(name).warning("run log not written: %s", exc)
