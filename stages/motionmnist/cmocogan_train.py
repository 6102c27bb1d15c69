"""Stage `cmocogan_train`: the conditional MoCoGAN (`cmocogan.py`) on the MotionMNIST train split,
with some (digit, motion) pairs held out of training entirely.

    python -m stages.motionmnist.cmocogan_train [--params FILE]

Every train-split video whose (digit class, motion) is one of `heldout` is dropped (the split
itself is the data stage's, never redrawn); the generator is only ever asked for the pairs that
remain, so the held-out pairs are zero-shot for the evaluate stage. `check` refuses a held-out
list that leaves some digit or some motion with no training video at all.

The loop is MoCoGAN's alternating game with AC-GAN heads: a discriminator step (D_I on
`image_frames` frames of each video, D_V on whole clips; real -> 1, fake -> 0, and the heads
classify the real frames' digit and the real clips' motion), then a generator step (fake -> 1,
and the heads must name the requested classes, weighted by `weight_class`). The requested
classes are the real batch's labels. Adam (lr, beta1, beta2) for both sides.

Batches come from a named, epoch-keyed stream (`training.batch_indices`), the codes and D_I's
frame picks from a seeded generator and D's instance noise from torch's stream, both saved in
the resume state: on the CPU an interrupted run resumes to the bytes of an unbroken one.
Outputs: the model file (with the held-out pairs, which the evaluate stage reads from it),
resume state, DVCLive curves and, every `sample_every` steps, a grid of generated videos
(held-out pairs first).
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
from stages.motionmnist.cmocogan import DIGITS, MOTIONS, CMoCoGAN, Config, init_weights, losses
from stages.motionmnist.mdbigan import shrink, to_video

STAGE = "cmocogan_train"
MODULE = "stages.motionmnist.cmocogan_train"  # its import closure is the code digest
ROWS_STREAM = "cmocogan_train/rows"
GRID_SEEN = 4  # seen pairs in the sample grids, after the held-out ones


@dataclass(frozen=True)
class Pair:
    digit: int
    motion: int


@dataclass(frozen=True)
class ModelParams:
    dim_z_content: int
    dim_z_style: int
    dim_z_motion: int
    dim_e_motion: int
    dim_eps: int
    width: int
    d_noise: float
    clip_stride: int


@dataclass(frozen=True)
class Params:
    seed: int
    data: Path  # the MotionMNIST dataset (train split used, held-out pairs dropped)
    model: Path
    checkpoint: Path
    live: Path
    device: str
    threads: int
    downsample: int  # frames mean-pooled by this factor (1 = 64x64)
    model_config: ModelParams
    heldout: list[Pair]  # (digit, motion) pairs never trained on
    steps: int
    batch: int  # videos per step
    image_frames: int  # frames per video D_I judges
    lr: float
    beta1: float
    beta2: float
    weight_class: float  # weight of the auxiliary classification losses
    log_every: int
    sample_every: int
    checkpoint_every: int


def check(params: Params) -> None:
    """Refuse impossible params before any work, naming the key."""
    positive = ("downsample", "steps", "batch", "image_frames", "log_every", "sample_every",
                "checkpoint_every")  # fmt: skip
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
    if params.weight_class < 0:
        raise StageError(f"params.yaml: {STAGE}.weight_class", "must be >= 0")
    for key, value in dataclasses.asdict(params.model_config).items():
        if key == "d_noise":  # the only float
            if value < 0:
                raise StageError(f"params.yaml: {STAGE}.model_config.{key}", "must be >= 0")
        elif value < 1:
            raise StageError(f"params.yaml: {STAGE}.model_config.{key}", "must be at least 1")
    for i, pair in enumerate(params.heldout):
        if not (0 <= pair.digit < DIGITS and 0 <= pair.motion < MOTIONS):
            raise StageError(
                f"params.yaml: {STAGE}.heldout[{i}]",
                f"digit must be 0..{DIGITS - 1} and motion 0..{MOTIONS - 1}, got {pair}",
            )
    pairs = heldout_array(params.heldout)
    if len({tuple(p) for p in pairs}) != len(pairs):
        raise StageError(f"params.yaml: {STAGE}.heldout", "a pair is listed twice")
    # (name, column, classes, pairs per class): a class with all its pairs held out is untrained
    for name, column, classes, per in (
        ("digit", 0, DIGITS, MOTIONS),
        ("motion", 1, MOTIONS, DIGITS),
    ):
        full = [k for k in range(classes) if (pairs[:, column] == k).sum() == per]
        if full:
            raise StageError(
                f"params.yaml: {STAGE}.heldout",
                f"holds out every pair of {name} {full[0]}: it would never be trained on",
            )


def heldout_array(pairs: list[Pair]) -> np.ndarray:
    """(k, 2) int64 array of (digit, motion)."""
    return np.array([[p.digit, p.motion] for p in pairs], np.int64).reshape(-1, 2)


def seen_mask(digit: np.ndarray, motion: np.ndarray, heldout: np.ndarray) -> np.ndarray:
    """True for every row whose (digit, motion) is not one of the held-out pairs."""
    out = np.ones(len(digit), bool)
    for d, m in heldout:
        out &= ~((digit == d) & (motion == m))
    return out


def training_videos(
    params: Params, device: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, int]]:
    """The train split without its held-out pairs: frames shrunk (n, T, H, W) uint8, digit and
    motion (n,), all on `device`; and counts for the run log."""
    rows = training.load_split(params.data, "train", ["frames", "motion", "digit_class"])
    digit, motion = rows["digit_class"].astype(np.int64), rows["motion"].astype(np.int64)
    keep = seen_mask(digit, motion, heldout_array(params.heldout))
    if params.batch > keep.sum():
        raise StageError(
            f"params.yaml: {STAGE}.batch",
            f"{params.batch} videos, but the train split has {keep.sum()} of seen pairs",
        )
    frames = shrink(torch.from_numpy(rows["frames"][keep]), params.downsample)
    counts = {"train_videos": len(keep), "dropped_heldout": int((~keep).sum())}
    return (
        frames.to(device),
        torch.from_numpy(digit[keep]).to(device),
        torch.from_numpy(motion[keep]).to(device),
        counts,
    )


def grid_pairs(heldout: np.ndarray) -> np.ndarray:
    """The pairs the sample grids show: every held-out one, then `GRID_SEEN` seen ones."""
    seen = [(d, m) for d in range(DIGITS) for m in range(MOTIONS)
            if not ((heldout[:, 0] == d) & (heldout[:, 1] == m)).any()]  # fmt: skip
    picks = [seen[i * len(seen) // GRID_SEEN] for i in range(GRID_SEEN)]
    return np.concatenate([heldout, np.array(picks, np.int64).reshape(-1, 2)])


def generate_uint8(
    model: CMoCoGAN, digit: torch.Tensor, motion: torch.Tensor, generator: torch.Generator
) -> np.ndarray:
    """uint8 (n, T, H, W) videos of the requested classes, G in eval mode."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        video = model.generator(digit, motion, generator)
    model.train(was_training)
    pixels = (video[:, :, 0].float().cpu().numpy() + 1.0) * 127.5
    return pixels.clip(0, 255).round().astype(np.uint8)


