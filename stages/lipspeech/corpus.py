"""The utterance table of a lip/speech corpus, shared by the lip and mel-cepstrum stages.

A corpus is a CSV table (`utterances.csv`) plus the media files it names. Required columns:
`utterance` (unique id), `file` (a video with an audio track, relative to the table's folder or
absolute), `split` (train or test), `duration` (seconds the recording must at least last).
Other columns (text, phonemes, ...) are carried along untouched. The embedded talker writes one;
for M2TINIT write one row per sentence into the folder holding the videos, `dvc add` that folder and
point `corpus.root` at it and `corpus.table` at the table (docs/lipspeech.md).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from stages.common.errors import StageError
from stages.common.hashing import file_digest
from stages.common.progress import progress
from stages.common.workers import run_jobs, worker_pool

J = TypeVar("J")
R = TypeVar("R")

REQUIRED = ("utterance", "file", "split", "duration")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Corpus:
    """Params: a lip/speech corpus: the folder dvc.yaml tracks as the stage's input (`root`) and
    the utterance table inside it (`table`; its videos lie in the same folder)."""

    root: Path
    table: Path


@dataclass(frozen=True)
class Entry:
    utterance: str
    path: Path
    split: str
    duration: float


def read_table(table: Path) -> list[Entry]:
    """Rows of the table, validated: every problem names the table, row and field."""
    if not table.is_file():
        raise StageError(
            table, "utterance table not found (run lipspeech_sample, or set corpus.table)"
        )
    with open(table, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise StageError(table, f"missing columns {missing} (needs {list(REQUIRED)})")
        rows = list(reader)
    if not rows:
        raise StageError(table, "no utterances")
    entries, seen = [], set()
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"{table}: line {line}"
        name = row["utterance"].strip()
        if not name or name in seen:
            raise StageError(f"{where}: utterance", f"empty or duplicate id {name!r}")
        seen.add(name)
        if row["split"] not in SPLITS:
            raise StageError(f"{where}: split", f"{row['split']!r} is not one of {list(SPLITS)}")
        try:
            duration = float(row["duration"])
        except ValueError:
            raise StageError(f"{where}: duration", f"not a number: {row['duration']!r}") from None
        if not duration > 0:
            raise StageError(f"{where}: duration", f"must be positive, got {duration}")
        path = Path(row["file"])
        path = path if path.is_absolute() else table.parent / path
        if not path.is_file():
            raise StageError(f"{where}: file", f"{path} not found")
        entries.append(Entry(name, path, row["split"], duration))
    if not any(e.split == "train" for e in entries):
        raise StageError(table, "no utterance in the train split (PCA is fitted on it)")
    return entries


def read_corpus(c: Corpus) -> list[Entry]:
    """The table's rows; the table must lie in `root`, the folder DVC hashes, or a changed table
    would not re-run the stages."""
    root = c.root.resolve()
    if root not in c.table.resolve().parents:
        raise StageError(c.table, f"lies outside corpus.root ({c.root}), the folder DVC tracks")
    entries = read_table(c.table)
    for e in entries:  # readable, but DVC would not notice when it changes: refused
        if root not in e.path.resolve().parents:
            raise StageError(
                f"{c.table}: utterance {e.utterance}",
                f"{e.path} lies outside corpus.root ({c.root}), the folder DVC tracks",
            )
    return entries


def provenance(table: Path) -> dict:
    return {"table": str(table), "sha256": file_digest(table)}


def map_utterances(fn: Callable[[J], R], jobs: list[J], workers: int, desc: str) -> list[R]:
    """fn over jobs in `workers` processes, in order, with progress; the first StageError (in job
    order) is raised in this process, so callers validate everything before writing anything."""
    with worker_pool(min(workers, len(jobs))) as pool:
        return list(progress(run_jobs(fn, jobs, pool), desc=desc, total=len(jobs), unit="utt"))
