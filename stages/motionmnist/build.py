"""MotionMNIST: MNIST digits moving along 8 straight lines (seed 002, MDBiGAN).

Each video is 20 frames of 64x64 grey pixels. Per frame the 28x28 digit is rotated by a fresh
angle from U(0, max_angle] degrees with PIL's `Image.rotate` semantics (nearest neighbour, about
the centre, counter-clockwise), then pasted (replacing, clipped) at
`start + 1.8 * t * direction + N(0, 1)` per axis, truncated toward zero
(`../shared/specs/motionmnist.md`). Video id = digit_index * 8 + motion.

The renderer is vectorised: PIL's nearest-neighbour affine transform is 16.16 fixed-point integer
arithmetic, so `pil_fixed_point_matrix` reproduces its coefficients and `rotate_nearest` evaluates
the same integer map for a whole batch of frames at once, giving exactly PIL's pixels.

Randomness comes in blocks of BLOCK_DIGITS digits, each with its own seeded stream; a block is one
shard, rendered by one worker process, so the bytes do not depend on the number of workers.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
from numpy.lib.stride_tricks import as_strided

from stages.common import dataset
from stages.common.atomic import atomic_dir, write_json
from stages.common.cli import run_stage
from stages.common.errors import StageError
from stages.common.hashing import file_digest
from stages.common.images import save_grid
from stages.common.progress import progress
from stages.common.seeding import rng
from stages.common.workers import worker_count
from stages.motionmnist.idx import read_mnist

log = logging.getLogger(__name__)

FRAMES = 20
CANVAS = 64
DIGIT = 28
STEP = (CANVAS - DIGIT) / FRAMES  # 1.8 px per frame
FAR, MID = CANVAS - DIGIT, (CANVAS - DIGIT) // 2  # 36, 18
BLOCK_DIGITS = 128  # digits per random stream and per shard (1,024 videos)
RENDER_BATCH = 32  # videos rendered together: keeps the index maps in cache
ROW_GROUP_VIDEOS = 256  # videos per Parquet row group: large groups compress and write faster


class Motion(NamedTuple):
    name: str
    start: tuple[int, int]  # (x, y) of the top-left corner at t = 0
    direction: tuple[int, int]  # (dx, dy), y grows downward


MOTIONS = (
    Motion("down", (MID, 0), (0, 1)),
    Motion("up", (MID, FAR), (0, -1)),
    Motion("left", (FAR, MID), (-1, 0)),
    Motion("right", (0, MID), (1, 0)),
    Motion("top-left to bottom-right", (0, 0), (1, 1)),
    Motion("bottom-left to top-right", (0, FAR), (1, -1)),
    Motion("top-right to bottom-left", (FAR, 0), (-1, 1)),
    Motion("bottom-right to top-left", (FAR, FAR), (-1, -1)),
)
STARTS = np.array([m.start for m in MOTIONS], np.float64)
DIRECTIONS = np.array([m.direction for m in MOTIONS], np.float64)

SCHEMA = dataset.SampleSchema(
    name="motionmnist/v1",
    doc="MotionMNIST videos: one row per (digit, motion); video_id = digit_index * 8 + motion.",
    columns=(
        dataset.Column("video_id", pa.int64(), "digit_index * 8 + motion"),
        dataset.Column("digit_index", pa.int32(), "index of the digit in its source, file order"),
        dataset.Column("digit_class", pa.int8(), "the digit's class, 0..9"),
        dataset.Column("motion", pa.int8(), "motion label 0..7 (names in the schema metadata)"),
        dataset.Column("split", pa.string(), "train or test; a digit's 8 videos share one split"),
        dataset.ArrayColumn("frames", "uint8", (FRAMES, CANVAS, CANVAS), "grey frames, t, y, x"),
        dataset.ArrayColumn("angles", "float32", (FRAMES,), "rotation per frame, degrees, CCW"),
        dataset.ArrayColumn("positions", "int16", (FRAMES, 2), "pasted top-left corner (x, y)"),
    ),
    metadata={"motions": [m.name for m in MOTIONS], "step_px_per_frame": STEP},
)


@dataclass(frozen=True)
class DigitSource:
    images: Path  # IDX images, e.g. t10k-images-idx3-ubyte.gz
    labels: Path  # IDX labels
    count: int | None  # how many digits, from the first; None = all the files hold


@dataclass(frozen=True)
class Params:
    seed: int
    digits: DigitSource
    max_angle: float
    jitter: float
    test_fraction: float
    workers: int  # 0 = one per core
    compression_level: int
    out: Path
    metrics: Path
    stats: Path
    preview: Path


# --- pure functions: arrays in, arrays out ------------------------------------------------------


def pil_fixed_point_matrix(angles: np.ndarray, size: int = DIGIT) -> np.ndarray:
    """The six 16.16 fixed-point coefficients PIL's NEAREST affine uses for `rotate(angle)`.

    `Image.rotate` builds the inverse matrix from cos/sin rounded to 15 decimals about the centre
    (size/2, size/2); libImaging's `affine_fixed` shifts it to pixel centres and rounds each
    coefficient with floor(v * 65536 + 0.5). Returns int64 (n, 6): a0..a5 in PIL's order.
    """
    theta = -np.radians(np.asarray(angles, np.float64) % 360.0)
    cos, sin = np.round(np.cos(theta), 15), np.round(np.sin(theta), 15)
    centre = size / 2.0
    a = [
        cos,
        sin,
        cos * -centre + sin * -centre + 0.0,
        -sin,
        cos,
        -sin * -centre + cos * -centre + 0.0,
    ]
    a[2] = a[2] + centre
    a[5] = a[5] + centre

    def fix(v: np.ndarray) -> np.ndarray:
        return np.floor(v * 65536.0 + 0.5).astype(np.int64)

    return np.stack(
        [
            fix(a[0]),
            fix(a[1]),
            fix(a[2] + a[0] * 0.5 + a[1] * 0.5),
            fix(a[3]),
            fix(a[4]),
            fix(a[5] + a[3] * 0.5 + a[4] * 0.5),
        ],
        axis=1,
    )


# A rotation about the centre keeps every source coordinate within size/sqrt(2) of it, so a zero
# border of PAD pixels makes every index valid and out-of-digit samples read black, as in PIL.
PAD = math.ceil(DIGIT / math.sqrt(2) - DIGIT / 2) + 1
PADDED = DIGIT + 2 * PAD


def rotate_nearest(
    digits: np.ndarray, angles: np.ndarray, which: np.ndarray | None = None
) -> np.ndarray:
    """Rotate digits (28, 28) uint8 by `angles` exactly as `PIL.Image.rotate(angle)` does.

    Patch i is digit `which[i]` (default: digit i) rotated by `angles[i]`; returns (n, 28, 28).
    """
    padded = np.zeros((len(digits), PADDED, PADDED), np.uint8)
    padded[:, PAD:-PAD, PAD:-PAD] = digits
    which = np.arange(len(angles)) if which is None else np.asarray(which)
    a = pil_fixed_point_matrix(angles).astype(np.int32)
    coords = np.arange(DIGIT, dtype=np.int32)
    # xin(y, x) = (a2 + y*a1 + x*a0) >> 16; yin(y, x) = (a5 + y*a4 + x*a3) >> 16
    x_in = (a[:, 2:3] + a[:, 1:2] * coords)[:, :, None] + (a[:, 0:1] * coords)[:, None, :]
    y_in = (a[:, 5:6] + a[:, 4:5] * coords)[:, :, None] + (a[:, 3:4] * coords)[:, None, :]
    x_in >>= 16
    y_in >>= 16
    y_in *= PADDED
    x_in += y_in
    x_in += (which.astype(np.int32) * PADDED * PADDED + PAD * PADDED + PAD)[:, None, None]
    return padded.reshape(-1).take(x_in)


def positions(motions: np.ndarray, jitter: np.ndarray) -> np.ndarray:
    """Top-left corners (n, T, 2) as (x, y): start + STEP * t * direction + jitter, truncated."""
    t = np.arange(jitter.shape[1], dtype=np.float64)[None, :, None]
    exact = STARTS[motions][:, None, :] + STEP * t * DIRECTIONS[motions][:, None, :] + jitter
    return np.trunc(exact).astype(np.int32)


def paste(
    patches: np.ndarray, corners: np.ndarray, canvas: int = CANVAS, out: np.ndarray | None = None
) -> np.ndarray:
    """Paste (n, 28, 28) patches onto black (n, canvas, canvas) frames at (x, y) corners, clipped.

    Patches wholly inside the canvas (all but a few percent) are copied in one indexed assignment
    through a strided view of every 28x28 window; the rest are clipped one by one. `out`, if
    given, is a C-contiguous uint8 (n, canvas, canvas) array to draw into (saves a copy).
    """
    n = len(patches)
    if out is None:
        out = np.zeros((n, canvas, canvas), np.uint8)
    else:
        out.fill(0)
    x, y = corners[:, 0], corners[:, 1]
    inside = (x >= 0) & (y >= 0) & (x <= canvas - DIGIT) & (y <= canvas - DIGIT)
    span = canvas - DIGIT + 1
    windows = as_strided(
        out,
        shape=(n, span, span, DIGIT, DIGIT),
        strides=(canvas * canvas, canvas, 1, canvas, 1),
        writeable=True,
    )
    f = np.flatnonzero(inside)
    windows[f, y[f], x[f]] = patches[f]
    for i in np.flatnonzero(~inside):
        xi, yi = int(x[i]), int(y[i])
        x0, y0, x1, y1 = max(xi, 0), max(yi, 0), min(xi + DIGIT, canvas), min(yi + DIGIT, canvas)
        if x0 < x1 and y0 < y1:
            out[i, y0:y1, x0:x1] = patches[i, y0 - yi : y1 - yi, x0 - xi : x1 - xi]
    return out


def render(
    digits: np.ndarray,
    motions: np.ndarray,
    angles: np.ndarray,
    jitter: np.ndarray,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render videos: digits (n, 28, 28), motions (n,), angles (n, T), jitter (n, T, 2).

    Returns frames (n, T, 64, 64) uint8 (drawn into `out` if given) and the pasted corners
    (n, T, 2) as (x, y).
    """
    n, frames = angles.shape
    corners = positions(motions, jitter)
    patches = rotate_nearest(digits, angles.reshape(-1), np.repeat(np.arange(n), frames))
    flat_out = None if out is None else out.reshape(n * frames, CANVAS, CANVAS)
    video = paste(patches, corners.reshape(-1, 2), out=flat_out)
    return video.reshape(n, frames, CANVAS, CANVAS), corners


