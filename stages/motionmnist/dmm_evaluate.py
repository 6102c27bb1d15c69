"""Stage `dmm_evaluate`: the convolutional DMM's video prediction on the MotionMNIST test split.

    python -m stages.motionmnist.dmm_evaluate [--params FILE]

Given the first `context` frames of each test video (digits never seen in training), the model
predicts the rest (`dmm.DMM.predict`: the posterior means, then the transition's means). Each
step ahead (1 = the frame after the context) is scored against the truth by MSE and SSIM (frames
in [0, 1], at the model's resolution), beside two baselines that need no training:

- copy-last-frame: the last context frame, held;
- constant velocity: the last context frame shifted, k steps ahead, by k times the displacement
  of the digit's intensity centroid between the last two context frames (bilinear, zeros
  shifted in). MotionMNIST's jitter (1 px per frame) makes that displacement noisy; the model can
  learn the 8 motions' exact speed instead.

and, as a reference that is not a goal, a blank frame: on frames this sparse a blur that fades to
black can beat a sharp but misplaced digit on MSE, and the blank frame shows how much of an MSE
win is that (SSIM is the score that rewards a sharp, well-placed digit).

Outputs: `metrics` (the model's MSE and SSIM at steps 1 and `horizon`, at how many steps it
beats both baselines on each score, and the blank frame on MSE), `baselines` (theirs at the same
steps; the blank frame's in `stats`), `mse_by_step` and
`ssim_by_step` (TSVs, curves in the report), `strips` (truth / model / constant velocity for a few
test videos).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from skimage.metrics import structural_similarity

from stages.common import training
from stages.common.atomic import atomic_file, write_json
from stages.common.cli import run_stage
from stages.common.errors import StageError
from stages.common.images import save_grid
from stages.motionmnist.dmm import DMM, Config
from stages.motionmnist.mdbigan import shrink

STAGE = "dmm_evaluate"
METHODS = ("dmm", "copy_last", "constant_velocity", "blank")
GOAL_BASELINES = ("copy_last", "constant_velocity")  # "beats both at every step"
STRIP_VIDEOS = 4


@dataclass(frozen=True)
class Params:
    data: Path
    model: Path
    device: str
    threads: int
    seed: int
    context: int  # frames given
    batch: int  # videos predicted at once
    metrics: Path
    baselines: Path
    mse_by_step: Path  # TSV: step ahead, then each method's MSE (a curve in the report)
    ssim_by_step: Path  # the same for SSIM
    strips: Path
    stats: Path


# --- pure functions -------------------------------------------------------------------------


def centroid(frame: np.ndarray) -> np.ndarray:
    """Intensity-weighted (row, column) centre of a frame; the frame's centre if it is blank."""
    total = frame.sum()
    if total == 0:
        return (np.array(frame.shape, np.float64) - 1) / 2
    rows, cols = np.indices(frame.shape)
    return np.array([(rows * frame).sum(), (cols * frame).sum()]) / total


def copy_last(context: np.ndarray, horizon: int) -> np.ndarray:
    """(n, C, H, W) -> (n, horizon, H, W): the last context frame, held."""
    return np.repeat(context[:, -1:], horizon, axis=1)


def constant_velocity(context: np.ndarray, horizon: int) -> np.ndarray:
    """(n, C, H, W) -> (n, horizon, H, W): the last frame moved on at its last velocity."""
    out = np.empty((len(context), horizon, *context.shape[2:]), context.dtype)
    for i, video in enumerate(context):
        velocity = centroid(video[-1]) - centroid(video[-2])
        for k in range(horizon):
            out[i, k] = ndimage.shift(video[-1], (k + 1) * velocity, order=1, cval=0.0)
    return out


