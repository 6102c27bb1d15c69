"""Stage `mcn_train`: MCN on the tri-modal features, in one step or in the seed's two-step orders.

    python -m stages.mcn.train [--params FILE] [--set order=AV-T --set seed=1]

`order` names the study's variant (seed 004): `AVT` trains all three modalities at once (the
original MCN); `AV-T`, `AT-V`, `VT-A` train the first two for `first_steps`, then freeze them and
add the third for `second_steps` (the one-step run trains `first_steps + second_steps`, so every
variant gets the same number of updates). `dvc.yaml` runs every (order, seed) as a matrix stage.

A step: a batch of training clips drawn from (seed, phase, step); each active modality embedded
(`stages/mcn/model.py`; the DaveNet branch learns from the log-mel windows); the masked margin
softmax over every pair of active modalities, plus `cluster_weight` x the cluster loss against
online cosine k-means centroids of the fused embeddings (a FIFO queue of `queue_batches` batches,
refit from the previous centroids every `refit_every` steps), plus `reconstruction_weight` x the
reconstruction errors. Adam with linear warm-up and cosine decay to 0 within each phase. Frozen
branches run in eval mode without gradients: the second phase changes none of their parameters
or statistics (tested).

Outputs: `models/mcn/<order>-seed<seed>.pt` (weights, config, order, input hashes, code digest);
DVCLive curves per run; resume state every `checkpoint_every` steps (`checkpoints/mcn/<run>.pt`:
the model, the current phase's optimiser, schedule, k-means queue and centroids), so an
interrupted run continues where it stopped, to the same bytes on the CPU.

On several GPUs of one host, the same stage under torchrun is data parallel (`stages/common/ddp.py`:
each process embeds its slice of every global batch, the losses see the whole batch, gradients are
averaged by DistributedDataParallel), with the params file's batch, steps and schedule:

    torchrun --nproc_per_node 2 -m stages.mcn.train --set order=AVT --set seed=0
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from stages.common import ddp, training
from stages.common.cli import run_stage
from stages.common.errors import StageError
from stages.common.progress import progress
from stages.common.seeding import rng
from stages.mcn import clipdata
from stages.mcn.model import MCN, MODALITIES, Config, cluster_loss, contrastive, spherical_kmeans

STAGE = "mcn_train"
MODULE = "stages.mcn.train"
LETTERS = {"V": "video", "A": "audio", "T": "text"}
ORDERS = ("AVT", "AV-T", "AT-V", "VT-A")


@dataclass(frozen=True)
class ModelParams:
    embed_dim: int
    davenet_widths: tuple[int, int, int, int]
    reconstruction_hidden: int


@dataclass(frozen=True)
class Params:
    seed: int
    order: str  # AVT (one step) or AV-T / AT-V / VT-A (two steps)
    features: clipdata.FeatureDirs  # the three feature stages' folders
    corpus: str  # the training corpus's name in the feature tables
    audio_window: int  # log-mel frames per clip window (the windows-<W> table)
    audio_crop: int  # frames of each window DaveNet sees (the clips' longest span; cost ~ it)
    models: Path  # folder of the model files, one per (order, seed)
    checkpoints: Path  # folder of the resume states, one per (order, seed)
    live: Path  # folder of the DVCLive directories, one per (order, seed)
    device: str
    threads: int
    model_config: ModelParams
    batch: int  # clips per step
    first_steps: int
    second_steps: int
    lr: float
    warmup_steps: int  # per phase
    margin: float  # of the margin softmax and the cluster loss
    clusters: int
    queue_batches: int  # batches of fused embeddings the k-means queue holds
    refit_every: int  # steps between k-means refits
    kmeans_iterations: int
    cluster_weight: float
    reconstruction_weight: float
    log_every: int
    checkpoint_every: int  # steps between resume states (counted over both phases)


def run_name(order: str, seed: int) -> str:
    return f"{order}-seed{seed}"


def phases(order: str, first: int, second: int) -> list[tuple[list[str], list[str], int]]:
    """(trained modalities, frozen modalities, steps) per phase of an order."""
    if order == "AVT":
        return [(list(MODALITIES), [], first + second)]
    pair, added = order.split("-")
    trained = [LETTERS[c] for c in pair]
    return [(trained, [], first), ([LETTERS[added]], trained, second)]


def check(params: Params, rows: int) -> None:
    if params.order not in ORDERS:
        raise StageError(f"params.yaml: {STAGE}.order", f"one of {', '.join(ORDERS)}")
    for key in ("batch", "first_steps", "second_steps", "clusters", "queue_batches",
                "refit_every", "kmeans_iterations", "log_every", "checkpoint_every"):  # fmt: skip
        if getattr(params, key) < 1:
            raise StageError(f"params.yaml: {STAGE}.{key}", "must be at least 1")
    if params.batch > rows:
        raise StageError(f"params.yaml: {STAGE}.batch", f"larger than the {rows} training clips")
    if params.clusters > params.batch * params.queue_batches:
        raise StageError(f"params.yaml: {STAGE}.clusters", "more clusters than queued embeddings")
    if not 16 <= params.audio_crop <= params.audio_window:
        raise StageError(f"params.yaml: {STAGE}.audio_crop", "16 to audio_window frames")
    if not 0 < params.lr < 1 or params.warmup_steps < 0:
        raise StageError(f"params.yaml: {STAGE}.lr", "lr in (0, 1), warmup_steps >= 0")


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1 over `warmup` steps, then half a cosine down to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress_ = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(progress_, 1.0)))


def to_batch(clips: clipdata.Clips, audio_crop: int, device: Any) -> dict[str, torch.Tensor]:
    """Torch tensors of a batch, each log-mel window cut to its first `audio_crop` frames."""
    return {
        "video": torch.from_numpy(clips.video).to(device),
        "audio": torch.from_numpy(clips.audio[:, :, :audio_crop].astype(np.float32)).to(device),
        "audio_frames": torch.from_numpy(np.minimum(clips.audio_frames, audio_crop)).to(device),
        "words": torch.from_numpy(clips.words).to(device),
    }


def same_video_mask(videos: np.ndarray, device: Any) -> torch.Tensor:
    return torch.from_numpy(videos[:, None] == videos[None, :]).to(device)


class ActiveBranches(torch.nn.Module):
    """One phase's forward pass as a module DistributedDataParallel can wrap: each active
    modality's (embedding, branch input), the frozen ones without gradients."""

    def __init__(self, model: MCN, trained: list[str], frozen: list[str]) -> None:
        super().__init__()
        self.model, self.trained, self.frozen = model, trained, frozen

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, ...]]:
        embedded = {}
        for m in self.frozen + self.trained:
            if m in self.frozen:
                with torch.no_grad():
                    embedded[m] = self.model.embed(m, inputs)
            else:
                embedded[m] = self.model.embed(m, inputs)
        return embedded


