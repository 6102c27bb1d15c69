"""Event clips from gameplay recordings: frames at 30 fps, 128x128 RGB, plus the same span of audio.

Input: a directory of recordings (any container and codec FFmpeg reads, any fps and frame size, with
an audio track) and an events table (CSV or Parquet) with columns `recording` (file name inside the
directory), `label`, and per row either `time` (the event instant; the clip is the window
`[time - window.before, time - window.before + window.duration]`) or `start` and `end` (seconds).

Per event the stage reads the frames shown at start, start + 1/30 s, ... (by presentation timestamp,
so any source rate is resampled without drift), resized to 128x128, and the audio of the same span
as mono float32 at `audio_rate` (`stages/common/media.py`: frames by decord, audio by PyAV).
Recordings are read by seeking, a few clips at a time, so memory does not grow with their length.

Everything is checked before anything is written: the table (columns, labels, times, windows,
recording names inside the folder) naming each bad row by its CSV line (or Parquet row), then
every recording (decodable, not truncated, has audio). A broken recording stops the stage, or with
`on_bad_recording: skip` its clips go to the failures table (`failures`) and the rest goes on,
unless fewer than `min_success_share` of the clips are cut: then the stage fails, writing nothing.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import groupby
from pathlib import Path, PurePath
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa

from stages.common import dataset
from stages.common.atomic import atomic_dir, atomic_file, write_json
from stages.common.cli import run_stage
from stages.common.errors import StageError
from stages.common.hashing import file_digest
from stages.common.images import save_grid
from stages.common.media import (
    AudioReader,
    FrameReader,
    MediaInfo,
    probe,
    require_audio,
    sample_times,
)
from stages.common.progress import progress
from stages.common.seeding import rng
from stages.common.workers import run_jobs, worker_count, worker_pool
from stages.gameplay import masks

log = logging.getLogger(__name__)

ROW_GROUP_CLIPS = 4  # clips per Parquet row group: what a worker holds in memory
SHEET_FRAMES = 6  # frames per label in the contact sheet
MAX_LISTED = 5  # bad rows quoted in one error message


@dataclass(frozen=True)
class Window:
    duration: float  # s, for rows that give only an event time
    before: float  # s of the window before the event time
    min_duration: float  # every clip's duration must lie in [min, max]
    max_duration: float


@dataclass(frozen=True)
class Params:
    seed: int  # the held-out rule's random stream
    recordings: Path  # folder of recordings
    events: Path  # events table (.csv or .parquet)
    masks: Path | None  # folder of sprite mask files per recording (the stand-in's); None: none
    out: Path  # the clip dataset (Parquet shards)
    failures: Path  # CSV: the clips of broken recordings (skip mode)
    contact_sheet: Path  # PNG
    metrics: Path
    stats: Path
    window: Window
    labels: tuple[str, ...]
    fps: int
    size: int  # frames are resized (stretched) to size x size
    audio_rate: int
    on_bad_recording: Literal["fail", "skip"]
    min_success_share: float  # skip mode: fail unless at least this share of the clips is cut
    workers: int  # 0 = one per core
    shard_rows: int  # clips per Parquet shard (at most); one worker writes one shard
    compression_level: int  # frames: 1.5x faster to write than level 3, 2% larger
    test_fraction: float  # share of each label's clips held out (split "test")


@dataclass(frozen=True)
class ClipSpec:
    row: int  # 1-based data row of the events table; also the clip_id
    recording: str
    label: str
    start: float
    end: float
    split: str = "train"  # "test" when `assign_splits` holds it out

    @property
    def duration(self) -> float:
        return self.end - self.start


# --- the events table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Events:
    """The events table's rows as dicts (an empty cell is absent), and where each row is."""

    columns: list[str]
    rows: list[dict]
    where: list[str]  # "line N" of a CSV (the header is line 1), "row N" of Parquet (1-based)


