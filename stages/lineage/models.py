"""Model files in the lineage: what a training stage's model record says, checked against dvc.lock.

Every trainer writes its model with `stages.common.training.save_model`: the weights plus the step
it reached, the DVC hashes of the inputs it read and the digest of its code's import closure. The
audit reads that record (memory-mapped, weights untouched) and checks it against the two things
that should agree with it: the hashes the training stage's dvc.lock entry recorded for the same
inputs, and the digest of the training module's code as it is now. A model written by hand, by an
older run, or from other data then shows up in the chain, not just as a changed hash.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stages.common.closure import code_digest, module_file
from stages.lineage.graph import Pipeline, StageRecord

MODEL_SUFFIX = ".pt"
RECORD_KEYS = {"step", "inputs", "code"}
STAGE_MODULE = re.compile(r"python3? -m (stages(?:\.\w+)+)")


def read_record(path: Path) -> dict[str, Any] | None:
    """The provenance part of a model file (step, inputs, code, device, ...), or None when the
    file is not a model record of this project (another format, damaged, absent)."""
    import torch

    try:
        record = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # torch raises many types for a file that is not its zip format
        return None
    if not isinstance(record, dict) or not set(record) >= RECORD_KEYS:
        return None
    return {k: v for k, v in record.items() if k not in ("state_dict", "config")}


def model_files(root: Path, path: str) -> list[str]:
    """The model files at `path` (a file, or a directory of them), relative to `root`."""
    target = root / path
    if target.is_file():
        return [path] if target.suffix == MODEL_SUFFIX else []
    if target.is_dir():
        return sorted(
            f.relative_to(root).as_posix() for f in target.rglob(f"*{MODEL_SUFFIX}") if f.is_file()
        )
    return []


def stage_module(cmd: str) -> str | None:
    """The project module a stage runs (`python -m stages.x.y`), None for any other command."""
    found = STAGE_MODULE.search(cmd)
    return found.group(1) if found else None


def record_problems(
    record: Mapping[str, Any], trainer: StageRecord, code_now: str | None
) -> list[str]:
    """How a model record disagrees with its training stage's dvc.lock entry and today's code;
    empty when it agrees. `code_now` is None when the trainer's code cannot be digested."""
    locked = {e.path: e.md5 for e in trainer.deps}
    problems = []
    for path, md5 in sorted(dict(record["inputs"]).items()):
        path = Path(path).as_posix()
        if path not in locked:
            problems.append(f"trained on {path}, which {trainer.name} does not list as a dep")
        elif locked[path] != md5:
            problems.append(f"trained on {path} {md5}, dvc.lock has {locked[path]}")
    if code_now is not None and record["code"] != code_now:
        problems.append(f"code digest {record['code'][:12]} differs from today's {code_now[:12]}")
    return problems


def describe_models(pipeline: Pipeline, root: Path, paths: list[str]) -> dict[str, dict]:
    """For each model file among `paths` (files or directories): its record and its problems."""
    digests: dict[str, str | None] = {}
    found = {}
    for path in paths:
        trainers = [s for s in pipeline.stages.values() if any(o.path == path for o in s.outs)]
        for file in model_files(root, path):
            record = read_record(root / file)
            if record is None or not trainers:
                continue
            trainer = trainers[0]
            module = stage_module(trainer.cmd)
            if trainer.name not in digests:
                known = module is not None and module_file(module, root) is not None
                digests[trainer.name] = code_digest(module, root) if known else None
            found[file] = {
                "path": file,
                "stage": trainer.name,
                "step": record["step"],
                "code": record["code"],
                "device": record.get("device"),
                "precision": record.get("precision"),
                "inputs": dict(record["inputs"]),
                "problems": record_problems(record, trainer, digests[trainer.name]),
            }
    return found
