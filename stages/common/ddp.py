"""Data-parallel training over the processes torchrun starts (one per GPU), or a world of one.

`dvc repro` runs a stage as one process: `join` then returns a world of one and every helper here
is the identity, so nothing changes for it, bytes included. Under
`torchrun --nproc_per_node N -m stages.<area>.<module>` (RANK, WORLD_SIZE and LOCAL_RANK in the
environment) `join` opens the process group (NCCL on GPUs, Gloo on CPUs) and each process:

- takes its contiguous slice of every global batch (`World.share`), so the global batch, the
  learning rate and the step count stay those of the params file;
- runs its model wrapped by `wrap` (DistributedDataParallel: gradients averaged across processes;
  BatchNorm synchronised on GPUs, so its statistics are the global batch's);
- sees the whole global batch where a loss compares clips across it (`gather`, gradients flowing
  back to each slice's process).

Only the main process (rank 0) writes logs, checkpoints and the model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stages.common.errors import StageError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class World:
    rank: int
    size: int

    @property
    def main(self) -> bool:
        """The process that writes logs, checkpoints and the model."""
        return self.rank == 0

    def share(self, rows: Any) -> Any:
        """This process's contiguous slice of a global batch: the slices in rank order are the
        batch again, so gathered embeddings line up with the global rows."""
        per = len(rows) // self.size
        return rows[self.rank * per : (self.rank + 1) * per]

    def check_batch(self, batch: int, key: str) -> None:
        if batch % self.size:
            raise StageError(
                f"params.yaml: {key}", f"{batch} does not split over {self.size} processes"
            )


ONE = World(0, 1)


def join(device: torch.device) -> tuple[World, torch.device]:
    """The process group torchrun describes, and this process's device (its own GPU)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return ONE, device
    import torch
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size()), device


def leave(world: World) -> None:
    if world.size > 1:
        import torch.distributed as dist

        dist.destroy_process_group()


def wrap(module: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """`module` as DistributedDataParallel (its BatchNorm layers synchronised on GPUs; Gloo has
    no SyncBatchNorm, so on CPUs each process normalises its own slice)."""
    if world.size == 1:
        return module
    import torch
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return DistributedDataParallel(module, device_ids=[device.index])
    return DistributedDataParallel(module)


def gather(x: torch.Tensor, world: World) -> torch.Tensor:
    """The global batch of `x` (this process's rows first dimension), in rank order.

    Every process computes the same loss over it; the all-gather's backward sums each process's
    gradient into the slice's owner (W times the gradient of the one loss), and DDP's averaging
    over the W processes brings that back to the single-process gradient.
    """
    if world.size == 1:
        return x
    import torch
    import torch.distributed as dist

    if x.requires_grad:
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(x))
    parts = [torch.empty_like(x) for _ in range(world.size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def mean(x: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of a per-process value over the processes (for logging a local loss)."""
    if world.size == 1:
        return x
    import torch.distributed as dist

    x = x.detach().clone()
    dist.all_reduce(x)
    return x / world.size


def from_main(x: torch.Tensor, world: World) -> torch.Tensor:
    """Rank 0's `x` on every process: state each process computes alike (k-means centroids), kept
    identical even where a GPU kernel would differ in the last bit."""
    if world.size > 1:
        import torch.distributed as dist

        dist.broadcast(x, 0)
    return x
