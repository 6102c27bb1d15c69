"""Stage `seqvae_evaluate`: the sequential VAE's two latents on the MotionMNIST test split.

    python -m stages.motionmnist.seqvae_evaluate [--params FILE]

Measured exactly as MDBiGAN's motion code (`evaluate.py`), on the posterior means of test videos
(digits never seen in training):

1. the dynamic latents (z_1..z_T, one vector per video): k-means(8) NMI against the motion
   labels, and linear probes for the motion (high) and the digit (near chance, 0.1);
2. the static latent z_s: linear probes for the digit (high) and the motion (near chance, 0.125);
3. swaps: each test video A is paired with a video B of another digit and another motion; the
   decoder renders A's z_s with B's z_1..z_T, and the evaluate stage's judges (`evaluate.Judges`,
   fit on real train videos) say whether the result shows A's digit and B's motion. The judges'
   own score on real test videos (both factors right) is the ceiling, in the stats.

Probes and judges are fit on `probe_rows` train-split videos and scored on the test split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages.common import training
from stages.common.atomic import write_json
from stages.common.cli import run_stage
from stages.common.errors import StageError
from stages.common.images import save_grid
from stages.motionmnist.evaluate import Judges, code_scores, probe, subset
from stages.motionmnist.mdbigan import shrink
from stages.motionmnist.seqvae import Config, SequentialVAE

STAGE = "seqvae_evaluate"
SHOWN = 8  # swaps in the picture


@dataclass(frozen=True)
class Params:
    seed: int
    data: Path
    model: Path
    device: str
    threads: int
    probe_rows: int  # train-split videos the probes and judges are fit on (a seeded subset)
    metrics: Path
    stats: Path
    swaps: Path  # PNG: A, B, A's static latent with B's dynamic ones


# --- pure functions -------------------------------------------------------------------------


def latents(
    model: SequentialVAE, frames: np.ndarray, device: Any, batch: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means of uint8 videos (n, T, H, W): z_s (n, s) and z_1..z_T flattened (n, T*d)."""
    static, dynamic = [], []
    with torch.no_grad():
        for lo in range(0, len(frames), batch):
            x = torch.from_numpy(frames[lo : lo + batch]).to(device).float() / 255.0
            (s_mean, _), (d_mean, _) = model.infer(x)
            static.append(s_mean.float().cpu().numpy())
            dynamic.append(d_mean.float().flatten(1).cpu().numpy())
    return np.concatenate(static), np.concatenate(dynamic)


def swap_partners(digit: np.ndarray, motion: np.ndarray, seed: int) -> np.ndarray:
    """For each video, the index of a seeded random video with a different digit and a
    different motion (so a swap that changed nothing cannot pass)."""
    generator = np.random.default_rng(seed)
    partners = np.empty(len(digit), np.int64)
    for i in range(len(digit)):
        allowed = np.flatnonzero((digit != digit[i]) & (motion != motion[i]))
        if len(allowed) == 0:
            raise ValueError(f"video {i}: no test video has both another digit and another motion")
        partners[i] = generator.choice(allowed)
    return partners


def swapped_videos(
    model: SequentialVAE, frames: np.ndarray, partners: np.ndarray, device: Any, batch: int = 256
) -> np.ndarray:
    """uint8 videos with video i's static latent and video partners[i]'s dynamic latents."""
    out = []
    for lo in range(0, len(frames), batch):
        a = torch.from_numpy(frames[lo : lo + batch]).to(device).float() / 255.0
        b = torch.from_numpy(frames[partners[lo : lo + batch]]).to(device).float() / 255.0
        out.append((model.swap(a, b).cpu().numpy() * 255).round().astype(np.uint8))
    return np.concatenate(out)


# --- the stage ------------------------------------------------------------------------------


