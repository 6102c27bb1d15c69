"""The frame pipeline of `video_features`: decode in workers, batch across videos, embed.

Kept apart from the stage (no pyarrow, no params) so the GPU benchmark runs it as is.

Decoding runs in DataLoader worker processes, each holding at most `chunk` frames of one video
(decoded at the target size: never the whole video), while the main process batches frames of the
same size across videos into `batch_size` for the model, in channels_last (the frames' own NHWC
order; 14% faster than NCHW on CPU at 224 px, measured). On a GPU the model runs in bf16 autocast,
with uint8 frames copied from pinned memory and normalised on the GPU (4x less to copy than
float32). On CPU it runs fp32. Every batch is zero-padded to `batch_size` frames, so
on CPU the bytes do not depend on which frames share a batch, nor on the worker count (tested).
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import select
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from stages.common.media import MediaError, iter_second_frames, probe_frames
from stages.mcn.resnet import FEATURE_DIM, IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)


# --- decoding (runs in worker processes) -------------------------------------------------------


class Chunk(NamedTuple):
    video: int  # index within the shard
    first_second: int
    frames: Any  # uint8 (n, h, w, 3): numpy in the worker, a tensor after the DataLoader
    status: str  # "frames", "done" (meta is set) or a failure kind
    message: str
    meta: tuple[int, int, float, int]  # source width, height, fps, frame count


NO_META = (0, 0, 0.0, 0)


def decode_video(index: int, path: str | None, short_side: int, chunk: int) -> Iterator[Chunk]:
    """Chunks of one video's 1-fps frames, then a `done` record; a failure as one record."""
    empty = np.zeros((0, 1, 1, 3), np.uint8)
    if path is None:
        yield Chunk(index, -1, empty, "missing", "no video file for this id", NO_META)
        return
    try:
        info = probe_frames(path)
        for first, frames in iter_second_frames(path, short_side, chunk, info):
            yield Chunk(index, first, frames, "frames", "", NO_META)
    except MediaError as exc:
        yield Chunk(index, -1, empty, exc.kind, exc.problem, NO_META)
        return
    yield Chunk(index, -1, empty, "done", "", (info.width, info.height, info.fps, info.frames))


class FrameChunks(torch.utils.data.IterableDataset):
    """The shard's videos split over DataLoader workers (video i goes to worker i mod n)."""

    def __init__(self, files: tuple[str | None, ...], short_side: int, chunk: int) -> None:
        self.files, self.short_side, self.chunk = files, short_side, chunk

    def __iter__(self) -> Iterator[Chunk]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for i in range(worker, len(self.files), workers):
            yield from decode_video(i, self.files[i], self.short_side, self.chunk)


def exit_with(owner: int, worker_id: int) -> None:
    """DataLoader worker init: end this worker as soon as process `owner` ends, however it ends.

    A forkserver worker is a child of the fork server, not of the loader's process, so torch's
    watchdog (which polls the worker's parent) never sees a SIGKILLed owner; and the worker holds
    the fork server's "alive" pipe, so the server stays too, and with both the resource tracker:
    three orphans. A pidfd of the owner becomes readable when the owner exits; a daemon thread
    waits on it and ends the worker, after which the server and the tracker exit on their own.
    """
    try:
        owner_fd = os.pidfd_open(owner)
    except ProcessLookupError:  # already gone
        os._exit(1)

    def wait() -> None:
        select.select([owner_fd], [], [])
        os._exit(1)

    threading.Thread(target=wait, name="exit-with-owner", daemon=True).start()


def chunk_loader(
    files: tuple[str | None, ...], short_side: int, chunk: int, workers: int, pin: bool
) -> torch.utils.data.DataLoader:
    if workers and multiprocessing.current_process().daemon:
        log.warning(
            "daemonic process (a Dask worker?): decoding in-process, not in %d workers", workers
        )
        workers = 0
    return torch.utils.data.DataLoader(
        FrameChunks(files, short_side, chunk),
        batch_size=None,
        num_workers=workers,
        pin_memory=pin,
        prefetch_factor=4 if workers else None,
        # Not fork: the shard function also runs inside Prefect and Dask workers, whose threads a
        # forked decoder inherits in whatever state they were (workers then die at exit).
        multiprocessing_context="forkserver" if workers else None,
        worker_init_fn=functools.partial(exit_with, os.getpid()) if workers else None,
        # On GPU take whichever chunk is ready (no head-of-line wait on a slow video); on CPU keep
        # the worker round-robin so the run is reproducible.
        in_order=not pin,
    )


# --- the model side ---------------------------------------------------------------------------


