"""What the three MCN feature stages share: corpora, clip tables, the shard plan and the driver.

A corpus is a clip table (video, start, end, caption) plus a folder of video files named
`<video>.<ext>`. The plan sorts a corpus's videos and cuts them into shards of `videos_per_shard`;
a shard carries its videos, their files and their clips, so a worker needs nothing else.

A feature stage module provides `prepare(params) -> context`, `run_shard(params, context, shard)`
and `finalize(params, context, manifests, seconds)`. `run_local` (the DVC stage) and the
Prefect flow (`flows/features.py`, over Dask) call exactly these, so both give the same files.
`finalize` writes the stage's metrics and stats and returns the run's record (timings, shards
skipped): what differs between two runs of the same work goes to the run log, never to a file.

Every feature stage names the one folder its corpora read from (`source`, a DVC dependency), and
`check_source` refuses a corpus outside it: DVC would not re-run the stage when that input changed.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import pickle
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from stages.common import dataset, kernels
from stages.common.atomic import write_json
from stages.common.errors import Interrupted, StageError
from stages.common.hashing import file_digest
from stages.common.progress import progress
from stages.mcn import shards

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CLIP_COLUMNS = ("video", "start", "end", "caption")
REFUSED = re.compile(r"[Uu]nsupported (?:global: )?(?:GLOBAL \S+|operand \d+)")
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
        """What every table of the shard depends on: the corpus, its videos and their clips."""
        return [self.corpus.name, list(self.videos), [list(c) for c in self.clips]]

    def file_inputs(self) -> list:
        """Each video file, as named (failure messages quote the name), and its bytes' sha256.

        Content, not size: a file rewritten in place with the same size must redo its shard.
        Hashed afresh on every run (no cache that could go stale); the path is the one the
        params give, not the resolved one, so a checkout elsewhere keeps its shards' bytes.
        """
        return [None if f is None else [f, file_digest(f)] for f in self.files]


def tokenize(caption: str) -> list[str]:
    """Words of a caption (regex `[\\w']+`, case kept): one rule for word2vec and the features."""
    return TOKEN.findall(caption)


def read_clip_table(path: Path) -> pd.DataFrame:
    """The clip table at `path`, validated: a problem names the file, its row and the field.

    A CSV row is named by its line in the file (`line 2` is the first row after the header); a
    Parquet table or dataset folder, which has no lines, by its 1-based row.
    """
    table, rows = _read_table(path)
    missing = [c for c in CLIP_COLUMNS if c not in table.columns]
    if missing:
        raise StageError(path, f"clip table lacks columns {missing}")
    table = table[list(CLIP_COLUMNS)].reset_index(drop=True)
    for field in ("start", "end"):
        times = [_time(value) for value in table[field]]
        if None in times:
            row = times.index(None)
            raise StageError(
                f"{path}: {rows[row]}: {field}",
                f"not a finite time >= 0: {table[field][row]!r}",
            )
        table[field] = np.array(times, np.float64)
    bad = np.flatnonzero(table["end"] < table["start"])
    if len(bad):
        raise StageError(f"{path}: {rows[bad[0]]}: end", "end before start")
    bad = np.flatnonzero(table["video"].isna() | (table["video"].astype(str) == ""))
    if len(bad):
        raise StageError(f"{path}: {rows[bad[0]]}: video", "empty video id")
    table["video"] = table["video"].astype(str)
    table["caption"] = table["caption"].fillna("").astype(str)
    return table


def _time(value: Any) -> float | None:
    """A clip time in seconds, or None: not a number, not finite (inf would crash the crop), < 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _read_table(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """The table as stored, and how a message names each of its rows."""
    if path.suffix == ".csv" and path.is_file():
        return _read_csv(path)
    if not (path.is_dir() or (path.suffix == ".parquet" and path.is_file())):
        raise StageError(path, "clip table not found (a dataset folder, .parquet or .csv)")
    try:
        if path.is_dir():  # only the clip columns (a dataset may hold more), those it has
            names = pq.read_schema(dataset.shard_paths(path)[0]).names
            table = pd.DataFrame(dataset.read_arrays(path, [c for c in CLIP_COLUMNS if c in names]))
        else:
            table = pd.read_parquet(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise StageError(path, f"cannot read the clip table ({_first_line(exc)})") from None
    return table, [f"row {i}" for i in range(1, len(table) + 1)]


def _read_csv(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """Every field as text, each row named by its first line (a quoted caption may span lines).

    The csv module rather than pandas: pandas fills a short row with empty fields without a word
    and reports a long one with a traceback.
    """
    records, lines, line = [], [], 1
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            line = reader.line_num + 1
            for record in reader:
                if record:  # a blank line holds no row (as pandas reads it)
                    if len(record) != len(header):
                        raise StageError(
                            f"{path}: line {line}",
                            f"{len(record)} fields where the header (line 1) has {len(header)}",
                        )
                    records.append(record)
                    lines.append(f"line {line}")
                line = reader.line_num + 1
    except UnicodeDecodeError:
        raise StageError(path, "not UTF-8 text") from None
    except csv.Error as exc:
        raise StageError(f"{path}: line {line}", f"not valid CSV ({exc})") from None
    except OSError as exc:
        raise StageError(path, f"cannot read the clip table ({exc.strerror})") from None
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise StageError(f"{path}: line 1", f"repeated column names {repeated}")
    return pd.DataFrame(records, columns=header, dtype=object), lines


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


def check_source(
    source: Path, corpora: tuple[Corpus, ...], section: str, weights: dict[str, Path | None]
) -> None:
    """Every clip table, videos folder and weights file must lie inside `source`, the stage's DVC
    dependency: a file elsewhere could change without `dvc repro` re-running the stage."""
    root = source.resolve()
    fields = ("clips", "videos")
    paths = {f"corpora: {c.name}.{field}": getattr(c, field) for c in corpora for field in fields}
    paths |= {key: path for key, path in weights.items() if path is not None}
    for key, path in paths.items():
        if not path.resolve().is_relative_to(root):
            raise StageError(
                f"params.yaml: {section}.{key}",
                f"{path} is outside {section}.source ({source}), so dvc.yaml would not "
                "re-run the stage when it changes: point source at a folder holding it",
            )


def weights_record(
    path: Path | None, seed: int, build: Callable[[], torch.nn.Module]
) -> dict[str, Any]:
    """Which weights produced an output: path + sha256, or the seed of random weights.

    A file is checked first to be a state_dict of exactly `build()`'s parameter names and shapes,
    so a wrong file fails in one line before any work, not with a traceback after hours.
    """
    if path is None:
        return {"weights": f"random seed {seed}"}
    if not Path(path).is_file():
        raise StageError(path, "weights file not found")
    check_state_dict(path, build)
    return {"weights": str(path), "sha256": file_digest(path)}


def check_state_dict(path: Path, build: Callable[[], torch.nn.Module]) -> None:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # Refused by the safe unpickler: an object that could run code, or a file that is not a
        # PyTorch file at all (text can parse as pickle opcodes); name what it met, if it says.
        met = REFUSED.search(str(exc))
        raise StageError(
            path,
            f"torch.load(weights_only=True) refuses it{f' ({met[0]})' if met else ''}: "
            "not a plain state_dict of tensors",
        ) from None
    except Exception as exc:  # torch.load fails on foreign bytes in many ways (KeyError, EOF...)
        raise StageError(path, f"not a PyTorch weights file ({_first_line(exc)})") from None
    if not isinstance(state, dict):
        raise StageError(
            path, f"not a state_dict (parameter name -> tensor) but a {type(state).__name__}"
        )
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise StageError(
                path,
                f"not a state_dict (parameter name -> tensor): {key!r} holds a "
                f"{type(value).__name__} (a checkpoint wrapping the state_dict?)",
            )
    with torch.device("meta"):  # the expected shapes, without allocating the model
        model = build()
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    problems = [f"lacks {k!r}" for k in expected if k not in got]
    problems += [f"has unknown {k!r}" for k in got if k not in expected]
    problems += [
        f"{k!r} has shape {list(got[k])}, not {list(shape)}"
        for k, shape in expected.items()
        if k in got and got[k] != shape
    ]
    if problems:
        more = f" (and {len(problems) - 3} more problems)" if len(problems) > 3 else ""
        raise StageError(
            path, f"not a {type(model).__name__} state_dict: {'; '.join(problems[:3])}{more}"
        )


def _first_line(exc: Exception) -> str:
    """Type and first sentence of an error: torch's run to paragraphs."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0].split(". ")[0].rstrip(": ")


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
        self, params: Any, context: Any, manifests: list[dict], seconds: float
    ) -> dict: ...


def run_local(stage: FeatureStage, params: Any, name: str) -> dict:
    """The DVC stage's driver: plan, run each shard (complete ones are skipped), finalize.

    Returns the run record of `finalize` (for the run log).
    """
    context = stage.prepare(params)
    planned = plan(params.corpora, params.videos_per_shard)
    started = time.perf_counter()
    manifests: list[dict] = []
    try:
        for shard in progress(planned, desc=name, unit="shard"):
            manifests.append(stage.run_shard(params, context, shard))
    except KeyboardInterrupt:
        # Shards are replaced one by one: say how far this run got, never "nothing replaced".
        rewritten = sum(not m.get("skipped") for m in manifests)
        raise Interrupted(
            f"{rewritten} of {len(planned)} shards of {params.out} were rewritten before it, "
            f"{len(manifests) - rewritten} were already complete; the one in progress may be "
            "partly replaced and the rest are as before: run the stage again to finish "
            "(complete shards are kept)"
        ) from None
    return stage.finalize(params, context, manifests, time.perf_counter() - started)


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


def finish(params: Any, manifests: list[dict], metrics: dict, stats: dict) -> dict:
    """Remove what the plan's manifests do not list; write metrics and stats; return the record.

    The record (shards skipped, stale files removed) differs between two runs of the same work,
    so it goes to the run log only.
    """
    removed = shards.remove_stale(params.out, manifests)
    write_json(params.metrics, metrics)
    write_json(params.stats, {**stats, "cpu_kernels": kernels.record()})
    return {
        "shards": len(manifests),
        "shards_skipped": sum(bool(m.get("skipped")) for m in manifests),
        "stale_files_removed": len(removed),
    }
