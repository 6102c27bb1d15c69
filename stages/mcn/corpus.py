"""What the three MCN feature stages share: corpora, clip tables, the shard plan and the driver.

A corpus is a clip table (video, start, end, caption) plus a folder of video files named
`<video>.<ext>`. The plan sorts a corpus's videos and cuts them into shards of `videos_per_shard`;
a shard carries its videos, their files and their clips, so a worker needs nothing else.

A feature stage module provides `prepare(params) -> context`, `run_shard(params, context, shard)`
and `finalize(params, context, shards, manifests, seconds)`. `run_local` (the DVC stage) and the
Prefect flow (`flows/features.py`, over Dask) call exactly these, so both give the same files.
`finalize` writes the stage's metrics and stats and returns the run's record (timings, shards
skipped): what differs between two runs of the same work goes to the run log, never to a file.

Every feature stage names the one folder its corpora read from (`source`, a DVC dependency), and
`check_source` refuses a corpus outside it: DVC would not re-run the stage when that input changed.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from stages.common import dataset, kernels
from stages.common.atomic import write_json
from stages.common.errors import StageError
from stages.common.hashing import file_digest
from stages.common.progress import progress
from stages.mcn import shards

log = logging.getLogger(__name__)

TOKEN = re.compile(r"[\w']+")


@dataclass(frozen=True)
class Corpus:
    name: str
    clips: Path  # a sample dataset folder, a .parquet file or a .csv with video,start,end,caption
    videos: Path  # folder of <video>.<ext> files
    audio_window: int  # spectrogram frames per clip (10 ms each): MCN 1000 train, 5120/3072 eval


@dataclass(frozen=True)
class ClipRow:
    clip: int  # index of the clip within its video, by start time
    start: float
    end: float
    caption: str


@dataclass(frozen=True)
class Shard:
    key: str
    corpus: Corpus
    videos: tuple[str, ...]
    files: tuple[str | None, ...]  # None: no file for the video (a failure row, not a crash)
    clips: tuple[tuple[ClipRow, ...], ...]  # per video

    def inputs(self) -> list:
        """What the shard's output depends on, for its fingerprint (sizes, not mtimes: stable)."""
        sizes = [None if f is None else os.path.getsize(f) for f in self.files]
        return [self.corpus.name, list(self.videos), sizes, [list(c) for c in self.clips]]


def tokenize(caption: str) -> list[str]:
    """Words of a caption (regex `[\\w']+`, case kept): one rule for word2vec and the features."""
    return TOKEN.findall(caption)


def read_clip_table(path: Path) -> pd.DataFrame:
    """The clip table at `path`, validated: every problem names the file, row and field."""
    if path.is_dir():
        table = pd.DataFrame(dataset.read_arrays(path, ["video", "start", "end", "caption"]))
    elif path.suffix == ".csv" and path.is_file():
        table = pd.read_csv(path, dtype={"video": str, "caption": str}, keep_default_na=False)
    elif path.suffix == ".parquet" and path.is_file():
        table = pd.read_parquet(path)
    else:
        raise StageError(path, "clip table not found (a dataset folder, .parquet or .csv)")
    missing = [c for c in ("video", "start", "end", "caption") if c not in table.columns]
    if missing:
        raise StageError(path, f"clip table lacks columns {missing}")
    table = table[["video", "start", "end", "caption"]].reset_index(drop=True)
    for field in ("start", "end"):
        values = pd.to_numeric(table[field], errors="coerce")
        bad = np.flatnonzero(values.isna() | (values < 0))
        if len(bad):
            raise StageError(
                f"{path}: row {bad[0]}: {field}", f"not a time >= 0: {table[field][bad[0]]!r}"
            )
        table[field] = values.astype(np.float64)
    bad = np.flatnonzero(table["end"] < table["start"])
    if len(bad):
        raise StageError(f"{path}: row {bad[0]}: end", "end before start")
    if table["video"].isna().any() or (table["video"].astype(str) == "").any():
        row = int(np.flatnonzero(table["video"].isna() | (table["video"].astype(str) == ""))[0])
        raise StageError(f"{path}: row {row}: video", "empty video id")
    table["video"] = table["video"].astype(str)
    table["caption"] = table["caption"].fillna("").astype(str)
    return table


def video_files(folder: Path) -> dict[str, str]:
    """video id -> file, from one listing of the folder (not one glob per video: 1M files)."""
    if not folder.is_dir():
        raise StageError(folder, "videos folder not found")
    found: dict[str, str] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_file() and not entry.name.startswith("."):
            found.setdefault(entry.name.rsplit(".", 1)[0], entry.path)
    return found


def plan(corpora: tuple[Corpus, ...], videos_per_shard: int) -> list[Shard]:
    if videos_per_shard < 1:
        raise StageError("params.yaml: videos_per_shard", "must be >= 1")
    names = [c.name for c in corpora]
    if len(set(names)) != len(names) or any(not n.replace("_", "").isalnum() for n in names):
        raise StageError("params.yaml: corpora", f"names must be unique and alphanumeric: {names}")
    shards = []
    for corpus in corpora:
        table = read_clip_table(corpus.clips).sort_values(["video", "start", "end"], kind="stable")
        files = video_files(corpus.videos)
        grouped = {
            video: tuple(
                ClipRow(i, float(r.start), float(r.end), str(r.caption))
                for i, r in enumerate(rows.itertuples())
            )
            for video, rows in table.groupby("video", sort=True)
        }
        videos = sorted(grouped)
        for k, lo in enumerate(range(0, len(videos), videos_per_shard)):
            part = videos[lo : lo + videos_per_shard]
            shards.append(
                Shard(
                    key=f"{corpus.name}-{k:05d}",
                    corpus=corpus,
                    videos=tuple(part),
                    files=tuple(files.get(v) for v in part),
                    clips=tuple(grouped[v] for v in part),
                )
            )
    return shards


