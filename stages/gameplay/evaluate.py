"""Stage `cae_mtrnn_evaluate`: the paper's three-way comparison, measured (seed 000).

    python -m stages.gameplay.evaluate [--params FILE]

For every clip of both splits (train: the clips the models learnt; test: held out by the clip
stage's seeded rule), against (1) the original frames at the models' frame step:
(2) CAE-only, each frame encoded and decoded; (3) MTRNN recognise-then-generate, as the paper ran
it: the weights frozen, Cs(0) fitted to the clip's CAE features, then a closed loop from the first
feature, every generated feature decoded by the CAE. PSNR and SSIM per frame, averaged over clips
by step index (the curve that shows the paper's drift, a DVC plot) and over everything (the
metrics). Beside them the trivial baselines, so a number means something: the clip's first frame
held still, and the clip's mean frame. Strips (original / CAE / MTRNN) per event kind of held-out
clips are the paper's pictures.

The paper's verdicts, counted: when the clips carry sprite masks (the stand-in's `sprites` column),
each clip's PSNR over its background pixels and over its sprite pixels (all scored frames pooled);
a clip's background (its details) counts as recovered when that PSNR reaches `background_db`
(`details_db`). Shares of clips per split and method in `recovered`, the baselines' beside them,
every clip's figures in `per_clip`.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skimage.metrics import structural_similarity

from stages.common import dataset, training
from stages.common.atomic import atomic_file, write_json
from stages.common.cli import run_stage
from stages.common.errors import StageError
from stages.common.images import save_grid
from stages.gameplay.mtrnn import MTRNN, Config, recognise
from stages.gameplay.mtrnn_train import feature_sequences, load_cae

log = logging.getLogger(__name__)
STAGE = "cae_mtrnn_evaluate"
METHODS = ("cae", "mtrnn", "first_frame", "mean_frame")
STRIP_FRAMES = 8


@dataclass(frozen=True)
class Params:
    seed: int
    clips: Path
    cae: Path
    mtrnn: Path
    device: str
    threads: int
    recognise_steps: int  # Adam steps fitting each clip's Cs(0)
    recognise_lr: float
    background_db: float  # background PSNR at which a clip's background counts as recovered
    details_db: float  # the same over the sprite pixels
    metrics: Path  # PSNR and SSIM of CAE-only and MTRNN, per split
    baselines: Path  # the same for the first frame held and the mean frame
    recovered: Path  # shares of clips whose background / details are recovered, CAE and MTRNN
    recovered_baselines: Path  # the same for the first frame held and the mean frame
    per_clip: Path  # TSV: every clip's background and sprite PSNR per method
    stats: Path
    curve: Path  # TSV: PSNR by step index, per split and method
    strips: Path  # PNG: original / CAE / MTRNN of one held-out clip per event kind


# --- pure functions -------------------------------------------------------------------------


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two float frames in [0, 1] (capped at 100 dB for identical frames)."""
    mse = float(np.mean((a - b) ** 2))
    return 100.0 if mse == 0 else 10 * np.log10(1.0 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (Wang et al. 2004; scikit-image's, 7x7 windows) of two (H, W, 3) frames in [0, 1]."""
    return float(structural_similarity(a, b, channel_axis=-1, data_range=1.0))


def psnr_of_mse(mse: float) -> float:
    return 100.0 if mse == 0 else float(10 * np.log10(1.0 / mse))


def region_psnr(original: np.ndarray, version: np.ndarray, sprites: np.ndarray) -> np.ndarray:
    """(background, sprite) PSNR of a clip's frames 1.. (steps, H, W, 3), the squared error pooled
    over the pixels where `sprites` (steps, H, W) is 0, and where it is 1 (NaN: no sprite)."""
    error = ((version[1:] - original[1:]) ** 2).mean(-1)
    on_sprite = sprites[1:].astype(bool)
    background = psnr_of_mse(float(error[~on_sprite].mean()))
    details = psnr_of_mse(float(error[on_sprite].mean())) if on_sprite.any() else np.nan
    return np.array([background, details])


def compare(original: np.ndarray, versions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per method, (steps - 1, 2) PSNR and SSIM of frames 1.. of each version against the
    original's (frame 0 is where recognise-then-generate starts: no method is scored on it)."""
    return {
        name: np.array(
            [[psnr(v[t], original[t]), ssim(v[t], original[t])] for t in range(1, len(original))]
        )
        for name, v in versions.items()
    }


def versions_of(
    original: np.ndarray, cae_frames: np.ndarray, mtrnn_frames: np.ndarray
) -> dict[str, np.ndarray]:
    """The four versions of one clip's frames (steps, H, W, 3) in [0, 1]."""
    held = np.broadcast_to(original[0], original.shape)
    mean = np.broadcast_to(original.mean(0), original.shape)
    return {"cae": cae_frames, "mtrnn": mtrnn_frames, "first_frame": held, "mean_frame": mean}


# --- the stage ------------------------------------------------------------------------------


def decode(cae: Any, features: torch.Tensor) -> np.ndarray:
    """CAE-decoded frames (n, H, W, 3) float in [0, 1]."""
    with torch.no_grad():
        return cae.decode(features).permute(0, 2, 3, 1).float().cpu().numpy()


def evaluate_split(
    params: Params, cae: Any, mtrnn: MTRNN, rows: dict[str, np.ndarray], stride: int, device: Any
) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]], dict[str, Any]]:
    """Scores of every clip of one split (`rows`): per frame, and per region (when the rows have
    sprite masks); and what the strips need."""
    features, lengths = feature_sequences(cae, rows, stride, device)
    generator = torch.Generator().manual_seed(params.seed)
    cs0 = recognise(
        mtrnn, features, lengths, params.recognise_steps, params.recognise_lr, generator
    )
    with torch.no_grad():
        generated = mtrnn.generate(features[:, 0], cs0, features.shape[1] - 1)
    scores, regions, shown = [], [], {}
    for k, (video, n) in enumerate(zip(rows["frames"], rows["n_frames"], strict=True)):
        steps = int(lengths[k])
        original = video[:n:stride].astype(np.float32) / 255.0
        rebuilt = decode(cae, features[k, :steps])
        # generated[t - 1] is the closed loop's step t; frame 0 is the recognised start
        dreamt = np.concatenate([rebuilt[:1], decode(cae, generated[k, : steps - 1])])
        versions = versions_of(original, rebuilt, dreamt)
        scores.append(compare(original, versions))
        if "sprites" in rows:
            sprites = rows["sprites"][k, :n:stride]
            regions.append({m: region_psnr(original, v, sprites) for m, v in versions.items()})
        label = str(rows["label"][k])
        if label not in shown:
            pick = np.linspace(0, steps - 1, STRIP_FRAMES).round().astype(int)
            shown[label] = np.stack([original[pick], rebuilt[pick], dreamt[pick]])
    return scores, regions, shown


