"""Stage `seqvae_train`: the disentangling sequential VAE (`seqvae.py`) on MotionMNIST (train).

    python -m stages.motionmnist.seqvae_train [--params FILE]

Each step, two moves on one batch of whole 20-frame videos (frames mean-pooled by `downsample`,
scaled to [0, 1]):

1. the VAE (encoder, prior, decoder): Adam on the negative ELBO, the KL weight annealed linearly
   from 0 to 1 over `kl_warmup` steps, plus `adversarial` times the adversaries' confusion (their
   predictions pushed toward uniform) on the posterior means;
2. the adversaries: Adam on their cross-entropy, motion from z_s and digit from z_1..z_T, on the
   same means detached (they learn from the train split's labels; the VAE never sees a label but
   through them).

Batches come from a named, epoch-keyed stream (`training.batch_indices`) and the sampling noise
from a seeded generator saved in the resume state, so an interrupted run resumes to the same
bytes. Outputs: the model file (with its provenance), resume state, DVCLive curves (ELBO parts and
the adversaries' accuracies) and, every `sample_every` steps, a grid of swaps on fixed train videos.
"""

from __future__ import annotations

import dataclasses
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
from stages.motionmnist.mdbigan import shrink
from stages.motionmnist.seqvae import Config, SequentialVAE, confusion

STAGE = "seqvae_train"
MODULE = "stages.motionmnist.seqvae_train"  # its import closure is the code digest
ROWS_STREAM = "seqvae_train/rows"


@dataclass(frozen=True)
class ModelParams:
    width: int
    hidden: int
    static_dim: int
    dynamic_dim: int


@dataclass(frozen=True)
class Params:
    seed: int
    data: Path  # the MotionMNIST dataset (train split used, with its labels)
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
    adversary_lr: float
    adversarial: float  # weight of the adversaries' confusion in the VAE's loss; 0 = plain VAE
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
    for key in ("lr", "adversary_lr"):
        if not 0 < getattr(params, key) < 1:
            raise StageError(f"params.yaml: {STAGE}.{key}", "must be in (0, 1)")
    for key in ("adversarial", "kl_warmup"):
        if getattr(params, key) < 0:
            raise StageError(f"params.yaml: {STAGE}.{key}", "must be >= 0")
    for key, value in dataclasses.asdict(params.model_config).items():
        if value < 1:
            raise StageError(f"params.yaml: {STAGE}.model_config.{key}", "must be at least 1")


def to_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames -> float in [0, 1]."""
    return frames.float().div_(255.0)


def train_step(
    model: SequentialVAE,
    frames: torch.Tensor,
    motion: torch.Tensor,
    digit: torch.Tensor,
    opt_vae: torch.optim.Optimizer,
    opt_adversary: torch.optim.Optimizer,
    *,
    kl_weight: float,
    adversarial: float,
    generator: torch.Generator,
    autocast: Any,
) -> dict[str, torch.Tensor]:
    """One VAE step (ELBO + confusion), then one adversary step. Returns the logged values,
    detached and on the device."""
    with autocast():
        elbo, parts, (z_static, z_dynamic) = model.loss(frames, kl_weight, generator)
        motion_logits, digit_logits = model.adversaries(z_static, z_dynamic)
        confused = confusion(motion_logits) + confusion(digit_logits)
    opt_vae.zero_grad(set_to_none=True)
    (elbo + adversarial * confused).backward()
    opt_vae.step()

    with autocast():
        motion_logits, digit_logits = model.adversaries(z_static.detach(), z_dynamic.detach())
        adversary_loss = F.cross_entropy(motion_logits.float(), motion) + F.cross_entropy(
            digit_logits.float(), digit
        )
    opt_adversary.zero_grad(set_to_none=True)
    adversary_loss.backward()
    opt_adversary.step()
    return {
        "loss": elbo.detach(),
        **{k: v.detach() for k, v in parts.items()},
        "adversary_loss": adversary_loss.detach(),
        "motion_from_static": (motion_logits.argmax(1) == motion).float().mean(),
        "digit_from_dynamic": (digit_logits.argmax(1) == digit).float().mean(),
    }


def swap_tiles(model: SequentialVAE, videos: torch.Tensor) -> np.ndarray:
    """uint8 tiles (3 * n, T / 2, H, W): video A, video B (A rolled by one), then A's static
    latent with B's dynamic ones; every other frame."""
    model.eval()
    a = to_unit(videos)
    b = a.roll(1, 0)
    swapped = model.swap(a, b)
    model.train()
    rows = torch.stack([a, b, swapped], 1).flatten(0, 1)[:, ::2]
    return (rows.cpu().numpy() * 255).round().astype(np.uint8)