def read_events(path: Path) -> Events:
    if not path.is_file():
        raise StageError(path, "events table not found")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        events = _read_csv(path)
    elif suffix in (".parquet", ".pq"):
        try:
            table = pd.read_parquet(path)
        except (ValueError, OSError) as exc:
            raise StageError(path, f"cannot read the events table ({exc})") from None
        rows = [
            {k: v for k, v in rec.items() if not _is_nan(v)} for rec in table.to_dict("records")
        ]
        where = [f"row {i}" for i in range(1, len(rows) + 1)]
        events = Events([str(c) for c in table.columns], rows, where)
    else:
        raise StageError(path, "events table must be .csv or .parquet")
    if not events.rows:
        raise StageError(path, "events table has no rows (only a header)")
    return events


def _read_csv(path: Path) -> Events:
    """Read with the csv module, not pandas: it knows each record's line (quoted fields may span
    lines, blank lines are skipped), and it keeps cells as text, so a `nan` in the table is
    refused as a number rather than taken for an empty cell."""
    header, rows, where = None, [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader, line = csv.reader(handle), 1
            for record in reader:
                first, line = line, reader.line_num + 1
                if not record:
                    continue
                if header is None:
                    header = record
                elif len(record) > len(header):
                    raise StageError(
                        f"{path}: line {first}",
                        f"{len(record)} fields, the header has {len(header)}",
                    )
                else:  # a short record leaves its last columns empty (zip stops early)
                    cells = zip(header, record, strict=False)
                    rows.append({k: v for k, v in cells if v != ""})
                    where.append(f"line {first}")
    except (UnicodeDecodeError, csv.Error) as exc:
        raise StageError(path, f"cannot read the events table ({exc})") from None
    if header is None:
        raise StageError(path, "events table is empty (no header)")
    return Events(header, rows, where)


def _is_nan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)


class _BadCell(ValueError):
    """A cell that cannot be used; its message names the column and the value."""


def _number(row: dict, column: str) -> float | None:
    """The row's finite number in `column`, None if the cell is empty."""
    value = row.get(column)
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise _BadCell(f"{column} {value!r} is not a finite number")
    return number


def _inside(name: str) -> bool:
    """Whether a recording name stays inside the recordings folder (the one DVC tracks)."""
    path = PurePath(name)
    return not path.is_absolute() and ".." not in path.parts


def parse_rows(events: Events, params: Params) -> list[ClipSpec | str]:
    """One ClipSpec per row, or the row's problem as a string; a missing column raises.

    Checks what the table alone decides: names, labels, windows and durations, and that the named
    recording exists. Whether a window fits its recording needs the recording (`check_windows`).
    """
    columns, recordings = set(events.columns), params.recordings
    need = {"recording", "label"}
    if not ({"time"} <= columns or {"start", "end"} <= columns):
        # Name what is closest to complete: a lone start (or end) wants its partner.
        need |= {"start", "end"} if columns & {"start", "end"} else {"time"}
    missing = sorted(need - columns)
    if missing:
        raise StageError(
            params.events,
            f"missing column {missing[0]!r} (has: {', '.join(events.columns)})",
        )
    w = params.window
    out: list[ClipSpec | str] = []
    for i, rec in enumerate(events.rows, start=1):
        name, label = rec.get("recording"), rec.get("label")
        try:
            start, end, at = (_number(rec, key) for key in ("start", "end", "time"))
        except _BadCell as exc:
            out.append(str(exc))
            continue
        if not isinstance(name, str) or not name.strip():
            out.append("recording is empty")
        elif not _inside(name):
            out.append(
                f"recording {name!r} is outside the recordings folder {recordings} (DVC does "
                "not track it): name a file inside it"
            )
        elif not isinstance(label, str) or label not in params.labels:
            out.append(f"label {label!r} is not in the vocabulary {list(params.labels)}")
        elif start is None and end is None and at is None:
            out.append("needs a time, or a start and an end")
        elif (start is None) != (end is None):
            out.append("has only one of start and end")
        elif start is not None and end is not None and start >= end:
            out.append(f"start {start:g} >= end {end:g}")
        elif not (recordings / name).is_file():
            out.append(f"unknown recording {name!r} (no such file in {recordings})")
        else:
            if start is None:
                start = at - w.before
                end = start + w.duration
            assert end is not None
            if not w.min_duration - 1e-9 <= end - start <= w.max_duration + 1e-9:
                out.append(
                    f"clip of {end - start:.3f} s is outside the allowed "
                    f"{w.min_duration:g}-{w.max_duration:g} s"
                )
            else:
                out.append(ClipSpec(i, name, label, start, end))
    return out


