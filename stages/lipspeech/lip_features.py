"""lip_features: each video frame's lip region -> DCT + PCA feature vector (`lip_transform`).

Decodes every utterance's video, crops the fixed lip box (`roi`, the paper's 55x55) to grey, keeps
K DCT coefficients, subtracts each utterance's mean (optional) and projects on a PCA fitted on the
training split only. Every file is checked (readable, ROI inside the frame, as long as the table
says) before anything is written.

Outputs (paths in params): `out` (schema `lip_schema`), `transform` (the fitted transform, an
invertible `.npz`), `metrics`, `stats` and `preview` (original ROIs above the ROIs rebuilt from
their features, for a few frames of a test utterance).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa

from stages.common import dataset, kernels
from stages.common.atomic import atomic_dir, write_json
from stages.common.cli import run_stage
from stages.common.errors import StageError
from stages.common.images import save_grid
from stages.common.media import probe, read_gray_frames
from stages.common.workers import worker_count
from stages.lipspeech import corpus
from stages.lipspeech.corpus import Corpus
from stages.lipspeech.lip_transform import LipTransform, dct2, fit_pca, select_coefficients

log = logging.getLogger(__name__)

PREVIEW_SCALE = 3  # ROI pixels per preview pixel side


@dataclass(frozen=True)
class Roi:
    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class Dct:
    keep: int  # coefficients kept per frame
    selection: Literal["zigzag", "energy"]


@dataclass(frozen=True)
class Pca:
    components: int | None  # exactly one of components / variance
    variance: float | None  # e.g. 0.95: the fewest components explaining that share


@dataclass(frozen=True)
class Params:
    corpus: Corpus
    out: Path
    transform: Path
    metrics: Path
    stats: Path
    preview: Path
    roi: Roi
    dct: Dct
    pca: Pca
    mean_normalise: bool
    preview_frames: int
    workers: int


def validate(p: Params) -> None:
    where = "params.yaml: lip_features"
    if p.roi.width < 2 or p.roi.height < 2 or p.roi.x < 0 or p.roi.y < 0:
        raise StageError(f"{where}.roi", "needs x, y >= 0 and a box of at least 2x2")
    if not 0 < p.dct.keep <= p.roi.width * p.roi.height:
        raise StageError(f"{where}.dct.keep", f"must be in 1..{p.roi.width * p.roi.height}")
    if (p.pca.components is None) == (p.pca.variance is None):
        raise StageError(f"{where}.pca", "set exactly one of components and variance")
    if p.pca.components is not None and not 0 < p.pca.components <= p.dct.keep:
        raise StageError(f"{where}.pca.components", f"must be in 1..dct.keep ({p.dct.keep})")
    if p.pca.variance is not None and not 0 < p.pca.variance <= 1:
        raise StageError(f"{where}.pca.variance", "must be in (0, 1]")
    if p.preview_frames < 1:
        raise StageError(f"{where}.preview_frames", "must be >= 1")


@dataclass(frozen=True)
class Clip:
    entry: corpus.Entry
    rois: np.ndarray  # (T, h, w) uint8
    fps: float


def read_clip(job: tuple[corpus.Entry, Roi]) -> Clip:
    """Decode one utterance's lip box, checking the box and the length against the table."""
    entry, roi = job
    video = probe(entry.path).video  # fails naming the file: unreadable, truncated, no frames
    if roi.x + roi.width > video.width or roi.y + roi.height > video.height:
        raise StageError(
            entry.path,
            f"ROI x={roi.x} y={roi.y} {roi.width}x{roi.height} lies outside the "
            f"{video.width}x{video.height} frame",
        )
    rois = read_gray_frames(entry.path, (roi.x, roi.y, roi.width, roi.height))
    fps = video.fps
    # A frame starting before the end of the utterance must exist (one frame of slack).
    if len(rois) < int(entry.duration * fps) - 1:
        raise StageError(
            entry.path,
            f"video has {len(rois)} frames ({len(rois) / fps:.3f} s), the table says "
            f"{entry.duration:.3f} s ({int(entry.duration * fps)} frames)",
        )
    return Clip(entry, rois, fps)


def fit(clips: list[Clip], p: Params) -> tuple[LipTransform, dict[str, np.ndarray]]:
    """Choose DCT coefficients and fit the PCA on the training clips only.

    Returns the transform and each utterance's kept DCT coefficients (T, K).
    """
    train = [c for c in clips if c.entry.split == "train"]
    energy = sum((dct2(c.rois) ** 2).sum(axis=0) for c in train) / sum(len(c.rois) for c in train)
    coefficients = select_coefficients(energy, p.dct.keep, p.dct.selection)
    selected = {}
    for c in clips:
        full = dct2(c.rois)
        selected[c.entry.utterance] = full[:, coefficients[:, 0], coefficients[:, 1]]
    names = [c.entry.utterance for c in clips]
    means = np.stack([selected[n].mean(axis=0) for n in names])
    train_rows = [selected[c.entry.utterance] for c in train]
    centred = [r - r.mean(axis=0) for r in train_rows] if p.mean_normalise else train_rows
    pca_mean, basis, ratio = fit_pca(np.concatenate(centred), p.pca.components, p.pca.variance)
    transform = LipTransform(
        roi=np.array([p.roi.x, p.roi.y, p.roi.width, p.roi.height]),
        coefficients=coefficients,
        mean_normalise=np.array(p.mean_normalise),
        pca_mean=pca_mean,
        basis=basis,
        explained_variance_ratio=ratio,
        utterances=np.array(names),
        utterance_means=means,
        train_mean=np.concatenate(train_rows).mean(axis=0),
    )
    return transform, selected


