"""Stage `mtrnn_train`: the MTRNN on the CAE's feature sequences of the training clips (seed 000).

    python -m stages.gameplay.mtrnn_train [--params FILE]

The paper's second step. The trained CAE (frozen) turns every `frame_stride`-th frame of each
`train` clip into its 128-d feature; the MTRNN (`stages/gameplay/mtrnn.py`) learns all the
sequences at once by BPTT on next-step prediction, each clip with its own learnable initial slow
state Cs(0). Clips differ in length: the loss counts each clip's real steps only.

Outputs: `models/mtrnn.pt` (weights with the Cs(0) of each training clip, the clip ids in that
order, config, the hashes of the clips and the CAE, code digest), resume state, DVCLive curve.
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
from stages.common.progress import progress
from stages.gameplay.cae import CAE
from stages.gameplay.cae import Config as CAEConfig
from stages.gameplay.cae_train import to_input
from stages.gameplay.mtrnn import MTRNN, Config, prediction_loss

STAGE = "mtrnn_train"
MODULE = "stages.gameplay.mtrnn_train"


@dataclass(frozen=True)
class ModelParams:
    fast: int
    slow: int
    tau_io: float
    tau_fast: float
    tau_slow: float


@dataclass(frozen=True)
class Params:
    seed: int
    clips: Path
    cae: Path  # the trained CAE (cae_train's model)
    model: Path
    checkpoint: Path
    live: Path
    device: str
    threads: int
    model_config: ModelParams
    frame_stride: int  # every n-th frame: the sequence's time step
    steps: int  # full-batch BPTT steps over all training clips
    lr: float
    log_every: int
    checkpoint_every: int


def check(params: Params) -> None:
    for key in ("frame_stride", "steps", "log_every", "checkpoint_every"):
        if getattr(params, key) < 1:
            raise StageError(f"params.yaml: {STAGE}.{key}", "must be at least 1")
    if not 0 < params.lr < 1:
        raise StageError(f"params.yaml: {STAGE}.lr", f"must be in (0, 1), got {params.lr}")
    try:
        Config(io=1, **dataclasses.asdict(params.model_config))
    except ValueError as exc:
        raise StageError(f"params.yaml: {STAGE}.model_config", str(exc)) from None


def load_cae(path: Path, device: Any) -> CAE:
    config, record = training.load_model(path, CAEConfig)
    cae = CAE(config)
    training.load_state(path, cae, record["state_dict"])
    return cae.to(device).eval()


def feature_sequences(
    cae: CAE, rows: dict[str, np.ndarray], stride: int, device: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """CAE features of every `stride`-th frame of clips (`frames`, `n_frames` columns),
    zero-padded: (clips, T, bottleneck), and the sequence lengths (clips,)."""
    lengths = torch.tensor([len(range(0, n, stride)) for n in rows["n_frames"]])
    out = torch.zeros(len(lengths), int(lengths.max()), cae.config.bottleneck, device=device)
    with torch.no_grad():
        for k, (video, n) in enumerate(zip(rows["frames"], rows["n_frames"], strict=True)):
            frames = torch.from_numpy(video[:n:stride]).to(device)
            out[k, : len(frames)] = cae.encode(to_input(frames))
    return out, lengths.to(device)


def train(params: Params) -> dict[str, Any]:
    check(params)
    device, device_info = training.prepare_torch(params.seed, params.device, params.threads, STAGE)
    cae = load_cae(params.cae, device)
    rows = training.load_split(params.clips, "train", ["clip_id", "frames", "n_frames"])
    sequences, lengths = feature_sequences(cae, rows, params.frame_stride, device)
    clip_ids = rows["clip_id"]
    if int(lengths.min()) < 2:
        raise StageError(
            params.clips, "a training clip has fewer than 2 frames at this frame_stride"
        )
    config = Config(io=cae.config.bottleneck, **dataclasses.asdict(params.model_config))
    model = MTRNN(config, sequences=len(clip_ids)).to(device)
    optimiser = torch.optim.Adam(model.parameters(), params.lr)

    source = training.provenance(params, MODULE, [params.clips, params.cae])

    start, loss_sum = 0, torch.zeros((), device=device)
    resume = training.load_resume(params.checkpoint, source.fingerprint)
    if resume is not None and resume["step"] <= params.steps:
        training.load_state(params.checkpoint, model, resume["model"])
        optimiser.load_state_dict(resume["optimiser"])
        start, loss_sum = resume["step"], resume["loss_sum"].to(device)
    live = training.open_live(params.live, start or None)

    started = time.perf_counter()
    for step in progress(
        range(start, params.steps), desc=STAGE, total=params.steps - start, unit="step"
    ):
        outputs = model(sequences[:, :-1], model.initial_slow)  # fp32: BPTT through 70-step leaks
        loss = prediction_loss(outputs, sequences[:, 1:], lengths)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        loss_sum = loss_sum + loss.detach()
        done = step + 1
        if done % params.log_every == 0:
            live.step = done
            live.log_metric("train/next_step_mse", loss_sum.item() / params.log_every)
            live.make_summary()
            loss_sum = torch.zeros((), device=device)
        if done % params.checkpoint_every == 0 or done == params.steps:
            training.save_resume(params.checkpoint, {
                "fingerprint": source.fingerprint, "step": done, "model": model.state_dict(),
                "optimiser": optimiser.state_dict(), "loss_sum": loss_sum.cpu(),
            })  # fmt: skip
    seconds = time.perf_counter() - started
    record = training.model_record(
        model.state_dict(), config, params.steps, source,
        clip_ids=torch.from_numpy(clip_ids.astype(np.int64)), frame_stride=params.frame_stride,
        **device_info,
    )  # fmt: skip
    training.save_model(params.model, record)
    live.end()
    return {
        "train_seconds": round(seconds, 2),
        "steps_per_s": round((params.steps - start) / max(seconds, 1e-9), 2),
        "resumed_at": start,
        **device_info,
    }


def main(params: Params) -> dict[str, Any]:
    """Train the MTRNN on the CAE features of the training clips."""
    return train(params)


if __name__ == "__main__":
    run_stage(STAGE, Params, main)