def assign_splits(clips: list[ClipSpec], seed: int, test_fraction: float) -> list[ClipSpec]:
    """Hold out round(test_fraction * n) of each label's n clips, chosen by a seeded stream per
    label over the clips in events-table order: a rule of the data, so every model trained on
    it holds out the same clips, and a clip's split depends only on its label's clips."""
    held: set[int] = set()
    for label in sorted({c.label for c in clips}):
        rows = sorted(c.row for c in clips if c.label == label)
        order = rng(seed, "gameplay_clips/split", label).permutation(len(rows))
        held.update(rows[i] for i in order[: round(test_fraction * len(rows))])
    return [replace(c, split="test" if c.row in held else "train") for c in clips]


def check_windows(specs: list[ClipSpec | str], infos: dict[str, MediaInfo]) -> None:
    """Turn rows whose window leaves its (probed) recording into problems, in place."""
    for k, spec in enumerate(specs):
        if isinstance(spec, ClipSpec) and spec.recording in infos:
            info = infos[spec.recording]
            if spec.start < 0 or spec.end > info.duration + 1e-6:
                specs[k] = (
                    f"window {spec.start:.3f}-{spec.end:.3f} s is outside recording "
                    f"{spec.recording!r} (0-{info.duration:.3f} s{_short_stream(info)})"
                )


def _short_stream(info: MediaInfo) -> str:
    """Which stream ends first, when the two ends differ enough to explain a refused window."""
    audio, video = require_audio(info).end, info.video.end
    if abs(audio - video) < 0.1:
        return ""
    (first, a), (second, b) = sorted([("audio", audio), ("video", video)], key=lambda x: x[1])
    return f": its {first} ends at {a:.3f} s, its {second} at {b:.3f} s"


def raise_bad_rows(specs: list[ClipSpec | str], events: Events, path: Path) -> None:
    bad = [(where, p) for where, p in zip(events.where, specs, strict=True) if isinstance(p, str)]
    if not bad:
        return
    where, problem = bad[0]
    more = "; ".join(f"{w}: {p}" for w, p in bad[1 : 1 + MAX_LISTED])
    if more:
        rest = len(bad) - 1 - MAX_LISTED
        problem += f" (and {len(bad) - 1} more bad rows: {more}{'; ...' if rest > 0 else ''})"
    raise StageError(f"{path}: {where}", problem)


# --- reading clips -------------------------------------------------------------------------------


def clip_frame_count(duration: float, fps: int) -> int:
    return round(duration * fps)


@dataclass(frozen=True)
class ShardJob:
    """Clips (sorted by recording, start) that one worker reads and writes as one shard."""

    path: Path
    clips: list[ClipSpec]
    schema: dataset.SampleSchema
    params: Params


@dataclass
class ShardResult:
    rows: int = 0
    bytes: int = 0
    frames: int = 0
    samples: int = 0
    per_label: dict[str, int] = field(default_factory=dict)
    recordings: set[str] = field(default_factory=set)
    sheet: dict[str, np.ndarray] = field(default_factory=dict)  # label -> sheet_frames(1st clip)
    failures: list[dict] = field(default_factory=list)


