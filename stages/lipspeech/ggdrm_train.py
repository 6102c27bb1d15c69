"""Stage `ggdrm_train`: the GGDRM of seed 003 on the train split's (lip, mel-cepstrum) pairs.

    python -m stages.lipspeech.ggdrm_train [--params FILE]

Lip features x and mel-cepstra y are standardised with the train split's statistics, then the model
(`stages/lipspeech/ggdrm.py`, x - h_1 - h_2 - y) learns in the paper's three steps, one phase each:

1. layer-wise pre-training: a Gaussian RBM x - h_1 and one y - h_2 by CD-1, then the relational RBM
   h_1 - h_2 on the hidden activations the two give for the same frames;
2. joint maximum likelihood of the stacked model: mean-field posteriors (data term) against
   persistent Gibbs chains (model term), variances through their logarithms;
3. fine-tuning: the model unrolled into a feed-forward net per direction (x -> y and y -> x), each
   trained by backprop on the squared error.

Batches are a function of (seed, phase, step) and so is every sample drawn, so an interrupted run
resumes from `checkpoint` (saved every `checkpoint_every` steps and at each phase's end) to the
same bytes. DVCLive curves: reconstruction errors in pre-training, the mean-field conversion error
x -> y in the joint phase (the likelihood is intractable at 100 + 100 units), the fine-tuning
losses.

Outputs: `models/ggdrm.pt`: the joint model before fine-tuning (c), the two fine-tuned nets (d), the
standardisation, config, input hash and code digest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stages.common import training
from stages.common.cli import run_stage
from stages.common.errors import StageError
from stages.common.progress import progress
from stages.common.seeding import rng
from stages.lipspeech.dnn import FeedForward
from stages.lipspeech.ggdrm import GGDRM, GaussianRBM, RelationalRBM, stack, unroll

STAGE = "ggdrm_train"
MODULE = "stages.lipspeech.ggdrm_train"
PHASES = ("pretrain_x", "pretrain_y", "pretrain_middle", "joint", "finetune_x2y", "finetune_y2x")


@dataclass(frozen=True)
class Params:
    seed: int
    pairs: Path
    model: Path
    checkpoint: Path
    live: Path
    device: str
    threads: int
    hidden: tuple[int, int]  # h_1 (lip side), h_2 (speech side): the paper's 100 and 100
    batch: int  # frames per step
    pretrain_steps: int  # per RBM
    pretrain_lr: float
    joint_steps: int
    joint_lr: float
    mean_field_iterations: int  # sweeps per data-term posterior and per conversion
    chains: int  # persistent Gibbs chains of the model term
    gibbs_steps: int  # sweeps of the chains per update
    finetune_steps: int  # per direction
    finetune_lr: float
    log_every: int
    checkpoint_every: int


@dataclass(frozen=True)
class Standardised:
    """Train-split pairs in standard units, and the statistics to undo it."""

    x: torch.Tensor
    y: torch.Tensor
    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor

    def record(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k).cpu() for k in ("x_mean", "x_std", "y_mean", "y_std")}


def standardise(pairs: Path, device: Any) -> Standardised:
    rows = training.load_split(pairs, "train", ["lip", "mcep"])
    x = torch.from_numpy(rows["lip"].astype(np.float32))
    y = torch.from_numpy(rows["mcep"].astype(np.float32))
    x_mean, x_std, y_mean, y_std = x.mean(0), x.std(0) + 1e-6, y.mean(0), y.std(0) + 1e-6
    return Standardised(
        ((x - x_mean) / x_std).to(device), ((y - y_mean) / y_std).to(device),
        x_mean, x_std, y_mean, y_std,
    )  # fmt: skip


def check(params: Params, rows: int) -> None:
    for key in ("pretrain_steps", "joint_steps", "finetune_steps", "mean_field_iterations",
                "chains", "gibbs_steps", "log_every", "checkpoint_every", "batch"):  # fmt: skip
        if getattr(params, key) < 1:
            raise StageError(f"params.yaml: {STAGE}.{key}", "must be at least 1")
    if len(params.hidden) != 2 or min(params.hidden) < 1:
        raise StageError(f"params.yaml: {STAGE}.hidden", "two hidden layer widths, as the paper")
    if params.batch > rows:
        raise StageError(f"params.yaml: {STAGE}.batch", f"larger than the train split ({rows})")
    for key in ("pretrain_lr", "joint_lr", "finetune_lr"):
        if not 0 < getattr(params, key) < 1:
            raise StageError(f"params.yaml: {STAGE}.{key}", "must be in (0, 1)")


class Models:
    """Everything the phases train, built up as they go; a state dict of all of it resumes."""

    def __init__(self, x_dims: int, y_dims: int, hidden: tuple[int, int]) -> None:
        self.x_rbm = GaussianRBM(x_dims, hidden[0])
        self.y_rbm = GaussianRBM(y_dims, hidden[1])
        self.middle = RelationalRBM(*hidden)
        self.drm: GGDRM | None = None
        self.nets: dict[str, FeedForward] = {}

    def modules(self) -> dict[str, nn.Module]:
        out: dict[str, nn.Module] = {
            "x_rbm": self.x_rbm,
            "y_rbm": self.y_rbm,
            "middle": self.middle,
        }
        if self.drm is not None:
            out["drm"] = self.drm
        return out | {f"net_{k}": v for k, v in self.nets.items()}


def generator_for(seed: int, phase: str, step: int, device: Any) -> torch.Generator:
    """The sampling noise of one step: a function of the step, so a resume replays it."""
    seed_of_step = int(rng(seed, f"ggdrm-{phase}", step).integers(2**62))
    return torch.Generator(device=device).manual_seed(seed_of_step)


def phase_step(
    params: Params, phase: str, models: Models, data: Standardised, chains: list[torch.Tensor]
) -> Callable[[np.ndarray, torch.Generator], tuple[torch.Tensor, dict[str, float]]]:
    """The loss of one step of `phase` on a batch (row indices), and what to log beside it."""
    m = models

    def pretrain_x(rows: np.ndarray, g: torch.Generator) -> tuple[torch.Tensor, dict]:
        x = data.x[rows]
        with torch.no_grad():
            rebuilt = m.x_rbm.visible_bias + m.x_rbm.hidden_probability(x) @ m.x_rbm.weight.T
        return m.x_rbm.cd_loss(x, g), {"pretrain/x_reconstruction_mse": _mse(rebuilt, x)}

    def pretrain_y(rows: np.ndarray, g: torch.Generator) -> tuple[torch.Tensor, dict]:
        y = data.y[rows]
        with torch.no_grad():
            rebuilt = m.y_rbm.visible_bias + m.y_rbm.hidden_probability(y) @ m.y_rbm.weight.T
        return m.y_rbm.cd_loss(y, g), {"pretrain/y_reconstruction_mse": _mse(rebuilt, y)}

    def pretrain_middle(rows: np.ndarray, g: torch.Generator) -> tuple[torch.Tensor, dict]:
        with torch.no_grad():
            h1 = m.x_rbm.hidden_probability(data.x[rows])
            h2 = m.y_rbm.hidden_probability(data.y[rows])
            predicted = torch.sigmoid(m.middle.upper_bias + h1 @ m.middle.weight)
        return m.middle.cd_loss(h1, h2, g), {"pretrain/h2_from_h1_mse": _mse(predicted, h2)}

    def joint(rows: np.ndarray, g: torch.Generator) -> tuple[torch.Tensor, dict]:
        assert m.drm is not None
        x, y = data.x[rows], data.y[rows]
        with torch.no_grad():
            hidden, _, _ = m.drm.mean_field(x, y, params.mean_field_iterations)
            chains[:] = m.drm.gibbs(chains, params.gibbs_steps, g)
            converted = m.drm.convert(x, "x2y", params.mean_field_iterations)
        return m.drm.energy_gap((x, hidden, y), chains), {"joint/x2y_mse": _mse(converted, y)}

    def finetune(direction: str) -> Callable:
        def step(rows: np.ndarray, g: torch.Generator) -> tuple[torch.Tensor, dict]:
            given, wanted = (data.x, data.y) if direction == "x2y" else (data.y, data.x)
            loss = nn.functional.mse_loss(m.nets[direction](given[rows]), wanted[rows])
            return loss, {f"finetune/{direction}_mse": loss.item()}

        return step

    steps = {"pretrain_x": pretrain_x, "pretrain_y": pretrain_y,
             "pretrain_middle": pretrain_middle, "joint": joint,
             "finetune_x2y": finetune("x2y"), "finetune_y2x": finetune("y2x")}  # fmt: skip
    return steps[phase]


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean())


def enter_phase(phase: str, models: Models) -> None:
    """Build what a phase trains from the phases before it (the stacked model, the unrolled
    nets)."""
    if phase == "joint" and models.drm is None:
        models.drm = stack(models.x_rbm, models.y_rbm, [models.middle])
    if phase.startswith("finetune"):
        direction = phase.split("_")[1]
        if direction not in models.nets:
            assert models.drm is not None
            models.nets[direction] = unroll(models.drm, direction)


def initial_chains(
    models: Models, data: Standardised, params: Params, device: Any
) -> list[torch.Tensor]:
    """The joint phase's persistent chains start at training frames, their hidden layers drawn
    from the mean-field posterior."""
    assert models.drm is not None
    rows = training.batch_indices(params.seed, "ggdrm-chains", 0, len(data.x), params.chains)
    x, y = data.x[rows], data.y[rows]
    g = generator_for(params.seed, "chains", 0, device)
    with torch.no_grad():
        hidden, _, _ = models.drm.mean_field(x, y, params.mean_field_iterations)
        sampled = [torch.bernoulli(h, generator=g) for h in hidden]
    return [x.clone(), *sampled, y.clone()]


def lr_of(params: Params, phase: str) -> float:
    if phase.startswith("pretrain"):
        return params.pretrain_lr
    return params.joint_lr if phase == "joint" else params.finetune_lr


def steps_of(params: Params, phase: str) -> int:
    if phase.startswith("pretrain"):
        return params.pretrain_steps
    return params.joint_steps if phase == "joint" else params.finetune_steps


def trained_part(models: Models, phase: str) -> nn.Module:
    parts = {"pretrain_x": models.x_rbm, "pretrain_y": models.y_rbm,
             "pretrain_middle": models.middle, "joint": models.drm}  # fmt: skip
    return parts.get(phase) or models.nets[phase.split("_")[1]]


def train(params: Params) -> dict[str, Any]:
    device, device_info = training.prepare_torch(params.seed, params.device, params.threads, STAGE)
    data = standardise(params.pairs, device)
    check(params, len(data.x))
    models = Models(data.x.shape[1], data.y.shape[1], params.hidden)
    source = training.provenance(params, MODULE, [params.pairs])
    total = sum(steps_of(params, p) for p in PHASES)

    done, chains = 0, []
    resume = training.load_resume(params.checkpoint, source.fingerprint)
    if resume is not None:
        done = int(resume["step"])
        for phase in PHASES[: int(resume["phase"]) + 1]:  # rebuild the parts, then the weights
            enter_phase(phase, models)
        for name, module in models.modules().items():
            training.load_state(params.checkpoint, module, resume["modules"][name])
        chains = [c.to(device) for c in resume["chains"]]
    for module in models.modules().values():
        module.to(device)
    live = training.open_live(params.live, done or None)

    started, global_step = time.perf_counter(), 0
    bar = progress(range(total - done), desc=STAGE, total=total - done, unit="step")
    for index, phase in enumerate(PHASES):
        phase_steps = steps_of(params, phase)
        if global_step + phase_steps <= done:
            global_step += phase_steps
            continue
        enter_phase(phase, models)
        for module in models.modules().values():
            module.to(device)
        if phase == "joint" and not chains:
            chains = initial_chains(models, data, params, device)
        part = trained_part(models, phase)
        optimiser = torch.optim.Adam(part.parameters(), lr_of(params, phase))
        first = done - global_step if done > global_step else 0
        if first and resume is not None and resume.get("optimiser") is not None:
            optimiser.load_state_dict(resume["optimiser"])
        step_fn = phase_step(params, phase, models, data, chains)
        # values since the last logged step (a resume brings them back: the mean is the same)
        logged: dict[str, list[float]] = resume.get("logged", {}) if first and resume else {}
        for step in range(first, phase_steps):
            rows = training.batch_indices(params.seed, f"ggdrm-{phase}", step, len(data.x),
                                          params.batch)  # fmt: skip
            noise = generator_for(params.seed, phase, step, device)
            loss, extra = step_fn(torch.from_numpy(rows).to(device), noise)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            for k, v in extra.items():
                logged.setdefault(k, []).append(v)
            now = global_step + step + 1
            bar.update(1)
            if now % params.log_every == 0:
                live.step = now
                for k, v in logged.items():
                    live.log_metric(k, float(np.mean(v)))
                live.make_summary()
                logged = {}
            if (step + 1) % params.checkpoint_every == 0 or step + 1 == phase_steps:
                at_end = step + 1 == phase_steps
                training.save_resume(params.checkpoint, {
                    "fingerprint": source.fingerprint, "step": now, "phase": index,
                    "modules": {k: v.state_dict() for k, v in models.modules().items()},
                    "optimiser": None if at_end else optimiser.state_dict(),
                    "chains": [c.cpu() for c in chains], "logged": logged,
                })  # fmt: skip
        global_step += phase_steps
    bar.close()
    seconds = time.perf_counter() - started
    assert models.drm is not None
    record = training.model_record(
        models.drm.state_dict(), models.drm.config, total, source,
        finetuned={f"{d}.{k}": v.cpu() for d, net in models.nets.items()
                   for k, v in net.state_dict().items()},
        standardisation=data.record(), **device_info,
    )  # fmt: skip
    training.save_model(params.model, record)
    live.end()
    return {"train_seconds": round(seconds, 2), "resumed_at": done, **device_info}


def main(params: Params) -> dict[str, Any]:
    """Pre-train, jointly train and fine-tune the GGDRM on the train split's pairs."""
    return train(params)


if __name__ == "__main__":
    run_stage(STAGE, Params, main)
