"""MCN training throughput on one GPU: our recipe against the official recipe's settings (issue 15).

Both train the same model (`stages.mcn.model.MCN` at the published sizes of docs/mcn.md: D 6,144,
DaveNet 128/256/512/1024, reconstruction hidden 1,024) on the official batch shape, 128 videos x
32 clips = 4,096 clips, each a 2,048-d video feature (the project's format: pooled ResNet-152; the
official code concatenates 3-D features to 4,096-d, `--video-dim 4096`), a 40-mel window of 1,000
frames that DaveNet sees whole (their `--howto_audio_frames=1000`) and 20 word slots of 300-d.
Both take the same step, the AVT step of `stages.mcn.train` (params.yaml's `mcn_train` with the
paper-scale values of docs/mcn.md): margin softmax over the three pairs, the cluster loss against
online cosine k-means centroids of a 20-batch queue refit every 20 steps, reconstruction, Adam
1e-4 under the warm-up schedule. Only the recipe's choices differ:

- reference, the official recipe's settings (brian7685/Multimodal-Clustering-Network,
  `train_tri_kmeans.py` + `youtube_dataloader.py`): fp32 eager with PyTorch's defaults (cuDNN may
  use TF32 for the convolutions, matmuls stay fp32), `cudnn.benchmark` on as their script sets
  it; one `.npz` per video read by a shuffling DataLoader with a worker per core (their run used
  `--num_thread_reader=74`, every core of its node), no pinned memory, the batch copied to the GPU
  inside the step and the fp16 spectrograms made fp32 there. (Their published run used apex O1
  on 4 GPUs; the issue fixes the reference at fp32 on one GPU, args.py's `--apex_level 0`.)
- ours: the features resident on the GPU (spectrograms fp16), batches indexed there, bf16
  autocast, DaveNet in channels_last, fused Adam, TF32 for the fp32 k-means matmuls.

Their item does more than the reference's: it loads the whole video's 2-D/3-D features and
spectrogram, pools each clip and looks the caption up in word2vec; here a file holds its 32 clips
ready-made and sits in the page cache. The reference's data wait is thus a lower bound. The
reference draws videos with replacement, one DataLoader iterator per run: an epoch of HowTo100M
is ~9,000 steps, so their workers never restart inside a run either.

The step is restated here, not imported: in `stages.mcn.train` it is the body of `train()`'s loop,
between the feature tables, DVCLive and the model file. It is rebuilt line for line from the same
pieces (`MCN.embed`, `contrastive`, `cluster_loss`, `spherical_kmeans`, `lr_factor`, the masks of
`same_video_mask`). Two choices for the benchmark: the k-means queue starts full (random vectors,
centroids drawn from them) so every timed step is the steady state, and with `--steps 20` each run
holds exactly one refit; the queue and k-means stay fp32 in both recipes (a bf16 running sum
would blur the centroids). Under bf16 the margin (0.001) is below the scores' resolution.

Reported per run: clips/s over the timed steps; the share of step time waiting for data (fetch +
host-to-device copy, timed with the GPU synchronised around it); peak GPU memory (what the run
allocated above its start, plus ours' resident features). Runs alternate (reference, ours, ...)
and the JSON quotes medians. Features are synthetic, of the real shapes, made on the GPU machine.

    python benchmarks/mcn_train_gpu.py --out reports/mcn/train_gpu_benchmark.json

Needs a CUDA GPU; fails loudly without one.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, RandomSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.common.params import load_section
from stages.mcn.model import MCN, MODALITIES, Config, cluster_loss, contrastive, spherical_kmeans
from stages.mcn.train import ModelParams, Params, lr_factor, same_video_mask

Batch = tuple[dict[str, torch.Tensor], torch.Tensor]  # the model's inputs, the same-video mask
Fetch = Callable[[], Batch]
GIB = 2**30
RECIPE_KEYS = ("lr", "warmup_steps", "margin", "clusters", "queue_batches", "refit_every",
               "kmeans_iterations", "cluster_weight", "reconstruction_weight")  # fmt: skip


def paper_params(path: Path, batch: int) -> Params:
    """params.yaml's `mcn_train` with the published sizes docs/mcn.md lists for paper scale."""
    params = load_section(Params, "mcn_train", path)
    return dataclasses.replace(
        params,
        model_config=ModelParams(6144, (128, 256, 512, 1024), 1024),
        batch=batch,
        lr=1e-4,
        warmup_steps=5000,
        clusters=256,
        queue_batches=20,
        refit_every=20,
        audio_crop=params.audio_window,  # DaveNet sees the whole window, as theirs does
    )


