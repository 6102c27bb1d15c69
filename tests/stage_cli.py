"""Running a stage as DVC does, on a params file of its own: one section over params.yaml's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def run_stage_cli(
    module: str, name: str, changes: dict, folder: Path
) -> subprocess.CompletedProcess:
    """`python -m <module>` with params.yaml's `base` and section `name` with `changes` laid over
    it, written to `folder/params.yaml`; the run log goes to `folder/logs`."""
    full = yaml.safe_load((REPO / "params.yaml").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump({"base": full["base"], name: full[name] | changes}))
    env = {**os.environ, "STAGES_RUN_LOG": str(folder / "logs")}
    command = [sys.executable, "-m", module, "--params", str(path)]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
