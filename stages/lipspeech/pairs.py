"""lipspeech_pairs: frame-aligned (lip feature, mel-cepstrum) rows for the GGDRM training stage.

Video runs at 29.97 fps, mel-cepstra at 200 Hz (5 ms), so one of the two is resampled in time:

- `interpolate` (default): one row per mel-cepstrum frame. Its lip features are interpolated
  linearly between the two video frames around the frame's centre time (video frame k is taken at
  k / fps). Mel-cepstrum frames before the first or after the last video frame are dropped.
- `pool`: one row per video frame k. Its mel-cepstrum is the mean of the frames whose centres lie
  in [k / fps - 0.5 / fps, k / fps + 0.5 / fps); video frames with none are dropped.

Reads the datasets `lip` and `mcep`; writes `out` (schema `pairs_schema`), `metrics` and `stats`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa

from stages.common import dataset, kernels
from stages.common.atomic import atomic_dir, write_json
from stages.common.cli import run_stage
from stages.common.errors import StageError
from stages.lipspeech.mcd import mcd

log = logging.getLogger(__name__)

RULES = {
    "interpolate": "one row per mel-cepstrum frame; lip features linearly interpolated in time "
    "between the video frames around its centre (video frame k at k / fps); frames outside the "
    "video's span dropped",
    "pool": "one row per video frame k; mel-cepstrum averaged over the frames centred in "
    "[k/fps - 0.5/fps, k/fps + 0.5/fps); video frames with none dropped",
}


@dataclass(frozen=True)
class Params:
    lip: Path  # lip_features' dataset
    mcep: Path  # mel_cepstrum's dataset
    out: Path
    metrics: Path
    stats: Path
    alignment: Literal["interpolate", "pool"]


def interpolate_features(
    lip_times: np.ndarray, lip: np.ndarray, times: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Lip features (n, d) linearly interpolated at `times` inside the video's span; and which
    `times` were inside (a boolean mask of the input)."""
    inside = (times >= lip_times[0]) & (times <= lip_times[-1])
    t = times[inside]
    upper = np.clip(np.searchsorted(lip_times, t, side="right"), 1, len(lip_times) - 1)
    lower = upper - 1
    span = lip_times[upper] - lip_times[lower]
    weight = np.clip((t - lip_times[lower]) / span, 0.0, 1.0)[:, None]
    return lip[lower] * (1 - weight) + lip[upper] * weight, inside


