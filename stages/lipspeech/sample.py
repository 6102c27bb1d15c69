"""lipspeech_sample: the embedded stand-in for M2TINIT, a synthetic talker's audio-visual corpus.

Writes the folder `out`: one mp4 per utterance in `videos/` (H.264 720x480 at 29.97 fps of the lower
face; AAC 48 kHz speech from the same phone sequence, see `stages.lipspeech.talker`) and the
utterance table `table` (inside `out`), which the feature stages read (the same format a real
corpus provides):

    utterance, file (relative to the table), split (train/test), duration (s), text,
    phonemes (space-separated), phone_ends (space-separated seconds, one per phoneme)

Each utterance draws from its own seeded stream, so the corpus does not depend on worker count.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.common.atomic import atomic_dir, write_json
from stages.common.cli import run_stage
from stages.common.errors import StageError
from stages.common.media import write_media
from stages.common.seeding import rng
from stages.common.workers import worker_count
from stages.lipspeech import talker
from stages.lipspeech.corpus import map_utterances

log = logging.getLogger(__name__)

# x264's own default key-frame interval, which the corpus has always been encoded with (the lip
# stage decodes whole videos, so it never seeks); keeps its video bit-identical.
GOP = 250
AUDIO_BITRATE = 192_000  # AAC, bit/s
COLUMNS = ("utterance", "file", "split", "duration", "text", "phonemes", "phone_ends")


@dataclass(frozen=True)
class Params:
    seed: int
    out: Path  # the corpus folder: videos/ and the table
    table: Path  # the utterance table, directly in `out`
    metrics: Path
    stats: Path
    utterances: int
    min_seconds: float
    max_seconds: float
    test_fraction: float
    jitter_px: float  # peak head motion, so the lip box is not exactly fixed
    channels: int  # 1 = mono, 2 = stereo (the same speech on both)
    crf: int  # H.264 quality (lower = better)
    workers: int  # processes; 0 = one per core


def validate(p: Params) -> None:
    where = "params.yaml: lipspeech_sample"
    if p.table.parent != p.out:  # its `file` column is relative to the table's folder
        raise StageError(f"{where}.table", f"must lie directly in out ({p.out})")
    if p.utterances < 2:
        raise StageError(f"{where}.utterances", "need at least 2 (one per split)")
    if not 0.5 <= p.min_seconds <= p.max_seconds:
        raise StageError(f"{where}.min_seconds", "need 0.5 <= min_seconds <= max_seconds")
    if not 0 < p.test_fraction < 1:
        raise StageError(f"{where}.test_fraction", "must be in (0, 1)")
    if p.channels not in (1, 2):
        raise StageError(f"{where}.channels", "must be 1 or 2")
    if not 0 <= p.jitter_px <= 8:
        raise StageError(f"{where}.jitter_px", "must be in [0, 8] px")


def test_split(seed: int, count: int, fraction: float) -> np.ndarray:
    """True for test utterances: a seeded choice of round(count * fraction), at least one each."""
    n_test = min(max(1, round(count * fraction)), count - 1)
    test = np.zeros(count, bool)
    test[rng(seed, "lipspeech-split").permutation(count)[:n_test]] = True
    return test


@dataclass(frozen=True)
class Job:
    index: int
    directory: Path
    params: Params


def make_utterance(job: Job) -> dict:
    """Synthesise, render and encode one utterance; returns its table row (without split)."""
    p = job.params
    stream = rng(p.seed, "lipspeech", job.index)
    utt = talker.random_utterance(stream, p.min_seconds, p.max_seconds)
    speech = talker.synthesize(utt, stream)
    frames = talker.render_frames(utt, stream, p.jitter_px, int(utt.duration * float(talker.FPS)))
    name = f"utt{job.index:04d}"
    file = f"videos/{name}.mp4"
    write_media(
        job.directory / file,
        frames,
        talker.FPS,
        np.repeat(speech[None], p.channels, axis=0),
        talker.SAMPLE_RATE,
        crf=p.crf,
        preset="ultrafast",  # 2x faster than the default, files still small
        gop=GOP,
        audio_bitrate=AUDIO_BITRATE,
    )
    return {
        "utterance": name,
        "file": file,
        "duration": f"{utt.duration:.4f}",
        "text": utt.text,
        "phonemes": " ".join(utt.phones),
        "phone_ends": " ".join(f"{e:.4f}" for e in utt.ends),
    }


def table_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def main(params: Params) -> dict:
    """Synthesise the talker corpus: videos with speech plus a table of utterances."""
    validate(params)
    test = test_split(params.seed, params.utterances, params.test_fraction)
    started = time.perf_counter()
    workers = worker_count(params.workers, params.utterances, "lipspeech_sample.workers")
    with atomic_dir(params.out) as tmp:
        (tmp / "videos").mkdir()
        jobs = [Job(i, tmp, params) for i in range(params.utterances)]
        rows = map_utterances(make_utterance, jobs, workers, "utterances")
        for row, is_test in zip(rows, test, strict=True):
            row["split"] = "test" if is_test else "train"
        (tmp / params.table.name).write_text(table_text(rows))
        sizes = sum(f.stat().st_size for f in (tmp / "videos").iterdir())
    seconds = time.perf_counter() - started
    phones = Counter(p for row in rows for p in row["phonemes"].split())
    durations = [float(r["duration"]) for r in rows]
    write_json(
        params.metrics,
        {
            "utterances": {"train": int((~test).sum()), "test": int(test.sum())},
            "speech_seconds": round(sum(durations), 3),
        },
    )
    write_json(
        params.stats,
        {
            "duration_range_s": [round(min(durations), 3), round(max(durations), 3)],
            "phone_counts": dict(sorted(phones.items())),
            "video": {"width": talker.WIDTH, "height": talker.HEIGHT, "fps": str(talker.FPS)},
            "audio": {"sample_rate": talker.SAMPLE_RATE, "channels": params.channels},
            "bytes": sizes,
        },
    )
    log.info("%d utterances, %.1f s of speech in %.1f s", len(rows), sum(durations), seconds)
    return {"workers": workers}


if __name__ == "__main__":
    run_stage("lipspeech_sample", Params, main)