def per_step_scores(truth: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mse, ssim) per step ahead, each averaged over the videos; frames (n, T, H, W) in [0, 1]."""
    mse = ((truth - predicted) ** 2).mean(axis=(0, 2, 3))
    ssim = np.array([
        np.mean([
            structural_similarity(t, p, data_range=1.0)
            for t, p in zip(truth[:, k], predicted[:, k], strict=True)
        ])
        for k in range(truth.shape[1])
    ])  # fmt: skip
    return mse, ssim


def steps_beating(ours: np.ndarray, others: list[np.ndarray], lower_is_better: bool) -> int:
    """At how many steps `ours` is strictly better than every one of `others`."""
    better = [(ours < o) if lower_is_better else (ours > o) for o in others]
    return int(np.logical_and.reduce(better).sum())


# --- the stage ------------------------------------------------------------------------------


def evaluate(params: Params) -> dict[str, Any]:
    device, device_info = training.prepare_torch(params.seed, params.device, params.threads, STAGE)
    config, record = training.load_model(params.model, Config)
    model = training.to_device(DMM(config), device)
    training.load_state(params.model, model, record["state_dict"])
    model.eval()
    rows = training.load_split(params.data, "test", ["frames"])
    frames = shrink(torch.from_numpy(rows["frames"]), int(record["downsample"]))
    n, length = frames.shape[:2]
    if not 1 < params.context < length:
        raise StageError(
            f"params.yaml: {STAGE}.context", f"must be in [2, {length - 1}] for {length} frames"
        )
    if params.batch < 1:
        raise StageError(f"params.yaml: {STAGE}.batch", f"must be at least 1, got {params.batch}")
    video = frames.float().div_(255.0).numpy()
    context, truth = video[:, : params.context], video[:, params.context :]
    horizon = truth.shape[1]
    predicted = np.concatenate([
        model.predict(torch.from_numpy(context[i : i + params.batch]).to(device), horizon)
        .cpu().numpy()
        for i in range(0, n, params.batch)
    ])  # fmt: skip
    predictions = {
        "dmm": predicted,
        "copy_last": copy_last(context, horizon),
        "constant_velocity": constant_velocity(context, horizon),
        "blank": np.zeros_like(truth),
    }
    scores = {m: per_step_scores(truth, p) for m, p in predictions.items()}
    (mse, ssim) = scores["dmm"]
    goal = [scores[b] for b in GOAL_BASELINES]
    metrics = {
        "mse_step1": float(mse[0]),
        f"mse_step{horizon}": float(mse[-1]),
        "ssim_step1": float(ssim[0]),
        f"ssim_step{horizon}": float(ssim[-1]),
        "steps_beating_both_mse": steps_beating(mse, [m for m, _ in goal], True),
        "steps_beating_both_ssim": steps_beating(ssim, [s for _, s in goal], False),
        "steps_beating_blank_mse": steps_beating(mse, [scores["blank"][0]], True),
    }

    write_json(params.metrics, metrics)
    ends = {
        b: {
            "mse_step1": float(scores[b][0][0]),
            f"mse_step{horizon}": float(scores[b][0][-1]),
            "ssim_step1": float(scores[b][1][0]),
            f"ssim_step{horizon}": float(scores[b][1][-1]),
        }
        for b in METHODS
        if b != "dmm"
    }
    write_json(params.baselines, {b: ends[b] for b in GOAL_BASELINES})
    write_by_step(params.mse_by_step, {m: mse for m, (mse, _) in scores.items()})
    write_by_step(params.ssim_by_step, {m: ssim for m, (_, ssim) in scores.items()})
    shown = [truth[:STRIP_VIDEOS], predicted[:STRIP_VIDEOS]]
    shown.append(predictions["constant_velocity"][:STRIP_VIDEOS])
    tiles = np.stack(shown, 1).reshape(-1, horizon, *truth.shape[2:])
    save_grid(params.strips, (np.clip(tiles, 0, 1) * 255).round().astype(np.uint8))
    write_json(
        params.stats,
        {
            "test_videos": n,
            "context_frames": params.context,
            "horizon": horizon,
            "frame_size": int(truth.shape[-1]),
            "model_step": int(record["step"]),
            "blank_frame": ends["blank"],  # the reference (not a goal): see the module docstring
            "strips": "rows per video: truth, DMM, constant velocity",
            **device_info,
        },
    )
    return metrics


def write_by_step(path: Path, values: dict[str, np.ndarray]) -> None:
    """TSV: `step` (1 = the frame after the context), then one column per method."""
    with atomic_file(path, "w") as handle:
        out = csv.writer(handle, delimiter="\t", lineterminator="\n")
        out.writerow(["step", *METHODS])
        for k in range(len(values["dmm"])):
            out.writerow([k + 1, *(f"{values[m][k]:.6f}" for m in METHODS)])


def main(params: Params) -> dict[str, Any]:
    """Predict the second half of every test video; score it against the two baselines."""
    evaluate(params)
    return {}


if __name__ == "__main__":
    run_stage(STAGE, Params, main)