def lip_schema(dims: int, fps: float) -> dataset.SampleSchema:
    return dataset.SampleSchema(
        name="lipspeech/lip/v1",
        doc="DCT+PCA lip features, one row per video frame (invert with lip_transform.npz).",
        columns=(
            dataset.Column("utterance", pa.string(), "utterance id from the corpus table"),
            dataset.Column("split", pa.string(), "train or test"),
            dataset.Column("frame", pa.int32(), "video frame index k"),
            dataset.Column("time", pa.float64(), "frame start, seconds: k / fps"),
            dataset.ArrayColumn("features", "float32", (dims,), "PCA coordinates"),
        ),
        metadata={"fps": fps},
    )


def psnr(original: np.ndarray, rebuilt: np.ndarray) -> float:
    mse = float(((original.astype(np.float64) - rebuilt) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def preview(
    path: Path, clip: Clip, transform: LipTransform, features: np.ndarray, count: int
) -> None:
    """Original ROIs (top) above the ROIs rebuilt from their features (bottom), a few frames."""
    picks = np.linspace(0, len(clip.rois) - 1, min(count, len(clip.rois))).astype(int)
    rebuilt = np.round(transform.rebuild(features[picks], clip.entry.utterance)).astype(np.uint8)
    tiles = np.stack([clip.rois[picks], rebuilt])  # top row original, bottom row rebuilt
    tiles = tiles.repeat(PREVIEW_SCALE, axis=2).repeat(PREVIEW_SCALE, axis=3)
    save_grid(path, tiles)


def main(params: Params) -> dict:
    """DCT+PCA lip features of every video frame, PCA fitted on the training split."""
    validate(params)
    entries = corpus.read_corpus(params.corpus)
    started = time.perf_counter()
    workers = worker_count(params.workers, len(entries), "lip_features.workers")
    jobs = [(e, params.roi) for e in entries]
    clips = corpus.map_utterances(read_clip, jobs, workers, "lip video")
    decoded = time.perf_counter() - started
    rates = {round(c.fps, 3) for c in clips}
    if len(rates) > 1:
        raise StageError(params.corpus.table, f"videos differ in frame rate: {sorted(rates)} fps")
    fps = clips[0].fps
    transform, selected = fit(clips, params)
    features = {n: transform.project(x, transform.offset(n)) for n, x in selected.items()}
    seconds = time.perf_counter() - started
    test = [c for c in clips if c.entry.split == "test"] or clips
    quality = psnr(
        np.concatenate([c.rois for c in test]),
        np.concatenate(
            [transform.rebuild(features[c.entry.utterance], c.entry.utterance) for c in test]
        ),
    )
    schema = lip_schema(transform.dims, fps)
    with (
        atomic_dir(params.out) as tmp,
        dataset.ShardWriter(tmp, schema, shard_rows=200_000) as writer,
    ):
        for c in clips:
            n = len(c.rois)
            writer.write(
                {
                    "utterance": [c.entry.utterance] * n,
                    "split": [c.entry.split] * n,
                    "frame": np.arange(n, dtype=np.int32),
                    "time": np.arange(n) / fps,
                    "features": features[c.entry.utterance].astype(np.float32),
                }
            )
    transform.save(params.transform)
    preview(
        params.preview,
        test[0],
        transform,
        features[test[0].entry.utterance],
        params.preview_frames,
    )
    frames = sum(len(c.rois) for c in clips)
    ratio = transform.explained_variance_ratio
    write_json(
        params.metrics,
        {
            "utterances": {s: sum(c.entry.split == s for c in clips) for s in corpus.SPLITS},
            "frames": frames,
            "pca_dims": transform.dims,
            "explained_variance_kept": round(float(ratio[: transform.dims].sum()), 6),
            "test_rebuild_psnr_db": round(quality, 3),
        },
    )
    write_json(
        params.stats,
        {
            "corpus": corpus.provenance(params.corpus.table),
            "cpu_kernels": kernels.record(),  # the PCA's bits depend on OpenBLAS's kernels
            "fps": fps,
            "dct_kept": len(transform.coefficients),
            "dct_selection": params.dct.selection,
            "explained_variance": {
                "per_component": [round(float(r), 6) for r in ratio[: transform.dims]],
                "note": "share of the training split's variance of the kept DCT coefficients"
                + (" after per-utterance mean removal" if params.mean_normalise else ""),
            },
            "preview_utterance": test[0].entry.utterance,
        },
    )
    log.info("%d frames -> %d dims (%.0f frames/s)", frames, transform.dims, frames / seconds)
    return {
        "features_seconds": round(seconds, 3),
        "decode_seconds": round(decoded, 3),
        "frames_per_second": round(frames / seconds, 1),
        "workers": workers,
    }


if __name__ == "__main__":
    run_stage("lip_features", Params, main)