def recovered_share(
    regions: list[dict[str, np.ndarray]], method: str, region: int, db: float
) -> float:
    """Share of clips whose region (0 background, 1 sprites) PSNR reaches `db`."""
    return float(np.mean([r[method][region] >= db for r in regions]))


def summary(scores: list[dict[str, np.ndarray]], method: str) -> tuple[float, float]:
    """Mean PSNR and SSIM of a method over every scored frame of every clip."""
    both = np.concatenate([s[method] for s in scores])
    return float(both[:, 0].mean()), float(both[:, 1].mean())


def by_step(scores: list[dict[str, np.ndarray]], method: str) -> np.ndarray:
    """Mean PSNR at each step index over the clips that reach it."""
    longest = max(len(s[method]) for s in scores)
    return np.array(
        [np.mean([s[method][t, 0] for s in scores if len(s[method]) > t]) for t in range(longest)]
    )


def evaluate(params: Params) -> dict[str, Any]:
    if params.recognise_steps < 1 or not 0 < params.recognise_lr < 10:
        raise StageError(f"params.yaml: {STAGE}.recognise_steps", "steps >= 1 and 0 < lr < 10")
    for key in ("background_db", "details_db"):
        if not 0 < getattr(params, key) < 100:
            raise StageError(f"params.yaml: {STAGE}.{key}", "must be a PSNR in (0, 100) dB")
    device, device_info = training.prepare_torch(params.seed, params.device, params.threads, STAGE)
    cae = load_cae(params.cae, device)
    config, record = training.load_model(params.mtrnn, Config)
    mtrnn = MTRNN(config, sequences=len(record["clip_ids"]))
    training.load_state(params.mtrnn, mtrnn, record["state_dict"])
    mtrnn.to(device).eval()
    stride = int(record["frame_stride"])

    columns = ["clip_id", "frames", "n_frames", "label"]
    masked = "sprites" in dataset.column_names(params.clips)
    splits = training.load_splits(params.clips, ("train", "test"), columns + ["sprites"] * masked)
    results, curves, strips, recovered, clip_rows = {}, {}, {}, {}, []
    for split, rows in splits.items():
        log.info("%s clips: recognise, generate, compare", split)
        scores, regions, shown = evaluate_split(params, cae, mtrnn, rows, stride, device)
        results[split] = {m: summary(scores, m) for m in METHODS}
        curves[split] = {m: by_step(scores, m) for m in METHODS}
        recovered[split] = {
            f"{m}_{name}": round(recovered_share(regions, m, region, db), 4)
            for m in METHODS
            for region, (name, db) in enumerate(
                (("background", params.background_db), ("details", params.details_db))
            )
        } if masked else {}  # fmt: skip
        clip_rows += [
            [split, int(clip), str(label), *(f"{v:.3f}" for m in METHODS for v in r[m])]
            for clip, label, r in zip(rows["clip_id"], rows["label"], regions, strict=False)
        ]
        if split == "test":
            strips = shown
    metrics = {s: {f"{m}_{k}": round(results[s][m][i], 4) for m in ("cae", "mtrnn")
                   for i, k in enumerate(("psnr", "ssim"))} for s in results}  # fmt: skip
    baselines = {s: {f"{m}_{k}": round(results[s][m][i], 4) for m in ("first_frame", "mean_frame")
                     for i, k in enumerate(("psnr", "ssim"))} for s in results}  # fmt: skip
    write_json(params.metrics, metrics)
    write_json(params.baselines, baselines)
    ours, trivial = ("cae", "mtrnn"), ("first_frame", "mean_frame")
    write_json(params.recovered, {s: {k: v for k, v in r.items() if k.startswith(ours)}
                                  for s, r in recovered.items()})  # fmt: skip
    write_json(params.recovered_baselines, {s: {k: v for k, v in r.items() if k.startswith(trivial)}
                                            for s, r in recovered.items()})  # fmt: skip
    write_per_clip(params.per_clip, clip_rows)
    write_json(params.stats, {
        "frame_stride": stride, "recognise_steps": params.recognise_steps,
        "sprite_masks": masked, **region_medians(clip_rows), **device_info,
    })  # fmt: skip
    write_curve(params.curve, curves)
    labels = sorted(strips)
    tiles = np.concatenate([strips[label] for label in labels])  # 3 rows per event kind
    save_grid(params.strips, (tiles * 255).round().astype(np.uint8))
    return device_info


