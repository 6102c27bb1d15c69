"""Stage `dmm_train`: the convolutional deep Markov model (`dmm.py`) on the MotionMNIST train split.

    python -m stages.motionmnist.dmm_train [--params FILE]

Adam on the negative ELBO of whole 20-frame videos (frames mean-pooled by `downsample`, scaled to
[0, 1]), the KL weight annealed linearly from 0 to 1 over `kl_warmup` steps (without it the
posterior collapses onto the prior before the emission is any good: the usual DMM recipe).
Batches come from a named, epoch-keyed stream (`training.batch_indices`) and the model's noise
from a seeded generator saved in the resume state, so an interrupted run resumes to the same
bytes. Outputs: the model file (with its provenance), resume state, DVCLive curves and, every
`sample_every` steps, a grid of predictions on fixed train videos.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages.common import training
from stages.common.cli import run_stage
from stages.common.errors import StageError
from stages.common.images import save_grid
from stages.common.progress import progress
from stages.motionmnist.dmm import DMM, Config
from stages.motionmnist.mdbigan import resident_train_videos

STAGE = "dmm_train"
MODULE = "stages.motionmnist.dmm_train"  # its import closure is the code digest
ROWS_STREAM = "dmm_train/rows"
CONTEXT = 10  # frames the sample grids condition on (the evaluation's split of 20)


@dataclass(frozen=True)
class ModelParams:
    width: int
    z_dim: int
    hidden: int


@dataclass(frozen=True)
class Params:
    seed: int
    data: Path  # the MotionMNIST dataset (train split used)
    model: Path
    checkpoint: Path
    live: Path
    device: str
    threads: int
    downsample: int  # frames mean-pooled by this factor (1 = 64x64)
    model_config: ModelParams
    steps: int
    batch: int  # videos per step
    lr: float
    kl_warmup: int  # steps over which the KL weight rises from 0 to 1
    log_every: int
    sample_every: int
    checkpoint_every: int


def check(params: Params) -> None:
    """Refuse impossible params before any work, naming the key."""
    for key in ("downsample", "steps", "batch", "log_every", "sample_every", "checkpoint_every"):
        if getattr(params, key) < 1:
            raise StageError(
                f"params.yaml: {STAGE}.{key}", f"must be at least 1, got {getattr(params, key)}"
            )
    if not 0 < params.lr < 1:
        raise StageError(f"params.yaml: {STAGE}.lr", f"must be in (0, 1), got {params.lr}")
    if params.kl_warmup < 0:
        raise StageError(f"params.yaml: {STAGE}.kl_warmup", "must be >= 0")
    for key, value in dataclasses.asdict(params.model_config).items():
        if value < 1:
            raise StageError(f"params.yaml: {STAGE}.model_config.{key}", "must be at least 1")


def to_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames -> float in [0, 1]."""
    return frames.float().div_(255.0)


def prediction_tiles(model: DMM, videos: torch.Tensor) -> np.ndarray:
    """uint8 tiles (2 * n, frames, H, W): each video's true future, then its prediction."""
    model.eval()
    frames = to_unit(videos)
    predicted = model.predict(frames[:, :CONTEXT], frames.shape[1] - CONTEXT)
    model.train()
    rows = torch.stack([frames[:, CONTEXT:], predicted], 1).flatten(0, 1)
    return (rows.cpu().numpy() * 255).round().astype(np.uint8)


def train(params: Params) -> dict[str, Any]:
    check(params)
    device, device_info = training.prepare_torch(params.seed, params.device, params.threads, STAGE)
    videos = resident_train_videos(params.data, params.downsample, params.batch, STAGE, device)
    count, frames, size, _ = videos.shape
    if frames <= CONTEXT:
        raise StageError(params.data, f"videos of {frames} frames; prediction needs > {CONTEXT}")
    config = Config(size=size, **dataclasses.asdict(params.model_config))
    try:
        model = training.to_device(DMM(config), device)
    except ValueError as exc:
        raise StageError(f"params.yaml: {STAGE}.downsample", str(exc)) from None
    optimiser = torch.optim.Adam(model.parameters(), params.lr)
    generator = torch.Generator(device).manual_seed(params.seed)
    source = training.provenance(params, MODULE, [params.data])

    start, log_sums = 0, None
    resume = training.load_resume(params.checkpoint, source.fingerprint)
    if resume is not None and resume["step"] <= params.steps:
        training.load_state(params.checkpoint, model, resume["model"])
        optimiser.load_state_dict(resume["optimiser"])
        generator.set_state(resume["generator"])
        start, log_sums = resume["step"], resume["log_sums"]
    live = training.open_live(params.live, start or None)
    window = training.LogWindow(live, params.log_every, log_sums, device)
    shown = videos[:4]  # fixed videos for the sample grids

    def autocast() -> torch.autocast:  # bf16 on the GPU (the loss itself in fp32)
        return torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")

    started = time.perf_counter()
    for step in progress(
        range(start, params.steps), desc=STAGE, total=params.steps - start, unit="step"
    ):
        idx = training.batch_indices(params.seed, ROWS_STREAM, step, count, params.batch)
        batch = to_unit(videos[torch.from_numpy(idx).to(device)])
        kl_weight = min(1.0, step / params.kl_warmup) if params.kl_warmup else 1.0
        with autocast():
            loss, parts = model.loss(batch, kl_weight, generator)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        done = step + 1
        window.add(done, {key: value.detach() for key, value in {"loss": loss, **parts}.items()})
        if done % params.sample_every == 0:
            save_grid(
                Path(live.plots_dir) / "images" / f"predictions-step-{done:06d}.png",
                prediction_tiles(model, shown),
            )
        if done % params.checkpoint_every == 0 or done == params.steps:
            training.save_resume(
                params.checkpoint,
                {
                    "fingerprint": source.fingerprint,
                    "step": done,
                    "model": model.state_dict(),
                    "optimiser": optimiser.state_dict(),
                    "generator": generator.get_state(),
                    "log_sums": window.state(),
                },
            )
    record = training.model_record(
        model.state_dict(), config, params.steps, source, downsample=params.downsample,
        **device_info,
    )  # fmt: skip
    timings = training.finish(
        params.model, record, live, started, start, params.steps, params.batch, "videos"
    )
    return timings | device_info


def main(params: Params) -> dict[str, Any]:
    """Train the convolutional DMM on the MotionMNIST train split."""
    return train(params)


if __name__ == "__main__":
    run_stage(STAGE, Params, main)