class FrameModel:
    """ResNet-152 features of uint8 frames: normalise on the device, channels_last, bf16 on GPU."""

    def __init__(self, model: torch.nn.Module, device: str) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.model = model.to(self.device, memory_format=torch.channels_last)
        if self.cuda:
            torch.backends.cudnn.benchmark = True  # few distinct frame sizes: tune once each
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(shape) * 255
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(shape) * 255

    def upload(self, parts: list[torch.Tensor], pad_to: int) -> torch.Tensor:
        """Concatenate uint8 frame parts on the device, zero-padded to `pad_to` frames.

        Every forward pass then has one shape per frame size. On CPU that is what makes the
        output reproducible: the convolution kernels are chosen by shape, and a frame's features
        depend on the batch size but not on the other frames in the batch (tested), so the
        bytes do not depend on how frames of different videos share batches (nor on the worker
        count). On GPU it spares a second of cuDNN autotuning for every new tail size.
        The parts come from the DataLoader's pinned memory, so GPU copies are asynchronous.
        """
        frames = [p.to(self.device, non_blocking=True) for p in parts]
        missing = pad_to - sum(len(f) for f in frames)
        if missing > 0:
            frames.append(frames[0].new_zeros((missing, *frames[0].shape[1:])))
        return torch.cat(frames)

    @torch.inference_mode()
    def __call__(self, parts: list[torch.Tensor], pad_to: int = 0) -> torch.Tensor:
        """uint8 frame parts (n_i, h, w, 3) -> L2-normalised float16 (sum n_i, 2048), on device."""
        n = sum(len(p) for p in parts)
        x = self.upload(parts, pad_to).permute(0, 3, 1, 2).float()
        x = (x - self.mean) / self.std  # = (x/255 - mean)/std with the 255 folded in
        x = x.contiguous(memory_format=torch.channels_last)  # a no-op: NHWC frames permuted
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
            y = self.model.features(x)
        return torch.nn.functional.normalize(y[:n].float(), dim=1).half()


@dataclass
class Extracted:
    """Per video of a shard: (T, 2048) float16 features or None, and what happened."""

    features: list[np.ndarray | None]
    meta: list[tuple[int, int, float, int]]
    status: list[str]
    message: list[str]


def extract(
    files: tuple[str | None, ...],
    frame_model: FrameModel,
    short_side: int,
    batch_size: int,
    chunk: int,
    workers: int,
) -> Extracted:
    """Decode (in workers) and embed every video of `files`, batching frames across videos."""
    n = len(files)
    parts: list[list[tuple[int, torch.Tensor]]] = [[] for _ in range(n)]
    result = Extracted([None] * n, [(0, 0, 0.0, 0)] * n, ["ok"] * n, [""] * n)
    pending: dict[tuple[int, ...], list[tuple[int, int, torch.Tensor]]] = {}

    def run(shape: tuple[int, ...], force: bool) -> None:
        queue = pending.get(shape, [])
        while queue and (force or sum(len(t) for *_, t in queue) >= batch_size):
            take, owners, used = [], [], 0
            while queue and used < batch_size:
                video, second, frames = queue.pop(0)
                k = min(batch_size - used, len(frames))
                take.append(frames[:k])
                owners.append((video, second, k))
                if k < len(frames):
                    queue.insert(0, (video, second + k, frames[k:]))
                used += k
            features = frame_model(take, pad_to=batch_size)
            lo = 0
            for video, second, k in owners:
                parts[video].append((second, features[lo : lo + k]))
                lo += k

    loader = chunk_loader(files, short_side, chunk, workers, frame_model.cuda)
    for item in loader:
        if item.status == "frames":
            shape = tuple(item.frames.shape[1:])
            pending.setdefault(shape, []).append((item.video, item.first_second, item.frames))
            run(shape, force=False)
        elif item.status == "done":
            result.meta[item.video] = tuple(
                float(m) if i == 2 else int(m) for i, m in enumerate(item.meta)
            )
        else:
            result.status[item.video], result.message[item.video] = item.status, item.message
    for shape in list(pending):
        run(shape, force=True)
    for v in range(n):
        if result.status[v] == "ok" and parts[v]:
            ordered = [f for _, f in sorted(parts[v], key=lambda p: p[0])]
            result.features[v] = torch.cat(ordered).cpu().numpy()
        elif result.status[v] == "ok":
            result.status[v], result.message[v] = "corrupt", "no frames decoded"
    return result


def pool_clip(features: np.ndarray, start: float, end: float) -> tuple[np.ndarray, int, int, bool]:
    """Max-pool seconds int(start) .. int(end) (inclusive) and L2-normalise (MCN's clip feature).

    Returns (2048,) float16, the first and one-past-last second used, and whether the span was
    empty (beyond the video's end): then the feature is zeros, flagged rather than hidden.
    """
    seconds = len(features)
    lo, hi = min(int(start), seconds), min(int(end) + 1, seconds)
    if hi <= lo:
        return np.zeros(FEATURE_DIM, np.float16), lo, lo, True
    pooled = features[lo:hi].astype(np.float32).max(axis=0)
    norm = np.linalg.norm(pooled)
    return (pooled / norm if norm > 0 else pooled).astype(np.float16), lo, hi, False
