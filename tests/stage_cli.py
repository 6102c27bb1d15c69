"""Running a stage as DVC does, on a params file of its own: one section over params.yaml's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TypeVar

import yaml

from stages.common.params import load_section

REPO = Path(__file__).resolve().parents[1]
P = TypeVar("P")


def params_file(name: str, changes: dict, path: Path) -> Path:
    """params.yaml's `base` and section `name` with `changes` laid over it, written to `path`."""
    full = yaml.safe_load((REPO / "params.yaml").read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"base": full["base"], name: full[name] | changes}))
    return path


def stage_params(params_type: type[P], name: str, changes: dict, path: Path) -> P:
    """The stage's typed params from such a file (see `params_file`), as the stage reads them."""
    return load_section(params_type, name, params_file(name, changes, path))


def run_stage_cli(
    module: str, name: str, changes: dict, folder: Path
) -> subprocess.CompletedProcess:
    """`python -m <module>` with params.yaml's `base` and section `name` with `changes` laid over
    it, written to `folder/params.yaml`; the run log goes to `folder/logs`."""
    path = params_file(name, changes, folder / "params.yaml")
    env = {**os.environ, "STAGES_RUN_LOG": str(folder / "logs")}
    command = [sys.executable, "-m", module, "--params", str(path)]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