def assign_splits(seed: int, n_digits: int, test_fraction: float) -> np.ndarray:
    """True where a digit (and so its 8 videos) is in the test split.

    One uniform draw per digit in source order, so adding digits never moves earlier ones.
    """
    return rng(seed, "motionmnist-split").random(n_digits) < test_fraction


def random_draws(
    seed: int, block: int, n_videos: int, max_angle: float, jitter: float
) -> tuple[np.ndarray, np.ndarray]:
    """Angles in (0, max_angle] and position jitter for one block's videos, from its own stream."""
    stream = rng(seed, "motionmnist", block)
    angles = max_angle * (1.0 - stream.random((n_videos, FRAMES)))
    offsets = jitter * stream.standard_normal((n_videos, FRAMES, 2))
    return angles, offsets


# --- digits ---------------------------------------------------------------------------------------


class Digits(NamedTuple):
    images: np.ndarray  # (n, 28, 28) uint8
    classes: np.ndarray  # (n,) uint8
    provenance: dict


def load_digits(source: DigitSource) -> Digits:
    images, classes = read_mnist(source.images, source.labels)
    provenance = {
        "images": {"path": str(source.images), "sha256": file_digest(source.images)},
        "labels": {"path": str(source.labels), "sha256": file_digest(source.labels)},
    }
    count = len(images) if source.count is None else source.count
    if not 0 < count <= len(images):
        raise StageError(
            "params.yaml: motionmnist.digits.count", f"{count} asked, the source has {len(images)}"
        )
    return Digits(images[:count], classes[:count], provenance | {"count": count})


