"""A tiny real DVC project for the lineage and flow tests: git + dvc init, three stages and lineage.

    prep (raw/a.txt, params base + prep) -> data/prep.txt -> train -> reports/train.json (metric)
    other (raw/dir) -> reports/other.json (metric)
    lineage (both metrics files) -> reports/lineage.md

`python tests/dvc_toy.py DIR` builds one by hand, for trying the flows and the audit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STEP = """\
import json, pathlib, sys
kind = sys.argv[1]
p = pathlib.Path
p("data").mkdir(exist_ok=True)
p("reports").mkdir(exist_ok=True)
if kind == "prep":
    p("data/prep.txt").write_text(p("raw/a.txt").read_text() * 2)
elif kind == "train":
    n = len(p("data/prep.txt").read_text())
    p("reports/train.json").write_text(json.dumps({"bytes": n, "nested": {"acc": 0.5}}))
else:
    p("reports/other.json").write_text(json.dumps({"files": len(list(p("raw/dir").iterdir()))}))
"""

DVC_YAML = """\
stages:
  prep:
    cmd: python step.py prep
    deps: [step.py, raw/a.txt]
    params: [base, prep]
    outs: [data/prep.txt]
  train:
    cmd: python step.py train
    deps: [step.py, data/prep.txt]
    params: [train.lr]
    metrics:
      - reports/train.json: {cache: false}
  other:
    cmd: python step.py other
    deps: [step.py, raw/dir]
    metrics:
      - reports/other.json: {cache: false}
  lineage:
    cmd: python -m stages.lineage report --out reports/lineage.md
    deps: [reports/train.json, reports/other.json]
    outs:
      - reports/lineage.md: {cache: false}
"""

GIT_USER = ("-c", "user.name=toy", "-c", "user.email=toy@example.org")


def run(cwd: Path, *cmd: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # so the toy's lineage stage finds `stages`
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd} failed in {cwd}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def dvc(cwd: Path, *args: str) -> str:
    return run(cwd, sys.executable, "-m", "dvc", *args)


def git(cwd: Path, *args: str) -> str:
    return run(cwd, "git", *GIT_USER, *args)


def build_toy(root: Path, *, reproduce: bool = True) -> Path:
    """Write the toy project into `root`; reproduce and commit it unless told not to."""
    (root / "raw/dir").mkdir(parents=True)
    (root / "raw/a.txt").write_text("1 2 3\n")
    (root / "raw/dir/x").write_text("x\n")
    (root / "raw/dir/y").write_text("y\n")
    (root / "step.py").write_text(STEP)
    (root / "params.yaml").write_text("base:\n  seed: 1\nprep:\n  scale: 2\ntrain:\n  lr: 0.1\n")
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / ".gitignore").write_text("/data/\n")
    git(root, "init", "-q")
    dvc(root, "init", "-q")
    dvc(root, "config", "core.analytics", "false")
    if reproduce:
        dvc(root, "repro", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "toy pipeline")
    return root


if __name__ == "__main__":
    print(build_toy(Path(sys.argv[1])))
