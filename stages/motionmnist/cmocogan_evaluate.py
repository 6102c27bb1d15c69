"""Stage `cmocogan_evaluate`: zero-shot generation by the conditional MoCoGAN, judged.

    python -m stages.motionmnist.cmocogan_evaluate [--params FILE]

For each of the 80 (digit, motion) pairs the model generates `videos_per_pair` videos from
seeded noise; the judges of `mdbigan_evaluate` (`evaluate.Judges`: motion from the digit's
centroid trajectory, digit from a window around it, majority over frames), fit here on
`probe_rows` real train-split videos, say which digit and which motion each one shows. A video
is right when both are the requested ones. The held-out pairs (read from the model file: the
training stage never saw a video of them, nor asked its generator for one) are the zero-shot
test; the seen pairs and the judges' own score on real test videos (the ceiling: no generator
can be judged better than real videos are) give it its meaning.

Outputs: `metrics` (held-out and seen both-right, digit-right and motion-right; the judges on
real test videos), `stats` (per-pair results, the held-out list, counts), `pairs` (TSV: one row
per pair, a bar chart in the report), `grid` (PNG: a generated video per held-out pair, then a
few seen pairs, every other frame).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages.common import training
from stages.common.atomic import atomic_file, write_json
from stages.common.cli import run_stage
from stages.common.errors import StageError
from stages.common.images import save_grid
from stages.motionmnist.cmocogan import DIGITS, MOTIONS, CMoCoGAN, Config
from stages.motionmnist.cmocogan_train import generate_uint8, grid_pairs
from stages.motionmnist.evaluate import Judges, load_splits, subset

STAGE = "cmocogan_evaluate"


@dataclass(frozen=True)
class Params:
    seed: int
    data: Path
    model: Path
    device: str
    threads: int
    probe_rows: int  # real train-split videos the judges are fit on (a seeded subset)
    videos_per_pair: int  # generated per (digit, motion) pair
    batch: int  # videos generated at once
    metrics: Path
    stats: Path
    pairs: Path  # TSV: per pair, its share of videos judged right
    grid: Path  # PNG: generated videos of the held-out pairs and a few seen ones


# --- pure functions -------------------------------------------------------------------------


def all_pairs() -> np.ndarray:
    """The 80 (digit, motion) pairs, (80, 2), digit-major."""
    return np.array([(d, m) for d in range(DIGITS) for m in range(MOTIONS)], np.int64)


def is_heldout(pairs: np.ndarray, heldout: np.ndarray) -> np.ndarray:
    """True for each row of `pairs` that is one of `heldout`."""
    return (pairs[:, None, :] == heldout[None, :, :]).all(-1).any(1)


def rates(digit_ok: np.ndarray, motion_ok: np.ndarray) -> dict[str, float]:
    """Shares of videos whose digit, motion, and both were judged the requested ones."""
    return {
        "both_right": float((digit_ok & motion_ok).mean()),
        "digit_right": float(digit_ok.mean()),
        "motion_right": float(motion_ok.mean()),
    }


def read_heldout(path: Path, record: dict[str, Any]) -> np.ndarray:
    """The held-out pairs the model file records, checked."""
    pairs = np.asarray(record.get("heldout", []), np.int64).reshape(-1, 2)
    if len(pairs) == 0:
        raise StageError(path, "records no held-out pairs (not a cmocogan_train model?)")
    if not ((pairs >= 0) & (pairs < np.array([DIGITS, MOTIONS]))).all():
        raise StageError(path, f"held-out pairs out of range: {pairs.tolist()}")
    return pairs


# --- the stage ------------------------------------------------------------------------------


def evaluate(params: Params) -> dict[str, Any]:
    for key in ("probe_rows", "videos_per_pair", "batch"):
        least = 100 if key == "probe_rows" else 1
        if getattr(params, key) < least:
            raise StageError(
                f"params.yaml: {STAGE}.{key}",
                f"must be at least {least}, got {getattr(params, key)}",
            )
    device, device_info = training.prepare_torch(params.seed, params.device, params.threads, STAGE)
    config, record = training.load_model(params.model, Config)
    model = CMoCoGAN(config)
    training.load_state(params.model, model, record["state_dict"])
    training.to_device(model, device).eval()
    heldout = read_heldout(params.model, record)
    splits = load_splits(params, config)
    test, train = splits["test"], subset(splits["train"], params.probe_rows, params.seed)
    judges = Judges(
        train["frames"], train["motion"], train["digit_class"],
        crop=28 * config.size // 64, seed=params.seed,
    )  # fmt: skip

    pairs = all_pairs()
    wanted = np.repeat(pairs, params.videos_per_pair, axis=0)
    generator = torch.Generator(device).manual_seed(params.seed)
    videos = np.concatenate([
        generate_uint8(
            model,
            torch.from_numpy(wanted[lo : lo + params.batch, 0]).to(device),
            torch.from_numpy(wanted[lo : lo + params.batch, 1]).to(device),
            generator,
        )
        for lo in range(0, len(wanted), params.batch)
    ])  # fmt: skip
    digit_ok = judges.digit_of(videos) == wanted[:, 0]
    motion_ok = judges.motion_of(videos) == wanted[:, 1]
    held = is_heldout(wanted, heldout)
    real_digit_ok = judges.digit_of(test["frames"]) == test["digit_class"]
    real_motion_ok = judges.motion_of(test["frames"]) == test["motion"]
    real_pairs = np.stack([test["digit_class"], test["motion"]], 1)
    real_held = is_heldout(real_pairs, heldout)

    heldout_rates = rates(digit_ok[held], motion_ok[held])
    seen_rates = rates(digit_ok[~held], motion_ok[~held])
    real_rates = rates(real_digit_ok, real_motion_ok)
    metrics = {
        **{f"heldout_{k}": v for k, v in heldout_rates.items()},
        **{f"seen_{k}": v for k, v in seen_rates.items()},
        "real_test_both_right": real_rates["both_right"],
        "real_test_digit_right": real_rates["digit_right"],
    }
    per_pair = [
        {
            "pair": f"d{d}-m{m}",
            "digit": int(d),
            "motion": int(m),
            "heldout": int(is_heldout(pairs[i : i + 1], heldout)[0]),
            **rates(
                digit_ok[i * params.videos_per_pair : (i + 1) * params.videos_per_pair],
                motion_ok[i * params.videos_per_pair : (i + 1) * params.videos_per_pair],
            ),
        }
        for i, (d, m) in enumerate(pairs)
    ]
    write_json(params.metrics, metrics)
    write_json(
        params.stats,
        {
            "model_step": int(record["step"]),
            "heldout_pairs": heldout.tolist(),
            "videos_per_pair": params.videos_per_pair,
            "judge_train_videos": len(train["motion"]),
            "test_videos": len(test["motion"]),
            "frame_size": config.size,
            "real_test": real_rates,
            "real_test_heldout_pairs": rates(real_digit_ok[real_held], real_motion_ok[real_held]),
            "per_pair": per_pair,
            "grid": "rows: one generated video per held-out pair, then seen pairs; every other "
            "frame",
            **device_info,
        },
    )
    write_pairs(params.pairs, per_pair)
    shown = grid_pairs(heldout)
    first = [int(np.flatnonzero((wanted == p).all(1))[0]) for p in shown]
    save_grid(params.grid, videos[first][:, ::2])
    return metrics


def write_pairs(path: Path, rows: list[dict[str, Any]]) -> None:
    """TSV: one row per pair, held-out ones first."""
    columns = ["pair", "heldout", "both_right", "digit_right", "motion_right"]
    ordered = sorted(rows, key=lambda r: -r["heldout"])
    with atomic_file(path, "w") as handle:
        out = csv.writer(handle, delimiter="\t", lineterminator="\n")
        out.writerow(columns)
        for row in ordered:
            out.writerow([row["pair"], row["heldout"],
                          *(f"{row[c]:.4f}" for c in columns[2:])])  # fmt: skip


def main(params: Params) -> dict[str, Any]:
    """Generate every (digit, motion) pair, held-out ones included; judge each video."""
    evaluate(params)
    return {"videos_generated": len(all_pairs()) * params.videos_per_pair}


if __name__ == "__main__":
    run_stage(STAGE, Params, main)