def load(params: Params, device: Any) -> tuple[SequentialVAE, dict[str, Any]]:
    config, record = training.load_model(params.model, Config)
    model = SequentialVAE(config)
    training.load_state(params.model, model, record["state_dict"])
    return training.to_device(model, device).eval(), record


def load_rows(params: Params, config: Config) -> dict[str, dict[str, np.ndarray]]:
    """Train and test rows, frames pooled to the model's size (as training saw them)."""
    splits = training.load_splits(
        params.data, ("train", "test"), ["frames", "motion", "digit_class"]
    )
    size = splits["test"]["frames"].shape[-1]
    if size % config.size:
        raise StageError(
            params.model, f"model is for {config.size} px frames; {params.data} holds {size} px"
        )
    for rows in splits.values():
        rows["frames"] = shrink(torch.from_numpy(rows["frames"]), size // config.size).numpy()
        rows["motion"] = rows["motion"].astype(np.int64)
        rows["digit_class"] = rows["digit_class"].astype(np.int64)
    return splits


def evaluate(params: Params) -> dict[str, Any]:
    if params.probe_rows < 100:
        raise StageError(
            f"params.yaml: {STAGE}.probe_rows", f"must be at least 100, got {params.probe_rows}"
        )
    device, device_info = training.prepare_torch(params.seed, params.device, params.threads, STAGE)
    model, record = load(params, device)
    splits = load_rows(params, model.config)
    test, train = splits["test"], subset(splits["train"], params.probe_rows, params.seed)

    static_train, dynamic_train = latents(model, train["frames"], device)
    static_test, dynamic_test = latents(model, test["frames"], device)
    dynamic = code_scores(dynamic_train, dynamic_test, train, test, params.seed)

    def static_probe(label: str) -> float:
        return probe(static_train, train[label], static_test, test[label])

    judges = Judges(
        train["frames"],
        train["motion"],
        train["digit_class"],
        crop=28 * model.config.size // 64,  # 28 px MNIST digits on 64 px canvases, pooled
        seed=params.seed,
    )
    partners = swap_partners(test["digit_class"], test["motion"], params.seed)
    swapped = swapped_videos(model, test["frames"], partners, device)
    digit_right = judges.digit_of(swapped) == test["digit_class"]
    motion_right = judges.motion_of(swapped) == test["motion"][partners]
    real_right = (judges.digit_of(test["frames"]) == test["digit_class"]) & (
        judges.motion_of(test["frames"]) == test["motion"]
    )
    write_json(
        params.metrics,
        {
            "dynamic_motion_nmi": dynamic["motion_nmi"],
            "dynamic_motion_probe": dynamic["motion_probe"],
            "dynamic_digit_probe": dynamic["digit_probe"],
            "static_digit_probe": static_probe("digit_class"),
            "static_motion_probe": static_probe("motion"),
            "swap_both_right": float((digit_right & motion_right).mean()),
            "swap_digit_right": float(digit_right.mean()),
            "swap_motion_right": float(motion_right.mean()),
        },
    )
    write_json(
        params.stats,
        {
            "model_step": int(record["step"]),
            "dynamic_motion_ari": dynamic["motion_ari"],
            "judges_real_both_right": float(real_right.mean()),
            "train_videos_for_probes": len(train["motion"]),
            "test_videos": len(test["motion"]),
            "frame_size": model.config.size,
            **device_info,
        },
    )
    # rows: A, B, A's digit moving as B; every other frame
    shown = np.random.default_rng(params.seed).permutation(len(partners))[:SHOWN]
    tiles = np.stack([test["frames"][shown], test["frames"][partners[shown]], swapped[shown]], 1)[
        :, :, ::2
    ]
    save_grid(params.swaps, tiles.reshape(-1, *tiles.shape[2:]))
    return device_info


def main(params: Params) -> dict[str, Any]:
    """Measure the sequential VAE's static and dynamic latents and its swaps on the test split."""
    return evaluate(params)


if __name__ == "__main__":
    run_stage(STAGE, Params, main)