def load_train(params: Params, device: Any) -> dict[str, torch.Tensor]:
    """The train split's frames (shrunk) and labels, on `device`."""
    rows = training.load_split(params.data, "train", ["frames", "motion", "digit_class"])
    if params.batch > len(rows["frames"]):
        raise StageError(
            f"params.yaml: {STAGE}.batch",
            f"{params.batch} videos, but the train split has {len(rows['frames'])}",
        )
    frames = shrink(torch.from_numpy(rows["frames"]), params.downsample)
    return {
        "frames": frames.to(device),
        "motion": torch.from_numpy(rows["motion"].astype(np.int64)).to(device),
        "digit": torch.from_numpy(rows["digit_class"].astype(np.int64)).to(device),
    }


def train(params: Params) -> dict[str, Any]:
    check(params)
    device, device_info = training.prepare_torch(params.seed, params.device, params.threads, STAGE)
    rows = load_train(params, device)
    count, frames, size, _ = rows["frames"].shape
    config = Config(size=size, frames=frames, **dataclasses.asdict(params.model_config))
    try:
        model = training.to_device(SequentialVAE(config), device)
    except ValueError as exc:
        raise StageError(f"params.yaml: {STAGE}.downsample", str(exc)) from None
    opt_vae = torch.optim.Adam(model.vae_parameters(), params.lr)
    opt_adversary = torch.optim.Adam(model.adversary_parameters(), params.adversary_lr)
    generator = torch.Generator(device).manual_seed(params.seed)
    source = training.provenance(params, MODULE, [params.data])

    start, log_sums = 0, None
    resume = training.load_resume(params.checkpoint, source.fingerprint)
    if resume is not None and resume["step"] <= params.steps:
        training.load_state(params.checkpoint, model, resume["model"])
        opt_vae.load_state_dict(resume["opt_vae"])
        opt_adversary.load_state_dict(resume["opt_adversary"])
        generator.set_state(resume["generator"])
        start, log_sums = resume["step"], resume["log_sums"]
    live = training.open_live(params.live, start or None)
    window = training.LogWindow(live, params.log_every, log_sums, device)
    shown = rows["frames"][:4]  # fixed videos for the sample grids

    def autocast() -> torch.autocast:  # bf16 on the GPU (the losses themselves in fp32)
        return torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")

    started = time.perf_counter()
    for step in progress(
        range(start, params.steps), desc=STAGE, total=params.steps - start, unit="step"
    ):
        idx = torch.from_numpy(
            training.batch_indices(params.seed, ROWS_STREAM, step, count, params.batch)
        ).to(device)
        logged = train_step(
            model,
            to_unit(rows["frames"][idx]),
            rows["motion"][idx],
            rows["digit"][idx],
            opt_vae,
            opt_adversary,
            kl_weight=min(1.0, step / params.kl_warmup) if params.kl_warmup else 1.0,
            adversarial=params.adversarial,
            generator=generator,
            autocast=autocast,
        )
        done = step + 1
        window.add(done, logged)
        if done % params.sample_every == 0:
            save_grid(
                Path(live.plots_dir) / "images" / f"swaps-step-{done:06d}.png",
                swap_tiles(model, shown),
            )
        if done % params.checkpoint_every == 0 or done == params.steps:
            training.save_resume(
                params.checkpoint,
                {
                    "fingerprint": source.fingerprint,
                    "step": done,
                    "model": model.state_dict(),
                    "opt_vae": opt_vae.state_dict(),
                    "opt_adversary": opt_adversary.state_dict(),
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
    """Train the disentangling sequential VAE on the MotionMNIST train split."""
    return train(params)


if __name__ == "__main__":
    run_stage(STAGE, Params, main)