def sample_tiles(model: CMoCoGAN, pairs: np.ndarray, seed: int, device: Any) -> np.ndarray:
    """One video per pair from fixed noise, every other frame: (pairs, T / 2, H, W)."""
    generator = torch.Generator(device).manual_seed(seed)
    d = torch.from_numpy(pairs[:, 0]).to(device)
    m = torch.from_numpy(pairs[:, 1]).to(device)
    return generate_uint8(model, d, m, generator)[:, ::2]


def train(params: Params) -> dict[str, Any]:
    check(params)
    device, device_info = training.prepare_torch(params.seed, params.device, params.threads, STAGE)
    videos, digits, motions, counts = training_videos(params, device)
    count, frames, size, _ = videos.shape
    try:
        config = Config(frames=frames, size=size, **dataclasses.asdict(params.model_config))
    except ValueError as exc:
        raise StageError(f"params.yaml: {STAGE}.model_config", str(exc)) from None
    if params.image_frames > config.clip_frames:
        raise StageError(
            f"params.yaml: {STAGE}.image_frames", f"clips have {config.clip_frames} frames"
        )
    model = CMoCoGAN(config)
    init_weights(model)
    training.to_device(model, device)
    betas = (params.beta1, params.beta2)
    opt_d = torch.optim.Adam(model.discriminator_parameters(), params.lr, betas)
    opt_g = torch.optim.Adam(model.generator.parameters(), params.lr, betas)
    generator = torch.Generator(device).manual_seed(params.seed)
    source = training.provenance(params, MODULE, [params.data])
    heldout = heldout_array(params.heldout)

    start, log_sums = 0, None
    resume = training.load_resume(params.checkpoint, source.fingerprint)
    if resume is not None and resume["step"] <= params.steps:
        training.load_state(params.checkpoint, model, resume["model"])
        opt_d.load_state_dict(resume["opt_d"])
        opt_g.load_state_dict(resume["opt_g"])
        generator.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        if device.type == "cuda":
            torch.cuda.set_rng_state(resume["cuda_rng"])
        start, log_sums = resume["step"], resume["log_sums"]
    live = training.open_live(params.live, start or None)
    window = training.LogWindow(live, params.log_every, log_sums, device)
    shown = grid_pairs(heldout)

    def autocast() -> torch.autocast:  # bf16 on the GPU (the losses themselves in fp32)
        return torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")

    started = time.perf_counter()
    for step in progress(
        range(start, params.steps), desc=STAGE, total=params.steps - start, unit="step"
    ):
        idx = torch.from_numpy(
            training.batch_indices(params.seed, ROWS_STREAM, step, count, params.batch)
        ).to(device)
        d, m = digits[idx], motions[idx]
        # the clip of this step: every clip_stride-th frame from a random phase; G renders it alone
        phase = int(torch.randint(config.clip_stride, (1,), device=device, generator=generator))
        real = to_video(videos[idx][:, phase :: config.clip_stride])
        picks = torch.randint(
            real.shape[1], (params.batch, params.image_frames), device=device, generator=generator
        )
        with autocast():
            z_content, z_motion = model.generator.codes(d, m, generator)
            fake = model.generator.frames(z_content, z_motion[:, phase :: config.clip_stride])
            d_side = losses(model, real, fake.detach(), d, m, picks, params.weight_class, "d")
        opt_d.zero_grad(set_to_none=True)
        d_side["loss"].backward()
        opt_d.step()
        with autocast():
            g_side = losses(model, real, fake, d, m, picks, params.weight_class, "g")
        opt_g.zero_grad(set_to_none=True)
        g_side["loss"].backward()
        opt_g.step()

        # seven curves (a metrics summary holds at most 8 numbers, the step one of them): the
        # totals are their parts' sums, and D's two class losses move together
        logged = {f"d_{k}": d_side[k].detach() for k in ("image", "video")}
        logged["d_class_ce"] = (d_side["digit_ce"] + d_side["motion_ce"]).detach()
        logged |= {
            f"g_{k}": g_side[k].detach() for k in ("image", "video", "digit_ce", "motion_ce")
        }
        done = step + 1
        window.add(done, logged)
        if done % params.sample_every == 0:
            save_grid(
                Path(live.plots_dir) / "images" / f"samples-step-{done:06d}.png",
                sample_tiles(model, shown, params.seed, device),
            )
        if done % params.checkpoint_every == 0 or done == params.steps:
            training.save_resume(
                params.checkpoint,
                {
                    "fingerprint": source.fingerprint,
                    "step": done,
                    "model": model.state_dict(),
                    "opt_d": opt_d.state_dict(),
                    "opt_g": opt_g.state_dict(),
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),  # D's instance noise
                    "cuda_rng": torch.cuda.get_rng_state()
                    if device.type == "cuda"
                    else torch.empty(0),
                    "log_sums": window.state(),
                },
            )
    record = training.model_record(
        model.state_dict(), config, params.steps, source, downsample=params.downsample,
        heldout=heldout.tolist(), **device_info,
    )  # fmt: skip
    timings = training.finish(
        params.model, record, live, started, start, params.steps, params.batch, "videos"
    )
    return timings | counts | device_info


def main(params: Params) -> dict[str, Any]:
    """Train the conditional MoCoGAN on the MotionMNIST train split minus the held-out pairs."""
    return train(params)


if __name__ == "__main__":
    run_stage(STAGE, Params, main)
