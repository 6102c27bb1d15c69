"""Stage `mtrnn_train`: the MTRNN on the CAE's feature sequences of the training clips (seed 000).

    python -m stages.gameplay.mtrnn_train [--params FILE]

The paper's second step. The trained CAE (frozen) turns every `frame_stride`-th frame of each
`train` clip into its 128-d feature; the MTRNN (`stages/gameplay/mtrnn.py`) learns all the
sequences at once by BPTT on next-step prediction, each clip with its own learnable initial slow
state Cs(0). Clips differ in length: the loss counts each clip's real steps only.

With `audio` set (stage `av_mtrnn_train`, the paper's future work), each step's IO vector is the
picture feature followed by the clip's log-mel spectrum at that step (`stages/gameplay/sound.py`),
scaled into the IO range with the training clips' per-band statistics (kept in the model file); the
audio channels' error is weighted by `audio.weight` per channel against the picture channels'.

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

from stages.common import dataset, training
from stages.common.cli import run_stage
from stages.common.errors import StageError
from stages.common.progress import progress
from stages.gameplay import sound
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
class SoundParams:
    n_mels: int  # log-mel bands per step
    n_fft: int  # samples per analysis window, centred on the step
    weight: float  # loss weight of an audio channel relative to a picture channel


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
    audio: SoundParams | None  # None: pictures only (the paper); else the audio-visual MTRNN
    frame_stride: int  # every n-th frame: the sequence's time step
    feedback: float  # share of the previous output in each training input (0: teacher forcing)
    steps: int  # full-batch BPTT steps over all training clips
    lr: float
    log_every: int
    checkpoint_every: int


def check(params: Params, stage: str) -> None:
    for key in ("frame_stride", "steps", "log_every", "checkpoint_every"):
        if getattr(params, key) < 1:
            raise StageError(f"params.yaml: {stage}.{key}", "must be at least 1")
    if not 0 < params.lr < 1:
        raise StageError(f"params.yaml: {stage}.lr", f"must be in (0, 1), got {params.lr}")
    if not 0 <= params.feedback <= 1:
        raise StageError(f"params.yaml: {stage}.feedback", "must be in [0, 1]")
    try:
        Config(io=1, **dataclasses.asdict(params.model_config))
    except ValueError as exc:
        raise StageError(f"params.yaml: {stage}.model_config", str(exc)) from None
    a = params.audio
    if a is not None and not (1 <= a.n_mels <= 256 and 64 <= a.n_fft <= 65536 and a.weight > 0):
        raise StageError(
            f"params.yaml: {stage}.audio",
            "need 1 <= n_mels <= 256, 64 <= n_fft <= 65536, weight > 0",
        )


def load_cae(path: Path, device: Any) -> CAE:
    config, record = training.load_model(path, CAEConfig)
    cae = CAE(config)
    training.load_state(path, cae, record["state_dict"])
    return training.to_device(cae, device).eval()


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


def step_seconds(clips: Path, stride: int) -> float:
    """Seconds per model step: `stride` frames at the clip dataset's fps."""
    return stride / float(dataset.describe(clips)["metadata"]["fps"])


def sound_sequences(
    rows: dict[str, np.ndarray], lengths: torch.Tensor, seconds: float, audio: SoundParams
) -> list[np.ndarray]:
    """Each clip's log-mel spectrum (steps, n_mels) in dB, one row per model step."""
    return [
        sound.log_mel(wave[:n], int(rate), int(steps), seconds, audio.n_fft, audio.n_mels)
        for wave, n, rate, steps in zip(
            rows["audio"], rows["n_samples"], rows["audio_rate"], lengths.tolist(), strict=True
        )
    ]


def padded(parts: list[np.ndarray], steps: int, device: Any) -> torch.Tensor:
    out = np.zeros((len(parts), steps, parts[0].shape[1]), np.float32)
    for k, part in enumerate(parts):
        out[k, : len(part)] = part
    return torch.from_numpy(out).to(device)


def train(params: Params, stage: str, module: str) -> dict[str, Any]:
    check(params, stage)
    device, device_info = training.prepare_torch(params.seed, params.device, params.threads, stage)
    cae = load_cae(params.cae, device)
    columns = ["clip_id", "frames", "n_frames"]
    if params.audio is not None:
        columns += ["audio", "n_samples", "audio_rate"]
    rows = training.load_split(params.clips, "train", columns)
    sequences, lengths = feature_sequences(cae, rows, params.frame_stride, device)
    clip_ids = rows["clip_id"]
    if int(lengths.min()) < 2:
        raise StageError(
            params.clips, "a training clip has fewer than 2 frames at this frame_stride"
        )
    weights, extra = None, {}
    if params.audio is not None:
        seconds = step_seconds(params.clips, params.frame_stride)
        log_mels = sound_sequences(rows, lengths, seconds, params.audio)
        mean, scale = sound.normaliser(log_mels)
        heard = padded([sound.to_io(m, mean, scale) for m in log_mels], sequences.shape[1], device)
        sequences = torch.cat([sequences, heard], 2)
        heard_weight = torch.full((params.audio.n_mels,), params.audio.weight)
        weights = torch.cat([torch.ones(cae.config.bottleneck), heard_weight]).to(device)
        extra = {"sound": {
            **dataclasses.asdict(params.audio), "mean": mean.tolist(), "scale": scale.tolist(),
            "step_seconds": seconds, "picture_channels": cae.config.bottleneck,
        }}  # fmt: skip
    config = Config(io=sequences.shape[2], **dataclasses.asdict(params.model_config))
    model = MTRNN(config, sequences=len(clip_ids)).to(device)
    optimiser = torch.optim.Adam(model.parameters(), params.lr)

    source = training.provenance(params, module, [params.clips, params.cae])

    start, log_sums = 0, None
    resume = training.load_resume(params.checkpoint, source.fingerprint)
    if resume is not None and resume["step"] <= params.steps:
        training.load_state(params.checkpoint, model, resume["model"])
        optimiser.load_state_dict(resume["optimiser"])
        start, log_sums = resume["step"], resume["log_sums"]
    live = training.open_live(params.live, start or None)
    window = training.LogWindow(live, params.log_every, log_sums, device)

    started = time.perf_counter()
    for step in progress(
        range(start, params.steps), desc=stage, total=params.steps - start, unit="step"
    ):
        # fp32: BPTT through 70-step leaks
        outputs = model(sequences[:, :-1], model.initial_slow, feedback=params.feedback)
        loss = prediction_loss(outputs, sequences[:, 1:], lengths, weights)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        done = step + 1
        window.add(done, {"next_step_mse": loss.detach()})
        if done % params.checkpoint_every == 0 or done == params.steps:
            training.save_resume(params.checkpoint, {
                "fingerprint": source.fingerprint, "step": done, "model": model.state_dict(),
                "optimiser": optimiser.state_dict(), "log_sums": window.state(),
            })  # fmt: skip
    record = training.model_record(
        model.state_dict(), config, params.steps, source,
        clip_ids=torch.from_numpy(clip_ids.astype(np.int64)), frame_stride=params.frame_stride,
        **extra, **device_info,
    )  # fmt: skip
    timings = training.finish(params.model, record, live, started, start, params.steps, 1, "steps")
    return timings | device_info


def main(params: Params) -> dict[str, Any]:
    """Train the MTRNN on the CAE features of the training clips."""
    return train(params, STAGE, MODULE)


if __name__ == "__main__":
    run_stage(STAGE, Params, main)
