"""DVC and Git as the flows call them: subprocesses in the workspace, and parsers of their output.

The flows never import DVC's internals to run the pipeline: `dvc repro` in a subprocess is exactly
what a user runs by hand, holds DVC's own workspace lock, and cannot leak state between runs. Every
DVC call passes `--wait-for-lock`, so a flow queues behind a user's `dvc repro` instead of failing
with "Unable to acquire lock".
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

RUNNING = re.compile(r"^Running stage '([^']+)':", re.MULTILINE)
LOG_TAIL = 4000  # characters of a failed command's output kept for the artifact


@dataclass(frozen=True)
class Done:
    """A finished command: its exit status and its output (stdout and stderr interleaved)."""

    args: tuple[str, ...]
    returncode: int
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def tail(self) -> str:
        return self.output[-LOG_TAIL:]


def run(workspace: str | Path, *args: str, timeout: float | None = None) -> Done:
    done = subprocess.run(
        args,
        cwd=workspace,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Done(tuple(args), done.returncode, done.stdout)


def dvc(workspace: str | Path, *args: str, timeout: float | None = None) -> Done:
    """`dvc --wait-for-lock ARGS` with this interpreter's DVC, in `workspace`."""
    return run(workspace, sys.executable, "-m", "dvc", "--wait-for-lock", *args, timeout=timeout)


def git(workspace: str | Path, *args: str) -> Done:
    return run(workspace, "git", *args)


def has_commit(workspace: str | Path) -> bool:
    return git(workspace, "rev-parse", "--verify", "--quiet", "HEAD").ok


def parse_status(output: str) -> dict[str, Any]:
    """`dvc status --json` output: {stage: [changes]}; empty when everything is up to date."""
    text = output.strip()
    # DVC may print warnings before the JSON document; it is the last line.
    last = text.splitlines()[-1] if text else "{}"
    try:
        status = json.loads(last)
    except json.JSONDecodeError:
        raise ValueError(f"dvc status --json printed no JSON: {text[-500:]!r}") from None
    return status if isinstance(status, dict) else {}


def stages_run(output: str) -> list[str]:
    """The stages `dvc repro` ran, in order, from its 'Running stage' lines."""
    return RUNNING.findall(output)


def lock_rows(lock_text: str) -> list[dict[str, Any]]:
    """One row per dependency and output recorded in dvc.lock: the table artifact of a run."""
    stages = (yaml.safe_load(lock_text) or {}).get("stages") or {}
    rows = []
    for name, entry in stages.items():
        for kind in ("deps", "outs"):
            for item in entry.get(kind) or []:
                rows.append(
                    {
                        "stage": name,
                        "kind": kind[:-1],
                        "path": item.get("path"),
                        "md5": item.get("md5"),
                        "size": item.get("size"),
                        "nfiles": item.get("nfiles"),
                    }
                )
    return rows


def metrics_rows(diff_json: str) -> list[dict[str, Any]]:
    """`dvc metrics diff --json` as rows: file, metric, old (last commit), new, change."""
    diff = json.loads(diff_json.strip().splitlines()[-1] if diff_json.strip() else "{}")
    rows = []
    for path, metrics in sorted(diff.items()):
        for name, values in sorted(metrics.items()):
            rows.append(
                {
                    "file": path,
                    "metric": name,
                    "old": values.get("old"),
                    "new": values.get("new"),
                    "change": values.get("diff"),
                }
            )
    return rows