class RowGroup:
    """The clips of one row group, copied into zero-padded buffers reused from group to group
    (a fresh padded batch per group cost ~5% of the stage in page faults and zeroing)."""

    def __init__(self, schema: dataset.SampleSchema):
        shape = schema.arrays
        self.frames = np.empty((ROW_GROUP_CLIPS, *shape["frames"].shape), np.uint8)
        self.audio = np.empty((ROW_GROUP_CLIPS, *shape["audio"].shape), np.float32)
        self.sprites = (
            np.empty((ROW_GROUP_CLIPS, *shape["sprites"].shape), np.uint8)
            if "sprites" in shape
            else None
        )
        self.clips: list[ClipSpec] = []
        self.n_frames: list[int] = []
        self.n_samples: list[int] = []

    def add(
        self, clip: ClipSpec, frames: np.ndarray, sound: np.ndarray, sprites: np.ndarray | None
    ) -> None:
        k = len(self.clips)
        self.frames[k, : len(frames)] = frames
        self.frames[k, len(frames) :] = 0
        if self.sprites is not None and sprites is not None:
            self.sprites[k, : len(sprites)] = sprites
            self.sprites[k, len(sprites) :] = 0
        self.audio[k, : len(sound)] = sound
        self.audio[k, len(sound) :] = 0
        self.clips.append(clip)
        self.n_frames.append(len(frames))
        self.n_samples.append(len(sound))

    @property
    def full(self) -> bool:
        return len(self.clips) == ROW_GROUP_CLIPS

    def clear(self) -> None:
        """Empty the group; its buffers are kept for the next one."""
        self.clips.clear()
        self.n_frames.clear()
        self.n_samples.clear()


def write_shard(job: ShardJob) -> ShardResult:
    """Read the job's clips, a few at a time, into one shard file; memory is one row group.

    A recording that fails to decode stops the shard with its StageError (fail mode) or turns
    its remaining clips into failures (skip mode).
    """
    p, result = job.params, ShardResult()
    shard = dataset.ShardFile(job.path, job.schema, compression_level=p.compression_level)
    group = RowGroup(job.schema)
    for name, group_clips in groupby(job.clips, key=lambda c: c.recording):
        clips, read = list(group_clips), set()
        try:
            frames = FrameReader(p.recordings / name, (p.size, p.size))
            with AudioReader(p.recordings / name) as audio:
                for clip in clips:
                    times = sample_times(clip.start, clip_frame_count(clip.duration, p.fps), p.fps)
                    sound = audio.read(clip.start, clip.end, p.audio_rate)
                    sprites = None
                    if p.masks is not None:
                        shown = masks.read_frames(
                            masks.mask_path(p.masks, name), frames.indices_at(times)
                        )
                        sprites = masks.downsample(shown, p.size)
                    group.add(clip, frames.frames_at(times), sound, sprites)
                    read.add(clip.row)
                    if group.full:
                        _flush(shard, group, p, result)
        except StageError as exc:
            if p.on_bad_recording == "fail":
                shard.close()
                raise
            # Clips read before the failure are kept; the rest of the recording's are listed.
            result.failures += [_failure(c, str(exc)) for c in clips if c.row not in read]
    _flush(shard, group, p, result)
    result.bytes = shard.close()
    return result


def _flush(shard: dataset.ShardFile, group: RowGroup, p: Params, result: ShardResult) -> None:
    """Write the group's clips as one row group and count them; empties the group."""
    clips, rows = group.clips, len(group.clips)
    if not rows:
        return
    sprites = {} if group.sprites is None else {"sprites": group.sprites[:rows]}
    shard.write(
        {
            **sprites,
            "clip_id": np.array([c.row for c in clips], np.int64),
            "recording": [c.recording for c in clips],
            "label": [c.label for c in clips],
            "label_index": np.array([p.labels.index(c.label) for c in clips], np.int16),
            "start": np.array([c.start for c in clips]),
            "end": np.array([c.end for c in clips]),
            "n_frames": np.array(group.n_frames, np.int32),
            "frames": group.frames[:rows],
            "n_samples": np.array(group.n_samples, np.int32),
            "audio": group.audio[:rows],
            "audio_rate": np.full(rows, p.audio_rate, np.int32),
            "split": [c.split for c in clips],
        }
    )
    for k, clip in enumerate(clips):
        result.per_label[clip.label] = result.per_label.get(clip.label, 0) + 1
        if clip.label not in result.sheet:
            result.sheet[clip.label] = sheet_frames(group.frames[k, : group.n_frames[k]])
        result.recordings.add(clip.recording)
    result.rows += rows
    result.frames += sum(group.n_frames)
    result.samples += sum(group.n_samples)
    group.clear()


