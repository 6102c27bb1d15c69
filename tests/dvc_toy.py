"""A tiny real DVC project for the lineage, report and flow tests: git + dvc init, five stages.

    prep (raw/a.txt, params base + prep) -> data/prep.txt -> train (train.lr) -> models/model.pt (a
        model record, as `save_model` writes it), reports/train.json (metric; nested.acc is
        5 x train.lr), reports/curve.tsv (plot), reports/picture.png
    models/model.pt -> evaluate -> reports/eval.json (metric)
    other (raw/dir) -> reports/other.json (metric)
    report (everything above it shows) -> reports/lineage.md, reports/index.html, reports/index.md

`python tests/dvc_toy.py DIR` builds one by hand, for trying the flows, the audit and the report.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STEP = """\
import hashlib, json, pathlib, struct, sys, zlib
kind = sys.argv[1]
p = pathlib.Path
for folder in ("data", "reports", "models"):
    p(folder).mkdir(exist_ok=True)

def png(path, grey):  # a 2 x 2 greyscale PNG, written without an image library
    chunk = lambda tag, data: (struct.pack(">I", len(data)) + tag + data
                               + struct.pack(">I", zlib.crc32(tag + data)))
    rows = b"".join(b"\\0" + bytes([grey, grey]) for _ in range(2))
    header = struct.pack(">IIBBBBB", 2, 2, 8, 0, 0, 0, 0)
    p(path).write_bytes(b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", header)
                        + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))

if kind == "prep":
    p("data/prep.txt").write_text(p("raw/a.txt").read_text() * 2)
elif kind == "train":
    import torch
    text = p("data/prep.txt").read_text()
    n = len(text)
    record = {"state_dict": {"w": torch.ones(2)}, "config": {}, "step": n, "code": "toy",
              "inputs": {"data/prep.txt": hashlib.md5(text.encode()).hexdigest()}}
    torch.save(record, "models/model.pt")
    import yaml
    acc = 5 * yaml.safe_load(p("params.yaml").read_text())["train"]["lr"]
    p("reports/train.json").write_text(json.dumps({"bytes": n, "nested": {"acc": acc}}))
    p("reports/curve.tsv").write_text("step\\tloss\\n0\\t1.0\\n1\\t0.5\\n2\\t0.25\\n")
    png("reports/picture.png", 4 * n)
elif kind == "evaluate":
    import torch
    step = torch.load("models/model.pt", weights_only=True)["step"]
    p("reports/eval.json").write_text(json.dumps({"score": step / 100}))
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
    outs: [models/model.pt, reports/picture.png]
    metrics:
      - reports/train.json: {cache: false}
    plots:
      - reports/curve.tsv: {cache: false}
  evaluate:
    cmd: python step.py evaluate
    deps: [step.py, models/model.pt]
    metrics:
      - reports/eval.json: {cache: false}
  other:
    cmd: python step.py other
    deps: [step.py, raw/dir]
    metrics:
      - reports/other.json: {cache: false}
  report:
    cmd: python -m stages.lineage.report
    deps: [reports/train.json, reports/eval.json, reports/other.json, models/model.pt,
           reports/curve.tsv, reports/picture.png]
    params: [report]
    outs:
      - reports/lineage.md: {cache: false}
      - reports/index.html: {cache: false}
      - reports/index.md: {cache: false}
"""

PARAMS = """\
base:
  seed: 1
prep:
  scale: 2
train:
  lr: 0.1
report:
  lineage: reports/lineage.md
  html: reports/index.html
  markdown: reports/index.md
  history: 10
  papers: [{folder: reports, title: Toy paper}]
retrain:
  threshold: 0.1
  report: reports/index.html
  watch: [{metric: "reports/train.json:nested.acc", better: higher}]
"""

GIT_USER = ("-c", "user.name=toy", "-c", "user.email=toy@example.org")


def run(cwd: Path, *cmd: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # so the toy's report stage finds `stages`
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
    (root / "params.yaml").write_text(PARAMS)
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / ".gitignore").write_text("/data/\n/models/\n")
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