# --- the stage ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardJob:
    block: int
    first_digit: int
    images: np.ndarray
    classes: np.ndarray
    test: np.ndarray
    path: Path
    params: Params


def render_shard(job: ShardJob) -> int:
    """Render one block of digits x 8 motions and write it as one shard; returns its bytes."""
    p = job.params
    n_digits = len(job.images)
    n_videos = n_digits * len(MOTIONS)
    angles, offsets = random_draws(p.seed, job.block, n_videos, p.max_angle, p.jitter)
    digit_of_video = np.repeat(np.arange(n_digits), len(MOTIONS))
    motions = np.tile(np.arange(len(MOTIONS)), n_digits)
    frames = np.empty((n_videos, FRAMES, CANVAS, CANVAS), np.uint8)
    corners = np.empty((n_videos, FRAMES, 2), np.int32)
    for lo in range(0, n_videos, RENDER_BATCH):
        part = slice(lo, lo + RENDER_BATCH)
        _, corners[part] = render(
            job.images[digit_of_video[part]],
            motions[part],
            angles[part],
            offsets[part],
            frames[part],
        )
    digit_index = job.first_digit + digit_of_video
    columns = {
        "video_id": digit_index.astype(np.int64) * len(MOTIONS) + motions,
        "digit_index": digit_index.astype(np.int32),
        "digit_class": job.classes[digit_of_video].astype(np.int8),
        "motion": motions.astype(np.int8),
        "split": np.where(job.test[digit_of_video], "test", "train"),
        "frames": frames,
        "angles": angles.astype(np.float32),
        "positions": corners.astype(np.int16),
    }
    shard = dataset.ShardFile(job.path, SCHEMA, compression_level=p.compression_level)
    for lo in range(0, n_videos, ROW_GROUP_VIDEOS):
        shard.write({name: value[lo : lo + ROW_GROUP_VIDEOS] for name, value in columns.items()})
    return shard.close()