def schema(params: Params, max_frames: int, max_samples: int) -> dataset.SampleSchema:
    s = params.size
    sprite_column = () if params.masks is None else (
        dataset.ArrayColumn(
            "sprites", "uint8", (max_frames, s, s),
            "1 where a sprite (or the blur of one) covers the pixel, 0 where the level shows: "
            "from the recording's sprite masks (only when gameplay_clips.masks is given)",
        ),
    )  # fmt: skip
    return dataset.SampleSchema(
        name="gameplay-clips/v2",
        doc="Event clips cut from gameplay recordings: frames and the audio of the same span. Rows "
        "are sorted by recording, then start. Arrays are padded with zeros to the longest clip: "
        "frames[:n_frames] and audio[:n_samples] are the clip.",
        columns=(
            dataset.Column("clip_id", pa.int64(), "row of the event in the events table, 1-based"),
            dataset.Column("recording", pa.string(), "recording file, relative to its directory"),
            dataset.Column("label", pa.string(), "event kind"),
            dataset.Column("label_index", pa.int16(), "index of the label in the vocabulary"),
            dataset.Column("start", pa.float64(), "window start in the recording, s"),
            dataset.Column("end", pa.float64(), "window end in the recording, s"),
            dataset.Column(
                "n_frames", pa.int32(), "frames of the clip: round((end - start) * fps)"
            ),
            dataset.ArrayColumn(
                "frames", "uint8", (max_frames, s, s, 3), "RGB frames shown at start + k / fps"
            ),
            dataset.Column("n_samples", pa.int32(), "audio samples: round((end - start) * rate)"),
            dataset.ArrayColumn("audio", "float32", (max_samples,), "mono waveform in [-1, 1]"),
            dataset.Column("audio_rate", pa.int32(), "audio sample rate, Hz"),
            dataset.Column(
                "split", pa.string(), "train or test: a seeded rule per label (test_fraction)"
            ),
            *sprite_column,
        ),
        metadata={"fps": params.fps, "size": [s, s], "labels": list(params.labels)},
    )


# --- the stage ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    stats: dict
    failures: list[dict]
    sheet: dict[str, np.ndarray]  # label -> sheet_frames of its first clip
    workers: int


def probe_recording(path: Path) -> MediaInfo | StageError:
    """The recording's description, or what makes it unusable (returned: skip mode goes on)."""
    try:
        info = probe(path)
        require_audio(info)
    except StageError as exc:
        return exc
    return info


def probe_all(
    names: list[str], params: Params, pool: ProcessPoolExecutor | None
) -> tuple[dict[str, MediaInfo], dict[str, str]]:
    """Probe each recording (on the pool); the first broken one in name order raises, or (skip
    mode) is returned with its problem."""
    infos, broken = {}, {}
    paths = [params.recordings / name for name in names]
    for name, outcome in zip(names, run_jobs(probe_recording, paths, pool), strict=True):
        if not isinstance(outcome, StageError):
            infos[name] = outcome
        elif params.on_bad_recording == "fail":
            raise outcome
        else:
            broken[name] = str(outcome)
    return infos, broken


def check_success(clips: int, failures: list[dict], params: Params) -> None:
    """Refuse a run that cut none of the clips, or fewer than `min_success_share` of them (skip
    mode): a corpus gone bad must not replace a good dataset with an empty or partial one."""
    cut = clips - len(failures)
    if cut > 0 and cut >= params.min_success_share * clips - 1e-9:
        return
    first = min(failures, key=lambda f: f["row"])
    broken = sorted({f["recording"] for f in failures})
    names = ", ".join(broken[:MAX_LISTED]) + (", ..." if len(broken) > MAX_LISTED else "")
    raise StageError(
        params.recordings,
        f"{len(failures)} of {clips} clips failed, from {len(broken)} broken recordings "
        f"({names}); gameplay_clips.min_success_share is {params.min_success_share:g}. "
        f"First failure: {first['error']}",
    )