def synthetic(
    videos: int, clips: int, config: Config, window: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Clips of the feature tables' shapes and dtypes (`stages.mcn.clipdata.Clips`), grouped by
    video: L2-normalised non-negative video features, fp16 log-mel windows zero-padded after
    500-1,000 valid frames, 1-20 word vectors zero-padded to 20 slots."""
    g = torch.Generator(device).manual_seed(0)
    n = videos * clips
    video = F.normalize(torch.randn(n, config.video_dim, device=device, generator=g).relu(), dim=1)
    frames = torch.randint(window // 2, window + 1, (n,), device=device, generator=g)
    audio = torch.randn(n, config.n_mels, window, device=device, generator=g, dtype=torch.float16)
    audio *= torch.arange(window, device=device) < frames[:, None, None]
    n_words = torch.randint(1, 21, (n,), device=device, generator=g)
    words = torch.randn(n, 20, config.word_dim, device=device, generator=g)
    words *= torch.arange(20, device=device)[None, :, None] < n_words[:, None, None]
    ids = torch.arange(videos, device=device).repeat_interleave(clips)
    return {"video": video, "audio": audio, "audio_frames": frames, "words": words, "videos": ids}


class VideoFiles(Dataset):
    """Their data path in miniature: one `.npz` per video, read whole per item."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        with np.load(self.files[index]) as item:
            return {key: torch.from_numpy(item[key]) for key in item.files}


def write_videos(data: dict[str, torch.Tensor], clips: int, folder: Path) -> list[Path]:
    host = {key: value.cpu().numpy() for key, value in data.items()}
    files = []
    for v in range(len(host["videos"]) // clips):
        rows = slice(v * clips, (v + 1) * clips)
        files.append(folder / f"{v}.npz")
        np.savez(files[-1], **{key: value[rows] for key, value in host.items()})
    return files


def reference_fetch(batches: Iterator[dict[str, torch.Tensor]], device: torch.device) -> Batch:
    """Their step's head: the collated (videos, clips, ...) batch flattened to clips and copied
    from pageable memory, spectrograms made fp32 on the GPU; the mask built on the host as the
    trainer builds it."""
    item = next(batches)
    inputs = {
        "video": item["video"].flatten(0, 1).to(device),
        "audio": item["audio"].flatten(0, 1).to(device).float(),
        "audio_frames": item["audio_frames"].flatten(0, 1).to(device),
        "words": item["words"].flatten(0, 1).to(device),
    }
    return inputs, same_video_mask(item["videos"].flatten().numpy(), device)


def resident_fetch(
    data: dict[str, torch.Tensor], videos: int, clips: int, seed: int
) -> Callable[[], Batch]:
    """Ours: `videos` random videos' clips gathered from the GPU-resident features."""
    device = data["video"].device
    g = torch.Generator(device).manual_seed(seed)
    offsets = torch.arange(clips, device=device)
    total = len(data["videos"]) // clips

    def fetch() -> Batch:
        chosen = torch.randperm(total, device=device, generator=g)[:videos]
        rows = (chosen[:, None] * clips + offsets).flatten()
        inputs = {key: data[key][rows] for key in ("video", "audio", "audio_frames", "words")}
        inputs["audio"] = inputs["audio"].float()  # as `to_batch` hands it over
        ids = data["videos"][rows]
        return inputs, ids[:, None] == ids[None, :]

    return fetch


def train_step(
    model: MCN,
    batch: Batch,
    optimiser: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    queue: list[torch.Tensor],
    centroids: torch.Tensor,
    step: int,
    params: Params,
    autocast: Callable[[], AbstractContextManager[object]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One AVT step of `stages.mcn.train.train` (all modalities trained); returns (centroids,
    loss). `queue` is updated in place."""
    inputs, same_video = batch
    with autocast():
        embedded = {m: model.embed(m, inputs) for m in MODALITIES}
        embeddings = {m: e for m, (e, _) in embedded.items()}
        loss_pairs = contrastive(embeddings, params.margin, same_video)
        recon = torch.stack([
            F.mse_loss(model.reconstruct[m](embeddings[m]), embedded[m][1]) for m in MODALITIES
        ]).mean()  # fmt: skip
        fused = torch.stack(list(embeddings.values())).mean(0).detach()
    queue.append(fused.float())
    del queue[: -params.queue_batches]
    if step % params.refit_every == 0:
        centroids = spherical_kmeans(torch.cat(queue), centroids, params.kmeans_iterations)
    with autocast():
        loss_cluster = cluster_loss(embeddings, fused, centroids, params.margin)
        loss = (
            loss_pairs + params.cluster_weight * loss_cluster + params.reconstruction_weight * recon
        )
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    schedule.step()
    return centroids, loss.detach()


def run(
    model: MCN,
    fetch: Fetch,
    steps: int,
    warmup: int,
    bf16: bool,
    params: Params,
    resident_bytes: int,
) -> dict[str, float]:
    """Train `warmup` + `steps` steps; time the last `steps`, and the data fetches within them."""
    device = next(model.parameters()).device
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start_bytes = torch.cuda.memory_allocated()
    # Their settings are PyTorch's defaults; ours adds channels_last (cuDNN's bf16 kernels want
    # NHWC), fused Adam and TF32 for the fp32 k-means matmuls.
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = bf16
    if bf16:
        model.davenet.to(memory_format=torch.channels_last)
    optimiser = torch.optim.Adam(model.parameters(), params.lr, fused=True if bf16 else None)
    total = warmup + steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: lr_factor(s, params.warmup_steps, total)
    )
    g = torch.Generator(device).manual_seed(0)
    size = (params.batch, params.model_config.embed_dim)
    queue = [torch.randn(size, device=device, generator=g) for _ in range(params.queue_batches)]
    pick = torch.randperm(params.batch * params.queue_batches, device=device, generator=g)
    centroids = torch.cat(queue)[pick[: params.clusters]]

    def autocast() -> AbstractContextManager[object]:
        return torch.autocast("cuda", torch.bfloat16, enabled=bf16)

    started, waiting = time.perf_counter(), 0.0
    for step in range(total):
        if step == warmup:
            torch.cuda.synchronize()
            started, waiting = time.perf_counter(), 0.0
        torch.cuda.synchronize()
        before = time.perf_counter()
        batch = fetch()
        torch.cuda.synchronize()
        waiting += time.perf_counter() - before
        centroids, loss = train_step(
            model, batch, optimiser, schedule, queue, centroids, step, params, autocast
        )
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() - start_bytes + resident_bytes
    return {
        "clips_per_s": steps * params.batch / seconds,
        "step_s": seconds / steps,
        "data_wait_share": waiting / seconds,
        "peak_memory_gib": peak / GIB,
        "final_loss": loss.item(),  # finite, or the run is void
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--videos", type=int, default=512, help="synthetic videos (x32 clips)")
    parser.add_argument("--batch-videos", type=int, default=128)
    parser.add_argument("--clips", type=int, default=32, help="clips per video")
    parser.add_argument("--video-dim", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("mcn_train_gpu: needs a CUDA GPU (run it on the GPU machine)")

    device = torch.device("cuda")
    params = paper_params(args.params, args.batch_videos * args.clips)
    config = Config(
        video_dim=args.video_dim, **dataclasses.asdict(params.model_config)
    )  # word_dim 300 and n_mels 40 are Config's defaults, the features' widths
    data = synthetic(args.videos, args.clips, config, params.audio_window, device)
    resident_bytes = sum(t.numel() * t.element_size() for t in data.values())

    def fresh_model(seed: int) -> MCN:
        torch.manual_seed(seed)
        model = MCN(config).to(device)
        model.set_input_statistics(data["video"], data["words"])
        return model

    results: dict[str, list[dict[str, float]]] = {"reference": [], "ours": []}
    with tempfile.TemporaryDirectory() as folder:
        files = write_videos(data, args.clips, Path(folder))
        started = time.perf_counter()
        for repeat in range(args.repeats):
            sampler = RandomSampler(
                files,
                replacement=True,
                num_samples=args.batch_videos * (args.warmup + args.steps),
                generator=torch.Generator().manual_seed(repeat),
            )
            loader = DataLoader(
                VideoFiles(files),
                batch_size=args.batch_videos,
                sampler=sampler,
                num_workers=args.workers,
                drop_last=True,
            )
            # a fresh iterator per run (workers start in the warm-up), ended with the run
            theirs = functools.partial(reference_fetch, iter(loader), device)
            results["reference"].append(
                run(fresh_model(repeat), theirs, args.steps, args.warmup, False, params, 0)
            )
            del theirs, loader
            print("reference", repeat, results["reference"][-1], flush=True)
            ours = resident_fetch(data, args.batch_videos, args.clips, repeat)
            results["ours"].append(
                run(
                    fresh_model(repeat), ours, args.steps, args.warmup, True, params, resident_bytes
                )
            )
            print("ours", repeat, results["ours"][-1], flush=True)
        wall = time.perf_counter() - started

    medians = {
        name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for name, runs in results.items()
    }
    speedup = medians["ours"]["clips_per_s"] / medians["reference"]["clips_per_s"]
    goals = {
        "speedup_at_least_2x": speedup >= 2.0,
        "ours_data_wait_under_10pct": medians["ours"]["data_wait_share"] < 0.10,
    }
    settings = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "reference_workers": args.workers,
        "videos_on_disk": args.videos,
        "batch": f"{args.batch_videos} videos x {args.clips} clips = {params.batch} clips",
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "benchmark_wall_s": wall,
        "resident_features_gib": resident_bytes / GIB,
        "config": dataclasses.asdict(config),
        "audio_frames": params.audio_crop,
        "params": {key: getattr(params, key) for key in RECIPE_KEYS},
        "reference_precision": "fp32 (PyTorch defaults: cuDNN TF32 on, matmul TF32 off)",
        "ours_precision": "bf16 autocast, DaveNet channels_last, fused Adam, TF32 k-means",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "median": {**medians, "speedup": speedup, "goals": goals},
        "settings": settings,
        "runs": results,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"{'':10} {'clips/s':>9} {'data wait':>10} {'peak GiB':>9}")
    for name, row in medians.items():
        print(
            f"{name:10} {row['clips_per_s']:9.0f} {row['data_wait_share']:10.1%} "
            f"{row['peak_memory_gib']:9.1f}"
        )
    print(f"speed-up {speedup:.2f}x on {settings['gpu']}")


if __name__ == "__main__":
    main()
