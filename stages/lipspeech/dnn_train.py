"""Stage `dnn_train`: the paper's baseline (b), a randomly initialised DNN in each direction.

    python -m stages.lipspeech.dnn_train [--params FILE]

Two feed-forward nets with the GGDRM's widths (`stages/lipspeech/dnn.py`), x -> y (lip features to
mel-cepstra) and y -> x, PyTorch's default initialisation (seeded), trained by backprop on the
squared error of the standardised train-split pairs, as many steps as the GGDRM's fine-tuning.
Batches are a function of (seed, direction, step): a resumed run gives the same bytes.

Outputs: `models/dnn.pt` (both nets, the standardisation, input hash, code digest), resume state,
DVCLive curves of the two losses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stages.common import training
from stages.common.cli import run_stage
from stages.common.errors import StageError
from stages.common.progress import progress
from stages.lipspeech.dnn import DIRECTIONS, Config, both_directions
from stages.lipspeech.ggdrm_train import standardise

STAGE = "dnn_train"
MODULE = "stages.lipspeech.dnn_train"


@dataclass(frozen=True)
class Params:
    seed: int
    pairs: Path
    model: Path
    checkpoint: Path
    live: Path
    device: str
    threads: int
    hidden: tuple[int, ...]
    batch: int
    steps: int  # per direction
    lr: float
    log_every: int
    checkpoint_every: int


def check(params: Params, rows: int) -> None:
    for key in ("batch", "steps", "log_every", "checkpoint_every"):
        if getattr(params, key) < 1:
            raise StageError(f"params.yaml: {STAGE}.{key}", "must be at least 1")
    if not params.hidden or min(params.hidden) < 1:
        raise StageError(f"params.yaml: {STAGE}.hidden", "hidden layer widths, each at least 1")
    if params.batch > rows:
        raise StageError(f"params.yaml: {STAGE}.batch", f"larger than the train split ({rows})")
    if not 0 < params.lr < 1:
        raise StageError(f"params.yaml: {STAGE}.lr", "must be in (0, 1)")


def train(params: Params) -> dict[str, Any]:
    device, device_info = training.prepare_torch(params.seed, params.device, params.threads, STAGE)
    data = standardise(params.pairs, device)
    check(params, len(data.x))
    sides = {"x2y": (data.x, data.y), "y2x": (data.y, data.x)}
    config = Config(data.x.shape[1], data.y.shape[1], tuple(params.hidden))
    nets = both_directions(config).to(device)
    optimisers = {d: torch.optim.Adam(nets[d].parameters(), params.lr) for d in DIRECTIONS}
    source = training.provenance(params, MODULE, [params.pairs])

    start = 0
    sums = {d: torch.zeros((), device=device) for d in DIRECTIONS}  # losses since the last log
    resume = training.load_resume(params.checkpoint, source.fingerprint)
    if resume is not None and resume["step"] <= params.steps:
        training.load_state(params.checkpoint, nets, resume["nets"])
        for d in DIRECTIONS:
            optimisers[d].load_state_dict(resume["optimisers"][d])
            sums[d] = resume["sums"][d].to(device)
        start = resume["step"]
    live = training.open_live(params.live, start or None)

    started = time.perf_counter()
    for step in progress(range(start, params.steps), desc=STAGE, total=params.steps - start,
                         unit="step"):  # fmt: skip
        for d, (given, wanted) in sides.items():  # both directions step together
            rows = training.batch_indices(params.seed, f"dnn-{d}", step, len(given), params.batch)
            rows_t = torch.from_numpy(rows).to(device)
            loss = nn.functional.mse_loss(nets[d](given[rows_t]), wanted[rows_t])
            optimisers[d].zero_grad(set_to_none=True)
            loss.backward()
            optimisers[d].step()
            sums[d] = sums[d] + loss.detach()
        done = step + 1
        if done % params.log_every == 0:
            live.step = done
            for d in DIRECTIONS:
                live.log_metric(f"train/{d}_mse", sums[d].item() / params.log_every)
                sums[d] = torch.zeros((), device=device)
            live.make_summary()
        if done % params.checkpoint_every == 0 or done == params.steps:
            training.save_resume(params.checkpoint, {
                "fingerprint": source.fingerprint, "step": done,
                "nets": nets.state_dict(),
                "optimisers": {d: o.state_dict() for d, o in optimisers.items()},
                "sums": {d: v.cpu() for d, v in sums.items()},
            })  # fmt: skip
    seconds = time.perf_counter() - started
    record = training.model_record(
        nets.state_dict(), config, params.steps, source, standardisation=data.record(),
        **device_info,
    )  # fmt: skip
    training.save_model(params.model, record)
    live.end()
    return {"train_seconds": round(seconds, 2), "resumed_at": start, **device_info}


def main(params: Params) -> dict[str, Any]:
    """Train the randomly initialised DNN baseline in both directions."""
    return train(params)


if __name__ == "__main__":
    run_stage(STAGE, Params, main)