def build(params: Params, out: Path) -> tuple[dict, dict]:
    """Write the dataset to `out` (atomically); return its statistics and the run's timings."""
    digits = load_digits(params.digits)
    if not 0 < params.max_angle <= 360:
        raise StageError("params.yaml: motionmnist.max_angle", "must be in (0, 360]")
    if not 0 <= params.test_fraction <= 1:
        raise StageError("params.yaml: motionmnist.test_fraction", "must be in [0, 1]")
    if not params.jitter >= 0:
        raise StageError("params.yaml: motionmnist.jitter", "must be >= 0 px")
    dataset.check_compression_level(params.compression_level, "motionmnist.compression_level")
    n = len(digits.images)
    test = assign_splits(params.seed, n, params.test_fraction)
    started = time.perf_counter()
    workers = worker_count(params.workers, -(-n // BLOCK_DIGITS), "motionmnist.workers")
    with atomic_dir(out) as tmp:
        jobs = [
            ShardJob(
                block=b,
                first_digit=lo,
                images=digits.images[lo : lo + BLOCK_DIGITS],
                classes=digits.classes[lo : lo + BLOCK_DIGITS],
                test=test[lo : lo + BLOCK_DIGITS],
                path=tmp / dataset.SHARD_PATTERN.format(b),
                params=params,
            )
            for b, lo in enumerate(range(0, n, BLOCK_DIGITS))
        ]
        with ProcessPoolExecutor(workers) as pool:
            results = pool.map(render_shard, jobs)
            sizes = list(
                progress(results, desc="motionmnist shards", total=len(jobs), unit="shard")
            )
    seconds = time.perf_counter() - started
    videos = n * len(MOTIONS)
    n_test = int(test.sum())
    stats = {
        "videos": videos,
        "digits": digits.provenance,
        "videos_per_motion": {
            split: {m.name: count for m in MOTIONS}
            for split, count in (("train", n - n_test), ("test", n_test))
        },
        "videos_per_split": {"train": (n - n_test) * len(MOTIONS), "test": n_test * len(MOTIONS)},
        "digit_classes": np.bincount(digits.classes, minlength=10).tolist(),
        "shards": len(jobs),
        "bytes": int(sum(sizes)),
        "bytes_per_video": round(sum(sizes) / videos, 1),
    }
    timings = {"videos_per_second": round(videos / seconds, 1), "workers": workers}
    return stats, timings


def metrics_of(stats: dict) -> dict:
    """The numbers that define the dataset, compared across runs (`dvc metrics diff`)."""
    split = stats["videos_per_split"]
    return {
        "videos": stats["videos"],
        "digits": stats["digits"]["count"],
        "train_videos": split["train"],
        "test_videos": split["test"],
        "bytes_per_video": stats["bytes_per_video"],
    }


def preview(out: Path, path: Path, digit_index: int = 0) -> None:
    """One row per motion, frames left to right, for one digit, read back from the dataset."""
    first = next(dataset.iter_batches(out, columns=["digit_index", "motion", "frames"]))
    rows = first["frames"][first["digit_index"] == digit_index]
    order = np.argsort(first["motion"][first["digit_index"] == digit_index])
    save_grid(path, rows[order], border=2)


def main(params: Params) -> dict:
    """Build MotionMNIST (digits x 8 motions) as a Parquet dataset, with stats and a preview."""
    stats, timings = build(params, params.out)
    log.info(
        "%d videos (%.0f videos/s), %.1f KB/video",
        stats["videos"],
        timings["videos_per_second"],
        stats["bytes_per_video"] / 1e3,
    )
    preview(params.out, params.preview)
    write_json(params.metrics, metrics_of(stats))
    write_json(params.stats, stats)
    return timings


if __name__ == "__main__":
    run_stage("motionmnist", Params, main)