def train(params: Params) -> dict[str, Any]:
    device, device_info = training.prepare_torch(params.seed, params.device, params.threads, STAGE)
    world, device = ddp.join(device)
    world.check_batch(params.batch, f"{STAGE}.batch")
    try:
        return train_in(params, world, device, device_info)
    finally:
        ddp.leave(world)


def train_in(
    params: Params, world: ddp.World, device: Any, device_info: dict[str, str]
) -> dict[str, Any]:
    """The training of one process of `world` (a world of one under `dvc repro`)."""
    corpus = clipdata.load(params.features, params.corpus, params.audio_window)
    clips = corpus.take(clipdata.trainable(corpus))
    check(params, len(clips))
    config = Config(
        video_dim=clips.video.shape[1], word_dim=clips.words.shape[2], n_mels=clips.audio.shape[1],
        **dataclasses.asdict(params.model_config),
    )  # fmt: skip
    model = MCN(config)
    model.set_input_statistics(torch.from_numpy(clips.video), torch.from_numpy(clips.words))
    model.to(device)
    on_gpu = device.type == "cuda"
    if on_gpu:  # bf16 autocast; cuDNN's bf16 kernels want NHWC; TF32 for the fp32 k-means
        model.davenet.to(memory_format=torch.channels_last)
        torch.backends.cuda.matmul.allow_tf32 = True

    def autocast() -> torch.autocast:
        return torch.autocast(device.type, torch.bfloat16, enabled=on_gpu)

    name = run_name(params.order, params.seed)
    inputs = [params.features.video, params.features.audio, params.features.text]
    source = training.provenance(params, MODULE, inputs)
    plan = phases(params.order, params.first_steps, params.second_steps)
    total = sum(steps for _, _, steps in plan)
    checkpoint = params.checkpoints / f"{name}.pt"
    resume = training.load_resume(checkpoint, source.fingerprint)
    start = resume["step"] if resume is not None and resume["step"] <= total else 0
    if start:
        training.load_state(checkpoint, model, resume["model"])
    live = training.open_live(params.live / name, start or None) if world.main else None

    started, global_step = time.perf_counter(), 0
    for index, (trained, frozen, steps) in enumerate(plan):
        offset = global_step
        if offset + steps <= start:  # a phase the interrupted run finished
            global_step += steps
            continue
        for m in MODALITIES:
            for module in model.branch(m):
                module.train(m in trained)
                module.requires_grad_(m in trained)
        branches = ddp.wrap(ActiveBranches(model, trained, frozen), world, device)
        parameters = [p for m in trained for mod in model.branch(m) for p in mod.parameters()]
        optimiser = torch.optim.Adam(parameters, params.lr, fused=True if on_gpu else None)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda s, total=steps: lr_factor(s, params.warmup_steps, total)
        )
        queue: list[torch.Tensor] = []
        centroids: torch.Tensor | None = None
        first = max(0, start - offset)
        if first:  # resuming inside this phase: its optimiser, schedule, queue and centroids
            optimiser.load_state_dict(resume["optimiser"])
            schedule.load_state_dict(resume["schedule"])
            queue = [q.to(device) for q in resume["queue"]]
            centroids = resume["centroids"].to(device) if resume["centroids"].numel() else None
        for step in progress(
            range(first, steps), desc=f"{STAGE} {name} phase {index + 1}", unit="step",
            total=steps - first,
        ):  # fmt: skip
            rows = training.batch_indices(params.seed, f"mcn-{params.order}-{index}", step,
                                          len(clips), params.batch)  # fmt: skip
            inputs = to_batch(clips.take(world.share(rows)), params.audio_crop, device)
            with autocast():
                embedded = branches(inputs)
                local = {m: e for m, (e, _) in embedded.items()}
                embeddings = {m: ddp.gather(e, world) for m, e in local.items()}
                loss_pairs = contrastive(
                    embeddings, params.margin, same_video_mask(clips.videos[rows], device)
                )
                recon = torch.stack([
                    F.mse_loss(model.reconstruct[m](local[m]), embedded[m][1]) for m in trained
                ]).mean()  # fmt: skip
                fused = torch.stack(list(embeddings.values())).mean(0).detach()
            # the queue and k-means stay fp32: a bf16 running sum would blur the centroids
            queue = [*queue, fused.float()][-params.queue_batches :]
            if step % params.refit_every == 0 and len(queue) == params.queue_batches:
                queued = torch.cat(queue)
                if centroids is None:  # seeded first centroids: distinct queued embeddings
                    pick = rng(params.seed, "mcn-kmeans", index).permutation(len(queued))
                    centroids = queued[torch.from_numpy(pick[: params.clusters]).to(device)]
                centroids = spherical_kmeans(queued, centroids, params.kmeans_iterations)
                centroids = ddp.from_main(centroids, world)
            with autocast():
                loss_cluster = (
                    cluster_loss(
                        {m: embeddings[m] for m in trained}, fused, centroids, params.margin
                    )
                    if centroids is not None
                    else loss_pairs.new_zeros(())
                )
            loss = (
                loss_pairs
                + params.cluster_weight * loss_cluster
                + params.reconstruction_weight * recon
            )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            global_step = offset + step + 1
            if world.main and (global_step % params.checkpoint_every == 0 or global_step == total):
                training.save_resume(
                    checkpoint,
                    {
                        "fingerprint": source.fingerprint,
                        "step": global_step,
                        "model": model.state_dict(),
                        "optimiser": optimiser.state_dict(),
                        "schedule": schedule.state_dict(),
                        "queue": [q.cpu() for q in queue],
                        "centroids": torch.empty(0) if centroids is None else centroids.cpu(),
                    },
                )
            if global_step % params.log_every == 0:
                recon_all = ddp.mean(recon, world)  # every process takes part
                if world.main:
                    live.step = global_step
                    live.log_metric("train/contrastive", loss_pairs.item())
                    live.log_metric("train/cluster", loss_cluster.item())
                    live.log_metric("train/reconstruction", recon_all.item())
                    live.make_summary()
    seconds = time.perf_counter() - started
    record = training.model_record(
        model.state_dict(),
        config,
        global_step,
        source,
        order=params.order,
        audio_crop=params.audio_crop,
        processes=world.size,
        **device_info,
    )
    if world.main:
        training.save_model(params.models / f"{name}.pt", record)
        live.end()
    return {"run": name, "train_seconds": round(seconds, 2), "resumed_at": start,
            "clips_per_s": round((total - start) * params.batch / max(seconds, 1e-9), 1),
            "processes": world.size, **device_info}  # fmt: skip


def main(params: Params) -> dict[str, Any]:
    """Train MCN in one step or in a two-step modality order."""
    return train(params)


if __name__ == "__main__":
    run_stage(STAGE, Params, main)