def write_curve(path: Path, curves: dict[str, dict[str, np.ndarray]]) -> None:
    """One row per step index: PSNR of every split and method (empty past a split's end)."""
    columns = [f"{s}_{m}_psnr" for s in curves for m in METHODS]
    longest = max(len(c) for split in curves.values() for c in split.values())
    with atomic_file(path, "w") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["step", *columns])
        for t in range(longest):
            values = [
                curves[s][m][t] if t < len(curves[s][m]) else "" for s in curves for m in METHODS
            ]
            writer.writerow([t + 1, *(f"{v:.3f}" if v != "" else "" for v in values)])


PER_CLIP_COLUMNS = [f"{m}_{r}_psnr" for m in METHODS for r in ("background", "details")]


def write_per_clip(path: Path, rows: list[list[Any]]) -> None:
    """One row per clip: split, clip id, event kind, background and sprite PSNR of each method
    (empty without sprite masks)."""
    with atomic_file(path, "w") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["split", "clip_id", "label", *PER_CLIP_COLUMNS])
        writer.writerows(rows)


def region_medians(rows: list[list[Any]]) -> dict[str, dict[str, float]]:
    """Median background and sprite PSNR per split and method: the distribution's centre beside
    the thresholded shares."""
    out: dict[str, dict[str, float]] = {}
    for split in ("train", "test"):
        values = np.array([r[3:] for r in rows if r[0] == split], float)
        if len(values):
            medians = np.nanmedian(values, 0).round(3).tolist()
            out[f"{split}_median_psnr"] = dict(zip(PER_CLIP_COLUMNS, medians, strict=True))
    return out


def main(params: Params) -> dict[str, Any]:
    """Compare originals, CAE-only and MTRNN recognise-then-generate on train and held-out clips."""
    return evaluate(params)


if __name__ == "__main__":
    run_stage(STAGE, Params, main)