def pool_mcep(
    lip_times: np.ndarray, fps: float, mcep_times: np.ndarray, mcep: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean mel-cepstrum (n, D) per video frame over frames centred within half a video frame;
    and which video frames had any (a boolean mask)."""
    slot = np.floor((mcep_times + 0.5 / fps) * fps).astype(np.int64)  # nearest video frame
    valid = (slot >= 0) & (slot < len(lip_times))
    counts = np.bincount(slot[valid], minlength=len(lip_times))
    sums = np.zeros((len(lip_times), mcep.shape[1]))
    np.add.at(sums, slot[valid], mcep[valid])
    has = counts > 0
    return sums[has] / counts[has, None], has


def pairs_schema(lip_dims: int, mcep_dims: int, alignment: str) -> dataset.SampleSchema:
    return dataset.SampleSchema(
        name="lipspeech/pairs/v1",
        doc="Frame-aligned lip features and mel-cepstra, one row per aligned frame.",
        columns=(
            dataset.Column("utterance", pa.string(), "utterance id"),
            dataset.Column("split", pa.string(), "train or test"),
            dataset.Column("frame", pa.int32(), "mcep frame (interpolate) or video frame (pool)"),
            dataset.Column("time", pa.float64(), "seconds from the start of the utterance"),
            dataset.ArrayColumn("lip", "float32", (lip_dims,), "DCT+PCA lip features"),
            dataset.ArrayColumn("mcep", "float32", (mcep_dims,), "mel-cepstrum c0..cM"),
        ),
        metadata={"alignment": alignment, "rule": RULES[alignment]},
    )


def by_utterance(columns: dict) -> dict[str, slice]:
    """Row ranges per utterance (each stage writes an utterance's rows contiguously)."""
    names = columns["utterance"]
    starts = np.flatnonzero(np.r_[True, names[1:] != names[:-1]])
    ends = np.r_[starts[1:], len(names)]
    ranges = {str(names[s]): slice(int(s), int(e)) for s, e in zip(starts, ends, strict=True)}
    if len(ranges) != len(starts):
        raise StageError("dataset", "an utterance's rows are not contiguous")
    return ranges


def align(
    lip: dict, mcep: dict, fps: float, alignment: str, where: str = "lip vs mcep"
) -> dict[str, np.ndarray]:
    """All aligned rows as columns, utterance by utterance in the lip dataset's order; `where`
    names the two datasets in errors."""
    lip_rows, mcep_rows = by_utterance(lip), by_utterance(mcep)
    only = sorted(set(lip_rows) ^ set(mcep_rows))
    if only:
        raise StageError(where, f"utterances in one dataset but not the other: {only[:5]}")
    out: dict[str, list] = {k: [] for k in ("utterance", "split", "frame", "time", "lip", "mcep")}
    for name, rows in lip_rows.items():
        m = mcep_rows[name]
        if lip["split"][rows.start] != mcep["split"][m.start]:
            raise StageError(f"{where}: {name}", "split differs between the datasets")
        lip_t, lip_x = lip["time"][rows], lip["features"][rows].astype(np.float64)
        mc_t, mc_x = mcep["time"][m], mcep["mcep"][m].astype(np.float64)
        if alignment == "interpolate":
            lip_x, keep = interpolate_features(lip_t, lip_x, mc_t)
            frame, time, mc_x = mcep["frame"][m][keep], mc_t[keep], mc_x[keep]
        else:
            mc_x, keep = pool_mcep(lip_t, fps, mc_t, mc_x)
            frame, time, lip_x = lip["frame"][rows][keep], lip_t[keep], lip_x[keep]
        out["utterance"] += [name] * len(frame)
        out["split"] += [lip["split"][rows.start]] * len(frame)
        out["frame"].append(frame)
        out["time"].append(time)
        out["lip"].append(lip_x)
        out["mcep"].append(mc_x)
    return {
        "utterance": np.array(out["utterance"]),
        "split": np.array(out["split"]),
        "frame": np.concatenate(out["frame"]).astype(np.int32),
        "time": np.concatenate(out["time"]),
        "lip": np.concatenate(out["lip"]).astype(np.float32),
        "mcep": np.concatenate(out["mcep"]).astype(np.float32),
    }


def learnability(rows: dict[str, np.ndarray]) -> dict:
    """Test-split MCD (dB) of two trivial lip -> mel-cepstrum predictors fitted on the train split:
    the train mean (ignores the lips) and least squares. The gap shows the pairs carry signal;
    GGDRM and the DNN baseline should beat the linear figure."""
    train, test = rows["split"] == "train", rows["split"] == "test"
    if not train.any() or not test.any():
        return {}
    x = np.c_[rows["lip"].astype(np.float64), np.ones(len(rows["lip"]))]
    y = rows["mcep"].astype(np.float64)
    weights = np.linalg.lstsq(x[train], y[train], rcond=None)[0]
    mean = np.broadcast_to(y[train].mean(axis=0), y[test].shape)
    return {
        "test_mcd_db_train_mean": round(mcd(mean, y[test]), 4),
        "test_mcd_db_linear": round(mcd(x[test] @ weights, y[test]), 4),
        "note": "frame-synchronous MCD, c0 excluded, test split",
    }


def main(params: Params) -> None:
    """Pair lip features with mel-cepstra frame by frame (rule: params.alignment)."""
    fps = float(dataset.describe(params.lip)["metadata"]["fps"])
    lip, mcep = dataset.read_arrays(params.lip), dataset.read_arrays(params.mcep)
    rows = align(lip, mcep, fps, params.alignment, f"{params.lip} vs {params.mcep}")
    schema = pairs_schema(rows["lip"].shape[1], rows["mcep"].shape[1], params.alignment)
    with (
        atomic_dir(params.out) as tmp,
        dataset.ShardWriter(tmp, schema, shard_rows=200_000) as writer,
    ):
        writer.write(rows)
    baselines = learnability(rows)
    write_json(
        params.metrics,
        {
            "rows": len(rows["time"]),
            "rows_per_split": {s: int((rows["split"] == s).sum()) for s in ("train", "test")},
            "utterances": len(set(rows["utterance"].tolist())),
            "lip_to_mcep_baselines": {k: v for k, v in baselines.items() if k != "note"},
        },
    )
    write_json(
        params.stats,
        {
            "cpu_kernels": kernels.record(),  # the least-squares baseline goes through OpenBLAS
            "alignment": params.alignment,
            "rule": RULES[params.alignment],
            "lip_dims": int(rows["lip"].shape[1]),
            "mcep_dims": int(rows["mcep"].shape[1]),
            "baselines_note": baselines.get("note"),
            "dropped_mcep_frames": len(mcep["time"]) - len(rows["time"])
            if params.alignment == "interpolate"
            else None,
        },
    )
    log.info("%d aligned rows (%s)", len(rows["time"]), params.alignment)


if __name__ == "__main__":
    run_stage("lipspeech_pairs", Params, main)