def validate_params(p: Params) -> None:
    dataset.check_compression_level(p.compression_level, "gameplay_clips.compression_level")
    w = p.window
    if not 0 < w.min_duration <= w.duration <= w.max_duration:
        raise StageError("params.yaml: gameplay_clips.window", "need 0 < min <= duration <= max")
    ranges = {  # beyond these a value is a typo (1e9 overflowed deep inside the decoder)
        "fps": (p.fps, 1, 240),
        "size": (p.size, 16, 4096),
        "audio_rate": (p.audio_rate, 1000, 192_000),
        "shard_rows": (p.shard_rows, 1, 100_000),
    }
    for key, (value, low, high) in ranges.items():
        if not low <= value <= high:
            raise StageError(f"params.yaml: gameplay_clips.{key}", f"must be {low} to {high}")
    if not 0 <= p.test_fraction < 1:
        raise StageError("params.yaml: gameplay_clips.test_fraction", "must be in [0, 1)")
    if not 0 < p.min_success_share <= 1:
        raise StageError("params.yaml: gameplay_clips.min_success_share", "must be in (0, 1]")
    if len(set(p.labels)) != len(p.labels) or not p.labels:
        raise StageError("params.yaml: gameplay_clips.labels", "must be a non-empty list of names")
    if not p.recordings.is_dir():
        raise StageError(p.recordings, "recordings directory not found (run dvc repro / dvc pull)")


def build(params: Params) -> Outcome:
    """Validate everything, then write the clip dataset to `params.out` atomically."""
    validate_params(params)
    events = read_events(params.events)
    specs = parse_rows(events, params)
    raise_bad_rows(specs, events, params.events)
    names = sorted({s.recording for s in specs if isinstance(s, ClipSpec)})
    if params.masks is not None:
        for name in names:
            masks.check_file(masks.mask_path(params.masks, name))
    # One pool probes the recordings, then writes the shards: at most this many jobs at once.
    jobs_at_most = max(len(names), math.ceil(len(specs) / params.shard_rows))
    workers = worker_count(params.workers, jobs_at_most, "gameplay_clips.workers")
    with worker_pool(workers) as pool:
        infos, broken = probe_all(names, params, pool)
        check_windows(specs, infos)
        raise_bad_rows(specs, events, params.events)
        clips = sorted(
            assign_splits(
                [s for s in specs if isinstance(s, ClipSpec)], params.seed, params.test_fraction
            ),
            key=lambda s: (s.recording, s.start, s.row),
        )
        failures = [_failure(c, broken[c.recording]) for c in clips if c.recording in broken]
        check_success(len(clips), failures, params)  # before any work when probing decides it
        todo = [c for c in clips if c.recording not in broken]
        max_frames = max((clip_frame_count(c.duration, params.fps) for c in todo), default=1)
        max_samples = max((round(c.duration * params.audio_rate) for c in todo), default=1)
        sample_schema = schema(params, max_frames, max_samples)
        # Shards of equal size, fixed by the clip count alone: the bytes do not depend on workers.
        shards = max(math.ceil(len(todo) / params.shard_rows), 1)
        parts = np.array_split(np.arange(len(todo)), shards)
        total = ShardResult(per_label=dict.fromkeys(params.labels, 0))
        with atomic_dir(params.out) as tmp:
            jobs = [
                ShardJob(
                    tmp / dataset.SHARD_PATTERN.format(k),
                    [todo[i] for i in part],
                    sample_schema,
                    params,
                )
                for k, part in enumerate(parts)
            ]
            results = run_jobs(write_shard, jobs, pool)
            try:
                for result in progress(results, desc="clip shards", total=len(jobs), unit="shard"):
                    _merge(total, result)
            finally:
                results.close()  # on failure, the workers stop before the temporary output goes
            failures += total.failures
            check_success(len(clips), failures, params)  # raising here publishes nothing
    stats = {
        "clips": total.rows,
        "clips_per_label": total.per_label,
        "clips_per_split": split_counts(todo, failures),
        "frames": total.frames,
        "audio_seconds": round(total.samples / params.audio_rate, 3),
        "failures": len(failures),
        "failed_recordings": sorted({f["recording"] for f in failures}),
        "recordings": len(total.recordings),
        "recording_seconds": round(sum(infos[n].duration for n in total.recordings), 3),
        "fps": params.fps,
        "frame_size": [params.size, params.size],
        "audio_rate": params.audio_rate,
        "shards": len(jobs),
        "bytes": total.bytes,
        "device": "cpu",
        "events": {"path": str(params.events), "sha256": file_digest(params.events)},
    }
    return Outcome(stats, sorted(failures, key=lambda f: f["row"]), total.sheet, workers)


