"""Stage `cae_train`: the convolutional autoencoder on the frames of the training clips (seed 000).

    python -m stages.gameplay.cae_train [--params FILE]

The paper's first step: the CAE self-organises a 128-d feature per 128x128 RGB frame by learning
to rebuild it (mean squared error, Adam). It sees the frames of the `train` split only (the
`gameplay_clips` stage holds clips out by a seeded rule), every `frame_stride`-th frame of each
clip, in batches drawn by step from a named random stream (`stages/common/training.py`), so an
interrupted run resumes to the same bytes.

Outputs: `models/cae.pt` (weights, config, input hashes, code digest), resume state, DVCLive
curves (the loss) and a grid of frames beside their reconstructions every `sample_every` steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stages.common import training
from stages.common.cli import run_stage
from stages.common.errors import StageError
from stages.common.images import save_grid
from stages.common.progress import progress
from stages.gameplay.cae import CAE, Config

STAGE = "cae_train"
MODULE = "stages.gameplay.cae_train"  # its import closure is the code digest
ROWS_STREAM = "cae_train/rows"


@dataclass(frozen=True)
class ModelParams:
    channels: tuple[int, ...]  # the encoder's five conv layers
    bottleneck: int


@dataclass(frozen=True)
class Params:
    seed: int
    clips: Path  # the gameplay clip dataset (train split used)
    model: Path
    checkpoint: Path
    live: Path
    device: str
    threads: int
    model_config: ModelParams
    frame_stride: int  # every n-th frame of each clip
    steps: int
    batch: int  # frames per step
    lr: float
    log_every: int
    sample_every: int
    checkpoint_every: int


def check(params: Params) -> None:
    """Refuse impossible params before any work, naming the key."""
    for key in ("frame_stride", "steps", "batch", "log_every", "sample_every", "checkpoint_every"):
        if getattr(params, key) < 1:
            raise StageError(f"params.yaml: {STAGE}.{key}", "must be at least 1")
    if not 0 < params.lr < 1:
        raise StageError(f"params.yaml: {STAGE}.lr", f"must be in (0, 1), got {params.lr}")
    mc = params.model_config
    if len(mc.channels) != 5 or min(mc.channels) < 1 or mc.bottleneck < 1:
        raise StageError(
            f"params.yaml: {STAGE}.model_config", "five channel counts and a bottleneck >= 1"
        )


def training_frames(clips: Path, stride: int) -> np.ndarray:
    """uint8 (n, H, W, 3): every `stride`-th frame of every train-split clip, in dataset order."""
    rows = training.load_split(clips, "train", ["frames", "n_frames"])
    return np.concatenate(
        [
            video[:count:stride]
            for video, count in zip(rows["frames"], rows["n_frames"], strict=True)
        ]
    )


def to_input(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (n, H, W, 3) -> float (n, 3, H, W) in [0, 1]."""
    return frames.permute(0, 3, 1, 2).float().div_(255.0)


def reconstruction_tiles(model: CAE, frames: torch.Tensor) -> np.ndarray:
    """uint8 tiles (2, n, H, W, 3): the frames above their reconstructions."""
    model.eval()
    with torch.no_grad():
        rebuilt = model(to_input(frames))
    model.train()
    rebuilt = (rebuilt.permute(0, 2, 3, 1) * 255).round().clamp(0, 255).to(torch.uint8)
    return np.stack([frames.cpu().numpy(), rebuilt.cpu().numpy()])


def train(params: Params) -> dict[str, Any]:
    check(params)
    device, device_info = training.prepare_torch(params.seed, params.device, params.threads, STAGE)
    frames = torch.from_numpy(training_frames(params.clips, params.frame_stride)).to(device)
    count, size = frames.shape[0], frames.shape[1]
    if params.batch > count:
        raise StageError(
            f"params.yaml: {STAGE}.batch", f"{params.batch} frames, but the train split has {count}"
        )
    mc = params.model_config
    config = Config(size=size, channels=tuple(mc.channels), bottleneck=mc.bottleneck)
    model = training.to_device(CAE(config), device)
    optimiser = torch.optim.Adam(model.parameters(), params.lr)

    source = training.provenance(params, MODULE, [params.clips])

    start, log_sums = 0, None
    resume = training.load_resume(params.checkpoint, source.fingerprint)
    if resume is not None and resume["step"] <= params.steps:
        training.load_state(params.checkpoint, model, resume["model"])
        optimiser.load_state_dict(resume["optimiser"])
        start, log_sums = resume["step"], resume["log_sums"]
    live = training.open_live(params.live, start or None)
    window = training.LogWindow(live, params.log_every, log_sums, device)
    shown = frames[np.linspace(0, count - 1, 8).round().astype(int)]

    def autocast() -> torch.autocast:
        return torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")

    started = time.perf_counter()
    for step in progress(
        range(start, params.steps), desc=STAGE, total=params.steps - start, unit="step"
    ):
        idx = training.batch_indices(params.seed, ROWS_STREAM, step, count, params.batch)
        x = to_input(frames[torch.from_numpy(idx).to(device)])
        with autocast():
            loss = F.mse_loss(model(x).float(), x)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        done = step + 1
        window.add(done, {"mse": loss.detach()})
        if done % params.sample_every == 0:
            path = Path(live.plots_dir) / "images" / f"reconstructions-step-{done:06d}.png"
            save_grid(path, reconstruction_tiles(model, shown))
        if done % params.checkpoint_every == 0 or done == params.steps:
            training.save_resume(params.checkpoint, {
                "fingerprint": source.fingerprint, "step": done, "model": model.state_dict(),
                "optimiser": optimiser.state_dict(), "log_sums": window.state(),
            })  # fmt: skip
    record = training.model_record(model.state_dict(), config, params.steps, source, **device_info)
    timings = training.finish(
        params.model, record, live, started, start, params.steps, params.batch, "frames"
    )
    return timings | device_info


def main(params: Params) -> dict[str, Any]:
    """Train the CAE on the frames of the training clips; write the model and its curves."""
    return train(params)


if __name__ == "__main__":
    run_stage(STAGE, Params, main)
