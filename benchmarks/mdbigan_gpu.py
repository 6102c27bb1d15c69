"""MDBiGAN training throughput on one GPU: our loop against the authors' recipe (issue 12).

Both train the same model (the paper-scale config of params-gpu.yaml) with the same step
(`stages.motionmnist.train.train_step`); only what the authors chose differs:

- reference, the authors' recipe (yumaloop/bidirectional_mocogan): batch 16 videos, fp32, eager;
  each video an int64 `.npy` file (their format, 655 KB), read by a shuffling DataLoader with
  their `np.load(...) / 255.` per item and no workers, then copied to the GPU;
- ours: the train split resident on the GPU as uint8 (`stages.common.training`), batches indexed
  there, bf16 autocast, batch `--batch` (params-gpu.yaml's).

Reported per run: videos/s over the timed steps, and the share of step time spent waiting for
data (fetch + host-to-device copy, timed with the GPU synchronised around it). Runs alternate
(reference, ours, ...) and the table quotes medians.

    python benchmarks/mdbigan_gpu.py --out reports/motionmnist/gpu_benchmark.json

Needs a CUDA GPU; fails loudly without one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.common import training
from stages.common.params import load_section
from stages.motionmnist.mdbigan import Config, MDBiGAN, init_weights, to_video
from stages.motionmnist.train import Params, train_step

Fetch = Callable[[], torch.Tensor]


def authors_loader(
    frames: np.ndarray, folder: Path, batch: int, seed: int
) -> Iterator[torch.Tensor]:
    """Their data path: one int64 .npy per video, np.load / 255. per item, DataLoader(shuffle)."""
    from torch.utils.data import DataLoader, Dataset

    for i, video in enumerate(frames):
        np.save(folder / f"{i}.npy", video.astype(np.int64))

    class Videos(Dataset):
        def __len__(self) -> int:
            return len(frames)

        def __getitem__(self, index: int) -> np.ndarray:
            video = np.load(folder / f"{index}.npy")[np.newaxis]
            return video / 255.0

    loader = DataLoader(
        Videos(),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    while True:
        yield from loader


def run(
    model: MDBiGAN,
    fetch: Fetch,
    steps: int,
    warmup: int,
    batch: int,
    bf16: bool,
    params: Params,
) -> dict[str, float]:
    """Train `warmup` + `steps` steps; time the last `steps`, and the data fetches within them."""
    opt_d = torch.optim.Adam(
        model.discriminator_parameters(), params.lr, (params.beta1, params.beta2)
    )
    opt_ge = torch.optim.Adam(model.generator_parameters(), params.lr, (params.beta1, params.beta2))
    generator = torch.Generator("cuda").manual_seed(0)

    def autocast() -> torch.autocast:
        return torch.autocast("cuda", torch.bfloat16, enabled=bf16)

    waiting = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            torch.cuda.synchronize()
            started, waiting = time.perf_counter(), 0.0
        torch.cuda.synchronize()
        before = time.perf_counter()
        x = fetch()
        torch.cuda.synchronize()
        waiting += time.perf_counter() - before
        train_step(
            model,
            x,
            opt_d,
            opt_ge,
            image_frames=params.image_frames,
            latent_regression=params.latent_regression,
            noise=0.0,
            generator=generator,
            autocast=autocast,
        )
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"videos_per_s": steps * batch / seconds, "data_wait_share": waiting / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/motionmnist"))
    parser.add_argument("--params", type=Path, default=Path("params-gpu.yaml"))
    parser.add_argument("--videos", type=int, default=4000, help="train videos written as .npy")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("mdbigan_gpu: needs a CUDA GPU (run it on the GPU machine)")

    params = load_section(Params, "mdbigan_train", args.params)
    frames = training.load_split(args.data, "train", ["frames"])["frames"]
    config = Config(
        frames=frames.shape[1], size=frames.shape[2], **dataclasses.asdict(params.model_config)
    )
    resident = torch.from_numpy(frames).cuda()
    order = np.random.default_rng(0)

    def ours() -> torch.Tensor:
        idx = torch.from_numpy(order.integers(0, len(resident), params.batch)).cuda()
        return to_video(resident[idx])

    results: dict[str, list[dict[str, float]]] = {"authors": [], "ours": []}
    with tempfile.TemporaryDirectory() as folder:
        theirs = authors_loader(frames[: args.videos], Path(folder), 16, 0)

        def authors() -> torch.Tensor:  # (B, 1, T, H, W) in [0, 1] float64 -> ours, fp32
            video = next(theirs).float().cuda()
            return (video * 2.0 - 1.0).transpose(1, 2).contiguous()

        for repeat in range(args.repeats):
            for name, fetch, batch, bf16 in (
                ("authors", authors, 16, False),
                ("ours", ours, params.batch, True),
            ):
                torch.manual_seed(repeat)
                torch.backends.cudnn.benchmark = name == "ours"  # as the stage sets it
                model = MDBiGAN(config)
                init_weights(model)
                results[name].append(
                    run(model.cuda(), fetch, args.steps, args.warmup, batch, bf16, params)
                )
                print(name, repeat, results[name][-1], flush=True)

    summary = {
        name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for name, runs in results.items()
    }
    summary["speedup"] = summary["ours"]["videos_per_s"] / summary["authors"]["videos_per_s"]
    summary["gpu"] = torch.cuda.get_device_name()
    summary["config"] = dataclasses.asdict(config) | {"batch": params.batch}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"median": summary, "runs": results}, indent=2) + "\n")
    print(f"{'':8} {'videos/s':>10} {'data wait':>10}")
    for name in ("authors", "ours"):
        print(
            f"{name:8} {summary[name]['videos_per_s']:10.1f} "
            f"{summary[name]['data_wait_share']:10.1%}"
        )
    print(f"speed-up {summary['speedup']:.2f}x on {summary['gpu']}")


if __name__ == "__main__":
    main()