def split_counts(todo: list[ClipSpec], failures: list[dict]) -> dict[str, int]:
    """Clips written per split (those that failed while cutting are not)."""
    failed = {f["row"] for f in failures}
    written = [c.split for c in todo if c.row not in failed]
    return {split: written.count(split) for split in ("train", "test")}


def _merge(total: ShardResult, part: ShardResult) -> None:
    total.rows += part.rows
    total.bytes += part.bytes
    total.frames += part.frames
    total.samples += part.samples
    for label, count in part.per_label.items():
        total.per_label[label] += count
    total.recordings |= part.recordings
    for label, frames in part.sheet.items():
        total.sheet.setdefault(label, frames)  # shards arrive in order: keeps the first clip
    total.failures += part.failures


def _failure(clip: ClipSpec, error: str) -> dict:
    return {
        "row": clip.row,
        "recording": clip.recording,
        "label": clip.label,
        "start": round(clip.start, 6),
        "end": round(clip.end, 6),
        "error": error,
    }


def sheet_frames(frames: np.ndarray) -> np.ndarray:
    """SHEET_FRAMES frames spread over a clip (a copy): all a shard sends back of its pixels."""
    return frames[np.linspace(0, len(frames) - 1, SHEET_FRAMES).round().astype(int)]


def contact_sheet(
    path: Path, sheet: dict[str, np.ndarray], labels: tuple[str, ...], size: int
) -> None:
    """One row per label: the sheet frames of its first clip."""
    blank = np.zeros((SHEET_FRAMES, size, size, 3), np.uint8)
    save_grid(path, np.stack([sheet.get(label, blank) for label in labels]))


def failures_csv(failures: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, ["row", "recording", "label", "start", "end", "error"], lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(failures)
    return buffer.getvalue()


# The numbers compared across runs; the rest of build's stats is a record (the stats JSON).
METRICS = ("clips", "frames", "audio_seconds", "failures", "recordings", "recording_seconds")


def main(params: Params) -> dict:
    """Cut labelled event clips (frames + audio) out of gameplay recordings."""
    started = time.perf_counter()  # the rate includes validating and probing
    outcome = build(params)
    seconds = time.perf_counter() - started
    s = outcome.stats
    rate = s["recording_seconds"] / seconds
    log.info(
        "%d clips (%d failed) from %.0f s of recordings: %.0fx real time",
        s["clips"], s["failures"], s["recording_seconds"], rate,
    )  # fmt: skip
    contact_sheet(params.contact_sheet, outcome.sheet, params.labels, params.size)
    with atomic_file(params.failures, "w") as handle:
        handle.write(failures_csv(outcome.failures))
    write_json(params.metrics, {k: s[k] for k in METRICS})
    write_json(params.stats, {k: v for k, v in s.items() if k not in METRICS})
    return {
        "build_seconds": round(seconds, 3),
        "recording_seconds_per_second": round(rate, 1),
        "clip_seconds_per_second": round(s["audio_seconds"] / seconds, 1),
        "workers": outcome.workers,
    }


if __name__ == "__main__":
    run_stage("gameplay_clips", Params, main)