def check_source(source: Path, corpora: tuple[Corpus, ...], section: str) -> None:
    """Every clip table and videos folder must lie inside `source`, the stage's DVC dependency."""
    root = source.resolve()
    for corpus in corpora:
        for field in ("clips", "videos"):
            path = getattr(corpus, field)
            if not path.resolve().is_relative_to(root):
                raise StageError(
                    f"params.yaml: {section}.corpora: {corpus.name}.{field}",
                    f"{path} is outside {section}.source ({source}), so dvc.yaml would not "
                    "re-run the stage when it changes: point source at a folder holding it",
                )


def weights_record(path: Path | None, seed: int) -> dict[str, Any]:
    """Which weights produced an output: path + sha256, or the seed of random weights."""
    if path is None:
        return {"weights": f"random seed {seed}"}
    if not Path(path).is_file():
        raise StageError(path, "weights file not found")
    return {"weights": str(path), "sha256": file_digest(path)}


# The columns every MCN feature table is keyed by (one definition, so the schemas agree).
VIDEO_KEY = (
    dataset.Column("corpus", pa.string(), "corpus name"),
    dataset.Column("video", pa.string(), "video id"),
)

FAILURES_SCHEMA = dataset.SampleSchema(
    name="mcn_features/failures/v1",
    doc="Problems met while extracting features: one row per video (clip -1) or clip.",
    columns=(
        *VIDEO_KEY,
        dataset.Column("clip", pa.int32(), "clip index within the video, -1 for the whole video"),
        dataset.Column("severity", pa.string(), "error (no features) or warning (a fallback used)"),
        dataset.Column("kind", pa.string(), "missing, corrupt, short, no_audio, no_known_words"),
        dataset.Column("message", pa.string(), "what happened and which fallback was taken"),
    ),
)


class Rows:
    """A table built row by row: `add` values in column order, `columns()` for `ShardFile`."""

    def __init__(self, *names: str) -> None:
        self.data: dict[str, list] = {name: [] for name in names}

    def add(self, *values: Any) -> None:
        for column, value in zip(self.data.values(), values, strict=True):
            column.append(value)

    def __len__(self) -> int:
        return len(next(iter(self.data.values())))

    def columns(self, corpus: str, schema: dataset.SampleSchema) -> dict[str, Any]:
        """The columns plus `corpus`, array columns stacked to (n, *shape) of the schema."""
        out: dict[str, Any] = {"corpus": [corpus] * len(self), **self.data}
        for name, col in schema.arrays.items():
            values = out[name]
            out[name] = np.stack(values) if values else np.zeros((0, *col.shape), col.dtype)
        return out


class Failures(Rows):
    """The failures table of one shard."""

    def __init__(self) -> None:
        super().__init__("video", "clip", "severity", "kind", "message")

    def by_kind(self) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for kind in self.data["kind"]:
            kinds[kind] = kinds.get(kind, 0) + 1
        return kinds


class FeatureStage(Protocol):
    def prepare(self, params: Any) -> Any: ...
    def run_shard(self, params: Any, context: Any, shard: Shard) -> dict: ...
    def finalize(
        self, params: Any, context: Any, shards: list[Shard], manifests: list[dict], seconds: float
    ) -> dict: ...


def run_local(stage: FeatureStage, params: Any, name: str) -> dict:
    """The DVC stage's driver: plan, run each shard (complete ones are skipped), finalize.

    Returns the run record of `finalize` (for the run log).
    """
    context = stage.prepare(params)
    planned = plan(params.corpora, params.videos_per_shard)
    started = time.perf_counter()
    manifests = [
        stage.run_shard(params, context, s) for s in progress(planned, desc=name, unit="shard")
    ]
    return stage.finalize(params, context, planned, manifests, time.perf_counter() - started)


def summarise(manifests: list[dict]) -> dict:
    """Totals over shard manifests: rows per table and failures by kind (the same every run)."""
    rows: dict[str, int] = {}
    for m in manifests:
        for table, info in m["tables"].items():
            rows[table] = rows.get(table, 0) + info["rows"]
    kinds: dict[str, int] = {}
    for m in manifests:
        for kind, n in m.get("failures_by_kind", {}).items():
            kinds[kind] = kinds.get(kind, 0) + n
    return {
        "shards": len(manifests),
        "rows": rows,
        "failures_by_kind": dict(sorted(kinds.items())),
    }


def finish(
    params: Any, planned: list[Shard], manifests: list[dict], metrics: dict, stats: dict
) -> dict:
    """Remove shards of an older plan and write metrics and stats; returns the run's record.

    The record (shards skipped, stale files removed) differs between two runs of the same work,
    so it goes to the run log only.
    """
    removed = shards.remove_stale(params.out, [s.key for s in planned])
    write_json(params.metrics, metrics)
    write_json(params.stats, {**stats, "cpu_kernels": kernels.record()})
    return {
        "shards": len(manifests),
        "shards_skipped": sum(bool(m.get("skipped")) for m in manifests),
        "stale_files_removed": len(removed),
    }
