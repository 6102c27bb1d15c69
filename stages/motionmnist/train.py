"""Stage `mdbigan_train`: MDBiGAN on the train split of MotionMNIST.

    python -m stages.motionmnist.train [--params FILE]

The loop is the paper's alternating BiGAN game (stages/motionmnist/mdbigan.py): a discriminator
step on real pairs (x, E(x)) against fake pairs (G(z_C, z_M), z_M) for D_I (some frames of each
video) and D_V (the whole video), then a G/E step with the labels flipped; Adam 2e-4 (0.5, 0.999);
label noise that fades out over the first steps.

Deviations from the authors, each a param so its effect can be measured (`docs`, the issue note):
- `latent_regression`: G and E also minimise |E(G(z_C, z_M)) - z_M|^2. The plain game lets both
  discriminators win and E collapse (NMI 0.76 -> 0.31 in a trial of the authors' recipe); this
  gives E a direct inverse signal, and since z_C is drawn afresh it teaches E to ignore content.
- `model.spectral_norm`: spectral normalisation of the discriminators, the standard cure for a
  discriminator that wins.

Outputs: `models/mdbigan.pt` (the final model), snapshots every `snapshot_every` steps in
`history` (the evaluate stage measures them: the curve of NMI over training), resume state in
`checkpoint`, DVCLive curves and sample grids in `live`.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
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
from stages.motionmnist.mdbigan import (
    Config,
    MDBiGAN,
    init_weights,
    resident_train_videos,
    to_video,
)

log = logging.getLogger(__name__)
STAGE = "mdbigan_train"
MODULE = "stages.motionmnist.train"  # its import closure is the code digest
ROWS_STREAM = "mdbigan_train/rows"


@dataclass(frozen=True)
class ModelParams:
    width: int
    d_hidden: int
    spectral_norm: bool
    motion_noise: bool
    d_noise: float
    d_dropout: float


@dataclass(frozen=True)
class Params:
    seed: int
    data: Path  # the MotionMNIST dataset (train split used)
    model: Path  # final model file
    history: Path  # snapshots step-NNNNNN.pt
    checkpoint: Path  # resume state
    live: Path  # DVCLive directory
    device: str  # auto, cpu or cuda
    threads: int  # torch CPU threads, pinned (float sums depend on them)
    downsample: int  # frames mean-pooled by this factor first (1 = the paper's 64x64)
    model_config: ModelParams
    steps: int
    batch: int  # videos per step
    image_frames: int  # frames per video that D_I judges
    lr: float
    beta1: float
    beta2: float
    label_noise: float  # targets drawn from [1 - n, 1] and [0, n] at the start ...
    label_noise_steps: int  # ... fading linearly to exact labels by this step
    latent_regression: float  # weight of |E(G(z)) - z_M|^2; 0 = the authors' game
    log_every: int
    sample_every: int
    snapshot_every: int
    checkpoint_every: int


def check(params: Params) -> None:
    """Refuse impossible params before any work, naming the key."""
    positive = (
        "downsample",
        "steps",
        "batch",
        "image_frames",
        "log_every",
        "sample_every",
        "snapshot_every",
        "checkpoint_every",
    )
    for key in positive:
        if getattr(params, key) < 1:
            raise StageError(
                f"params.yaml: {STAGE}.{key}", f"must be at least 1, got {getattr(params, key)}"
            )
    if not 0 < params.lr < 1:
        raise StageError(f"params.yaml: {STAGE}.lr", f"must be in (0, 1), got {params.lr}")
    for key in ("beta1", "beta2"):
        if not 0 <= getattr(params, key) < 1:
            raise StageError(f"params.yaml: {STAGE}.{key}", "must be in [0, 1)")
    if not 0 <= params.label_noise < 0.5:
        raise StageError(f"params.yaml: {STAGE}.label_noise", "must be in [0, 0.5)")
    if params.latent_regression < 0:
        raise StageError(f"params.yaml: {STAGE}.latent_regression", "must be >= 0")
    if params.model_config.width < 1 or params.model_config.d_hidden < 1:
        raise StageError(f"params.yaml: {STAGE}.model_config", "width and d_hidden must be >= 1")


def targets(
    n: int, real: bool, noise: float, generator: torch.Generator, device: Any
) -> torch.Tensor:
    """Labels 1 (real) / 0 (fake), pulled toward 0.5 by up to `noise` (label noise)."""
    jitter = noise * torch.rand(n, device=device, generator=generator)
    return 1.0 - jitter if real else jitter


def bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.float(), target)


def pick_frames(video: torch.Tensor, z: torch.Tensor, k: int, generator: torch.Generator):
    """k random (frame, z_M(t)) pairs per video, flattened, for D_I."""
    batch, frames = z.shape[:2]
    t = torch.randint(frames, (batch, k), device=z.device, generator=generator)
    rows = torch.arange(batch, device=z.device)[:, None]
    return video[rows, t].flatten(0, 1), z[rows, t].flatten(0, 1)


def train_step(
    model: MDBiGAN,
    x: torch.Tensor,
    opt_d: torch.optim.Optimizer,
    opt_ge: torch.optim.Optimizer,
    *,
    image_frames: int,
    latent_regression: float,
    noise: float,
    generator: torch.Generator,
    autocast: Any,
) -> dict[str, torch.Tensor]:
    """One D step, then one G/E step with flipped labels. Returns the losses, detached and on
    the device (reading them would wait for the GPU every step)."""
    batch, k, device = x.shape[0], image_frames, x.device
    with autocast():
        e_real = model.encoder(x)
        x_fake, z_fake = model.generator.sample(batch, generator)

    # --- discriminators: real (x, E(x)) -> 1, fake (G(z), z) -> 0
    with autocast():
        fr, zr = pick_frames(x, e_real.detach(), k, generator)
        ff, zf = pick_frames(x_fake.detach(), z_fake.detach(), k, generator)
        loss_di = bce(
            model.d_image(fr, zr), targets(batch * k, True, noise, generator, device)
        ) + bce(model.d_image(ff, zf), targets(batch * k, False, noise, generator, device))
        loss_dv = bce(
            model.d_video(x, e_real.detach()), targets(batch, True, noise, generator, device)
        ) + bce(
            model.d_video(x_fake.detach(), z_fake.detach()),
            targets(batch, False, noise, generator, device),
        )
    opt_d.zero_grad(set_to_none=True)
    (loss_di + loss_dv).backward()
    opt_d.step()

    # --- G and E, labels flipped: real pairs -> 0, fake pairs -> 1
    ones, zeros = torch.ones(batch * k, device=device), torch.zeros(batch * k, device=device)
    with autocast():
        fr, zr = pick_frames(x, e_real, k, generator)
        ff, zf = pick_frames(x_fake, z_fake, k, generator)
        loss_ge = (
            bce(model.d_image(fr, zr), zeros)
            + bce(model.d_image(ff, zf), ones)
            + bce(model.d_video(x, e_real), zeros[:batch])
            + bce(model.d_video(x_fake, z_fake), ones[:batch])
        )
        # E alone learns to invert G: through G, the term would teach G to write z_M into the
        # digit's shape, where E reads it easily (and the motion code then carries the digit)
        regression = F.mse_loss(model.encoder(x_fake.detach()).float(), z_fake.detach().float())
    opt_ge.zero_grad(set_to_none=True)
    (loss_ge + latent_regression * regression).backward()
    opt_ge.step()
    return {
        "loss_d_image": loss_di.detach(),
        "loss_d_video": loss_dv.detach(),
        "loss_ge": loss_ge.detach(),
        "latent_regression": regression.detach(),
    }


def sample_tiles(model: MDBiGAN, seed: int, count: int = 8, frames: int = 10) -> np.ndarray:
    """uint8 tiles (count, frames, H, W): `count` videos from fixed codes, every other frame."""
    generator = torch.Generator(model.generator.motion.next_input.weight.device).manual_seed(seed)
    model.eval()
    with torch.no_grad():
        video, _ = model.generator.sample(count, generator)
    model.train()
    picked = video[:, :: max(1, video.shape[1] // frames), 0].float().cpu().numpy()
    return np.clip((picked + 1.0) * 127.5, 0, 255).round().astype(np.uint8)


def encoder_weights(model: MDBiGAN) -> dict[str, torch.Tensor]:
    """What a snapshot keeps: the encoder's weights (the evaluate stage's curve needs no more)."""
    return {k: v for k, v in model.state_dict().items() if k.startswith("encoder.")}


def train(params: Params) -> dict[str, Any]:
    check(params)
    device, device_info = training.prepare_torch(params.seed, params.device, params.threads, STAGE)
    videos = resident_train_videos(params.data, params.downsample, params.batch, STAGE, device)
    count, frames, size, _ = videos.shape

    config = Config(frames=frames, size=size, **dataclasses.asdict(params.model_config))
    model = MDBiGAN(config)
    init_weights(model)
    # NCHW: channels-last (`training.to_device`) measured 2-4% slower for these narrow convs
    model.to(device)
    opt_d = torch.optim.Adam(
        model.discriminator_parameters(), params.lr, (params.beta1, params.beta2)
    )
    opt_ge = torch.optim.Adam(model.generator_parameters(), params.lr, (params.beta1, params.beta2))
    generator = torch.Generator(device).manual_seed(params.seed)

    source = training.provenance(params, MODULE, [params.data])

    start = 0
    resume = training.load_resume(params.checkpoint, source.fingerprint)
    if resume is not None and resume["step"] <= params.steps:
        training.load_state(params.checkpoint, model, resume["model"])
        opt_d.load_state_dict(resume["opt_d"])
        opt_ge.load_state_dict(resume["opt_ge"])
        generator.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        if device.type == "cuda":
            torch.cuda.set_rng_state(resume["cuda_rng"])
        start = resume["step"]
    elif params.history.exists():
        shutil.rmtree(params.history)
    params.history.mkdir(parents=True, exist_ok=True)
    live = training.open_live(params.live, start if start else None)

    # bf16 autocast on the GPU (the losses themselves in fp32); plain fp32 on the CPU
    def autocast() -> torch.autocast:
        return torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")

    def checkpoint(step: int) -> None:
        training.save_resume(
            params.checkpoint,
            {
                "fingerprint": source.fingerprint,
                "step": step,
                "model": model.state_dict(),
                "opt_d": opt_d.state_dict(),
                "opt_ge": opt_ge.state_dict(),
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),  # the discriminators' noise and dropout
                "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else torch.empty(0),
                "log_sums": window.state(),  # a log interval half done
            },
        )

    log_sums = resume["log_sums"] if resume is not None and start else None
    window = training.LogWindow(live, params.log_every, log_sums, device)
    started, snapshot_seconds = time.perf_counter(), {}
    for step in progress(
        range(start, params.steps), desc=STAGE, total=params.steps - start, unit="step"
    ):
        idx = training.batch_indices(params.seed, ROWS_STREAM, step, count, params.batch)
        x = to_video(videos[torch.from_numpy(idx).to(device)])
        noise = params.label_noise * max(0.0, 1.0 - step / max(params.label_noise_steps, 1))
        losses = train_step(
            model,
            x,
            opt_d,
            opt_ge,
            image_frames=params.image_frames,
            latent_regression=params.latent_regression,
            noise=noise,
            generator=generator,
            autocast=autocast,
        )
        done = step + 1
        window.add(done, losses)
        if done % params.sample_every == 0:
            save_grid(
                Path(live.plots_dir) / "images" / f"samples-step-{done:06d}.png",
                sample_tiles(model, params.seed),
            )
        if done % params.snapshot_every == 0:
            training.save_model(
                params.history / f"step-{done:06d}.pt",
                training.model_record(encoder_weights(model), config, done, source, **device_info),
            )
            snapshot_seconds[done] = round(time.perf_counter() - started, 2)
        if done % params.checkpoint_every == 0 or done == params.steps:
            checkpoint(done)
    record = training.model_record(model.state_dict(), config, params.steps, source, **device_info)
    timings = training.finish(
        params.model, record, live, started, start, params.steps, params.batch, "videos"
    )
    return timings | {"snapshot_seconds": snapshot_seconds} | device_info


def main(params: Params) -> dict[str, Any]:
    """Train MDBiGAN on the MotionMNIST train split; write the model, snapshots and curves."""
    return train(params)


if __name__ == "__main__":
    run_stage(STAGE, Params, main)
