"""ResNet-152 video features at 1 fps, per second and pooled per clip (HowTo100M conventions).

Frames at 1 fps (decord), short side 224 (aspect kept, no crop), /255, ImageNet mean/std, ResNet-152
global average pool -> 2048-d per second, rows L2-normalised, stored float16. Per clip [s, e]:
seconds int(s) .. int(e) (inclusive), max-pool, L2-normalise; an empty span is zeros, flagged.
The frame pipeline (decode workers, cross-video batches, bf16 channels_last on GPU) lives in
`stages/mcn/video_pipeline.py`; this module is the stage: shards, tables, provenance.

Failures (missing or corrupt file, no frames) become rows of the failures table and the run goes
on; a video shorter than one second falls back to its first frame (a warning row).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import torch

from stages.common import dataset
from stages.common.cli import run_stage
from stages.common.closure import code_digest
from stages.common.device import device_record, resolve_device
from stages.common.errors import StageError
from stages.common.workers import MAX_PER_CORE
from stages.mcn import corpus as mcn_corpus
from stages.mcn import shards
from stages.mcn.corpus import Corpus, Failures, Rows, Shard
from stages.mcn.resnet import FEATURE_DIM, load_resnet152, resnet152
from stages.mcn.video_pipeline import Extracted, FrameModel, extract, pool_clip

log = logging.getLogger(__name__)

VERSION = "video_features/v1"


@dataclass(frozen=True)
class Params:
    seed: int
    source: Path  # the folder holding every clip table and video of `corpora` (a DVC dependency)
    corpora: tuple[Corpus, ...]
    weights: Path | None  # torchvision resnet152 state_dict (.pth); None = seeded random
    short_side: int
    batch_size: int  # frames per forward pass (tails zero-padded); GPU: 256
    chunk_seconds: int  # frames a decode worker holds at once: bounds its memory
    decode_workers: int  # DataLoader worker processes; 0 = decode in the main process
    device: Literal["auto", "cpu", "cuda"]
    threads: int  # torch CPU threads per process: fixed, since CPU bytes depend on it
    videos_per_shard: int
    out: Path
    metrics: Path
    stats: Path


class Context(NamedTuple):
    record: dict[str, Any]  # which weights
    device: str
    precision: str


# --- schemas ------------------------------------------------------------------------------------

SECONDS_SCHEMA = dataset.SampleSchema(
    name="mcn_features/video_seconds/v1",
    doc="ResNet-152 pool features at 1 fps: one row per (video, second); L2-normalised, float16.",
    columns=(
        *mcn_corpus.VIDEO_KEY,
        dataset.Column("second", pa.int32(), "t of the frame (frame nearest t s)"),
        dataset.ArrayColumn("feature", "float16", (FEATURE_DIM,), "L2-normalised 2048-d pool"),
    ),
)
CLIPS_SCHEMA = dataset.SampleSchema(
    name="mcn_features/video_clips/v1",
    doc="Per clip: max-pool over its seconds, L2-normalised; zeros and empty=true if no seconds.",
    columns=(
        *mcn_corpus.VIDEO_KEY,
        dataset.Column("clip", pa.int32(), "clip index within the video (by start time)"),
        dataset.Column("start", pa.float64(), "clip start, s"),
        dataset.Column("end", pa.float64(), "clip end, s"),
        dataset.Column("first_second", pa.int32(), "first second pooled"),
        dataset.Column("stop_second", pa.int32(), "one past the last second pooled"),
        dataset.Column("empty", pa.bool_(), "no seconds in the span: the feature is zeros"),
        dataset.Column("status", pa.string(), "the video's status (ok, short, corrupt, missing)"),
        dataset.ArrayColumn("feature", "float16", (FEATURE_DIM,), "pooled, L2-normalised"),
    ),
)
VIDEOS_SCHEMA = dataset.SampleSchema(
    name="mcn_features/video_videos/v1",
    doc="One row per video: what was decoded.",
    columns=(
        *mcn_corpus.VIDEO_KEY,
        dataset.Column("status", pa.string(), "ok, short (< 1 s: first frame), corrupt, missing"),
        dataset.Column("seconds", pa.int32(), "feature rows written"),
        dataset.Column("width", pa.int32(), "source frame width, px"),
        dataset.Column("height", pa.int32(), "source frame height, px"),
        dataset.Column("fps", pa.float64(), "source frame rate"),
    ),
)


# --- the stage ------------------------------------------------------------------------------------


def prepare(params: Params) -> Context:
    cores = len(os.sched_getaffinity(0))
    ranges = {  # beyond these a value is a typo: pools and batches that only exhaust memory
        "short_side": (32, 4096),
        "batch_size": (1, 4096),
        "chunk_seconds": (1, 3600),
        "threads": (1, 4 * cores),
        "decode_workers": (0, MAX_PER_CORE * cores),
    }
    for name, (low, high) in ranges.items():
        if not low <= getattr(params, name) <= high:
            raise StageError(f"params.yaml: video_features.{name}", f"must be {low} to {high}")
    mcn_corpus.check_source(
        params.source, params.corpora, "video_features", {"weights": params.weights}
    )
    device = resolve_device(params.device, "video_features.device")
    record = mcn_corpus.weights_record(params.weights, params.seed, resnet152)
    return Context(record, device, "bf16 autocast" if device == "cuda" else "fp32")


@functools.lru_cache(maxsize=2)
def frame_model(weights: Path | None, seed: int, device: str, threads: int) -> FrameModel:
    """One model per worker process, loaded once and reused across its shards."""
    torch.set_num_threads(threads)  # not the environment's: Dask workers get OMP_NUM_THREADS=1
    return FrameModel(load_resnet152(weights, seed), device)


def with_weights(schema: dataset.SampleSchema, context: Context) -> dataset.SampleSchema:
    return replace(
        schema,
        metadata={
            **schema.metadata,
            **context.record,
            "device": context.device,
            "precision": context.precision,
        },
    )


def shard_tables(shard: Shard, got: Extracted) -> tuple[Rows, Rows, Rows, Failures]:
    """Per-second rows, pooled clip rows, video rows and failures of one extracted shard."""
    seconds = Rows("video", "second", "feature")
    clips = Rows(
        "video", "clip", "start", "end", "first_second", "stop_second", "empty", "status", "feature"
    )
    videos = Rows("video", "status", "seconds", "width", "height", "fps")
    failures = Failures()
    for v, video in enumerate(shard.videos):
        status, features = got.status[v], got.features[v]
        width, height, fps, frames = got.meta[v]
        if status != "ok" or features is None:
            failures.add(video, -1, "error", status, got.message[v])
            features = np.zeros((0, FEATURE_DIM), np.float16)
        elif frames / fps < 1.0:
            status = "short"
            failures.add(
                video,
                -1,
                "warning",
                "short",
                "shorter than 1 s: features of its "
                "first frame (the reference extractor wrote nothing)",
            )
        videos.add(video, status, len(features), width, height, fps)
        for second, feature in enumerate(features):
            seconds.add(video, second, feature)
        for clip in shard.clips[v]:
            feature, lo, hi, empty = pool_clip(features, clip.start, clip.end)
            clips.add(video, clip.clip, clip.start, clip.end, lo, hi, empty, status, feature)
    return seconds, clips, videos, failures


def run_shard(params: Params, context: Context, shard: Shard) -> dict:
    """Compute one shard and write it atomically, unless an identical complete one exists."""
    code = code_digest("stages.mcn.video_features")
    threads = params.threads if context.device == "cpu" else None  # CPU sums depend on it
    digest = shards.fingerprint(
        VERSION, code, params.short_side, threads, context, shard.inputs(), shard.file_inputs()
    )
    if shards.is_complete(params.out, shard.key, digest):
        return {**shards.read_manifests(params.out, [shard.key])[0], "skipped": True}
    model = frame_model(params.weights, params.seed, context.device, params.threads)
    got = extract(
        shard.files,
        model,
        params.short_side,
        params.batch_size,
        params.chunk_seconds,
        params.decode_workers,
    )
    seconds, clips, videos, failures = shard_tables(shard, got)
    name = shard.corpus.name
    tables = {
        table: (with_weights(schema, context), rows.columns(name, schema))
        for table, schema, rows in (
            ("seconds", SECONDS_SCHEMA, seconds),
            ("clips", CLIPS_SCHEMA, clips),
            ("videos", VIDEOS_SCHEMA, videos),
            ("failures", mcn_corpus.FAILURES_SCHEMA, failures),
        )
    }
    record = {**context._asdict(), "frames": len(seconds), "failures_by_kind": failures.by_kind()}
    return shards.write_shard(params.out, shard.key, digest, tables, record)


def finalize(params: Params, context: Context, manifests: list[dict], seconds: float) -> dict:
    """Remove what this run's shards do not list, write metrics and stats; the run's record."""
    summary = mcn_corpus.summarise(manifests)
    rows = summary["rows"]
    # `seconds` is the table of per-second features: its row count is a frame count, not a time.
    metrics = {
        "videos": rows.get("videos", 0),
        "frame_features": rows.get("seconds", 0),
        "clips": rows.get("clips", 0),
        "failures": rows.get("failures", 0),
    }
    stats = {**summary, **context._asdict(), **device_record(context.device)}
    run = mcn_corpus.finish(params, manifests, metrics, stats)
    frames = sum(m["frames"] for m in manifests if not m.get("skipped"))
    return {
        **summary,
        **run,
        "device": context.device,
        "decode_workers": params.decode_workers,
        "frames_computed": frames,
        "shard_seconds": round(seconds, 2),
        "frames_per_second": round(frames / seconds, 2) if seconds > 0 and frames else None,
    }


def main(params: Params) -> dict:
    """ResNet-152 features at 1 fps of every corpus video, per second and pooled per clip."""
    run = mcn_corpus.run_local(sys.modules[__name__], params, "video_features")
    log.info(
        "%d frames, %s failures, %.1f frames/s on %s",
        run["frames_computed"],
        run["failures_by_kind"],
        run["frames_per_second"] or 0,
        run["device"],
    )
    return run


if __name__ == "__main__":
    run_stage("video_features", Params, main)
