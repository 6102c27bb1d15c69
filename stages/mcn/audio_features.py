"""Audio features of the MCN/AVLnet front end: log-mel windows per clip, DaveNet embeddings.

Per video: the first audio stream to 16 kHz mono (PyAV), minus its mean, pre-emphasis 0.97, STFT
(n_fft 400 = 25 ms symmetric Hamming, hop 160 = 10 ms, centred), power, 40 mel bands from 20 Hz
(librosa's Slaney filters), dB relative to the file's maximum (floor -80 dB: librosa's top_db)
-> (40, T) at 100 frames/s. Per clip: frames int(100 s) .. int(100 e), cropped to the corpus's
`audio_window` and zero-padded after (as AVLnet pads), with the true length in `n_frames`;
stored float16 in the table `windows-<W>` (one table per window length, since array shapes are
fixed per table).

With `davenet_weights`, each window also goes through the residual DaveNet and the masked mean
(1024-d) is written to `embeddings`; without, the MCN training stage trains DaveNet itself.

A video without audio, or whose audio cannot be decoded, gets failure rows and clip rows with
status no_audio / corrupt, n_frames 0 and zero windows: never a silent skip (MSR-VTT lacks audio
for 32 of 1,000 test clips, and MCN's evaluation counts them as misses).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import torch

from stages.common import dataset
from stages.common.cli import run_stage
from stages.common.closure import code_digest
from stages.common.device import device_record, resolve_device
from stages.common.errors import StageError
from stages.common.media import MediaError, read_audio
from stages.mcn import corpus as mcn_corpus
from stages.mcn import shards
from stages.mcn.corpus import Corpus, Failures, Rows, Shard
from stages.mcn.davenet import EMBED_DIM, ResDavenet, load_davenet

log = logging.getLogger(__name__)

VERSION = "audio_features/v1"
SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms
HOP = 160  # 10 ms: 100 frames per second
N_MELS = 40
FMIN = 20.0
PREEMPHASIS = 0.97
TOP_DB = 80.0


@dataclass(frozen=True)
class Params:
    seed: int
    source: Path  # the folder holding every clip table and video of `corpora` (a DVC dependency)
    corpora: tuple[Corpus, ...]
    davenet_weights: Path | None  # ResDavenet state_dict; None = no embeddings written
    device: Literal["auto", "cpu", "cuda"]
    batch_size: int  # windows per DaveNet forward pass
    threads: int  # torch CPU threads for DaveNet: fixed, since CPU bytes depend on it
    videos_per_shard: int
    out: Path
    metrics: Path
    stats: Path


class Context(NamedTuple):
    record: dict[str, Any]
    device: str


# --- pure functions ---------------------------------------------------------------------------


@functools.cache
def _front_end() -> tuple[np.ndarray, np.ndarray]:
    import librosa
    import scipy.signal

    window = scipy.signal.windows.hamming(N_FFT, sym=True)  # AVLnet: scipy.signal.hamming
    mel = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN)
    return window, mel


def log_mel(wave: np.ndarray) -> np.ndarray:
    """16 kHz mono samples -> (40, 1 + len // 160) float32 log-mel, dB below the file's max."""
    import librosa
    from threadpoolctl import threadpool_limits

    window, mel = _front_end()
    y = wave.astype(np.float32) - wave.mean(dtype=np.float64).astype(np.float32)
    y = np.append(y[:1], y[1:] - PREEMPHASIS * y[:-1])
    stft = librosa.stft(y, n_fft=N_FFT, hop_length=HOP, win_length=N_FFT, window=window)
    # One BLAS thread: a multi-threaded product sums in another order, and the bytes would
    # depend on the process's thread count (Dask workers run with OMP_NUM_THREADS=1).
    with threadpool_limits(1, user_api="blas"):
        power = mel @ (np.abs(stft) ** 2)
    return librosa.power_to_db(power, ref=np.max, top_db=TOP_DB).astype(np.float32)


def clip_window(
    spec: np.ndarray, start: float, end: float, window: int
) -> tuple[np.ndarray, int, int]:
    """Frames int(100 start) .. int(100 end) cropped to `window`, zero-padded: (40, window).

    Returns the window, its first frame and the number of valid frames (0: span past the end).
    """
    per_second = SAMPLE_RATE // HOP
    first = min(int(start * per_second), spec.shape[1])
    stop = min(int(end * per_second), spec.shape[1], first + window)
    out = np.zeros((spec.shape[0], window), np.float32)
    out[:, : stop - first] = spec[:, first:stop]
    return out, first, stop - first


# --- the stage ----------------------------------------------------------------------------------


def windows_schema(window: int, context: Context) -> dataset.SampleSchema:
    return dataset.SampleSchema(
        name=f"mcn_features/audio_windows/v1/{window}",
        doc="Log-mel window per clip (40 x W at 100 frames/s, dB below the file max, zero-padded "
        "after n_frames valid frames).",
        columns=(
            *mcn_corpus.VIDEO_KEY,
            dataset.Column("clip", pa.int32(), "clip index within the video (by start time)"),
            dataset.Column("start", pa.float64(), "clip start, s"),
            dataset.Column("end", pa.float64(), "clip end, s"),
            dataset.Column("first_frame", pa.int32(), "first spectrogram frame (10 ms each)"),
            dataset.Column("n_frames", pa.int32(), "valid frames; the rest of the window is 0"),
            dataset.Column(
                "status", pa.string(), "ok, empty (span past the end), no_audio, corrupt, missing"
            ),
            dataset.ArrayColumn("window", "float16", (N_MELS, window), "log-mel, mel x frame"),
        ),
        metadata={
            **context.record,
            "sample_rate": SAMPLE_RATE,
            "n_fft": N_FFT,
            "hop": HOP,
            "n_mels": N_MELS,
            "fmin": FMIN,
            "preemphasis": PREEMPHASIS,
            "top_db": TOP_DB,
        },
    )


EMBEDDINGS_SCHEMA = dataset.SampleSchema(
    name="mcn_features/audio_embeddings/v1",
    doc="DaveNet embedding per clip: mean of the 1024-d outputs over the valid frames.",
    columns=(
        *mcn_corpus.VIDEO_KEY,
        dataset.Column("clip", pa.int32(), "clip index within the video"),
        dataset.Column("status", pa.string(), "as in the windows table; zeros unless ok"),
        dataset.ArrayColumn("embedding", "float32", (EMBED_DIM,), "masked mean over time"),
    ),
)
VIDEOS_SCHEMA = dataset.SampleSchema(
    name="mcn_features/audio_videos/v1",
    doc="One row per video: what was decoded.",
    columns=(
        *mcn_corpus.VIDEO_KEY,
        dataset.Column("status", pa.string(), "ok, no_audio, corrupt, missing"),
        dataset.Column("samples", pa.int64(), "16 kHz samples decoded"),
        dataset.Column("frames", pa.int32(), "spectrogram frames (100 per second)"),
    ),
)


def prepare(params: Params) -> Context:
    if not 1 <= params.batch_size <= 4096:
        raise StageError("params.yaml: audio_features.batch_size", "must be 1 to 4096")
    if not 1 <= params.threads <= 4 * len(os.sched_getaffinity(0)):
        raise StageError("params.yaml: audio_features.threads", "must be 1 to 4 per core")
    mcn_corpus.check_source(
        params.source, params.corpora, "audio_features", {"davenet_weights": params.davenet_weights}
    )
    for corpus in params.corpora:
        if corpus.audio_window < 16:
            raise StageError(f"params.yaml: corpora: {corpus.name}.audio_window", "must be >= 16")
    if params.davenet_weights is None:
        record = {"davenet": "none: embeddings not written (trained by the MCN stage)"}
    else:
        weights = mcn_corpus.weights_record(params.davenet_weights, params.seed, ResDavenet)
        record = {"davenet": weights}
    return Context(record, resolve_device(params.device, "audio_features.device"))


@functools.lru_cache(maxsize=1)
def davenet(weights: Path, device: str, threads: int) -> torch.nn.Module:
    torch.set_num_threads(threads)  # fixed, as for the video stage
    return load_davenet(weights).to(device)


def embed(
    windows: np.ndarray, n_frames: np.ndarray, weights: Path, device: str, batch: int, threads: int
) -> np.ndarray:
    model = davenet(weights, device, threads)
    out = []
    with torch.inference_mode():
        for lo in range(0, len(windows), batch):
            spec = torch.from_numpy(windows[lo : lo + batch].astype(np.float32)).to(device)
            frames = torch.from_numpy(n_frames[lo : lo + batch].astype(np.int64)).to(device)
            out.append(model.embed(spec, frames).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, EMBED_DIM), np.float32)


def shard_rows(shard: Shard) -> tuple[Rows, Rows, Failures]:
    """Clip windows (float16), video rows and failures of one shard."""
    window = shard.corpus.audio_window
    clips = Rows("video", "clip", "start", "end", "first_frame", "n_frames", "status", "window")
    videos = Rows("video", "status", "samples", "frames")
    failures = Failures()
    for video, path, video_clips in zip(shard.videos, shard.files, shard.clips, strict=True):
        spec, samples, status = np.zeros((N_MELS, 0), np.float32), 0, "ok"
        try:
            if path is None:
                raise MediaError(video, "no video file for this id", "missing")
            wave = read_audio(path, SAMPLE_RATE)
            samples, spec = len(wave), log_mel(wave)
        except MediaError as exc:
            status = exc.kind
            failures.add(video, -1, "error", exc.kind, f"{exc.problem}: clips get zero windows")
        videos.add(video, status, samples, spec.shape[1])
        for clip in video_clips:
            win, first, n = clip_window(spec, clip.start, clip.end, window)
            clip_status = status if status != "ok" or n > 0 else "empty"
            if clip_status == "empty":
                failures.add(video, clip.clip, "error", "empty", "clip starts after the audio ends")
            clips.add(
                video,
                clip.clip,
                clip.start,
                clip.end,
                first,
                n,
                clip_status,
                win.astype(np.float16),
            )
    return clips, videos, failures


def run_shard(params: Params, context: Context, shard: Shard) -> dict:
    """Compute one shard and write it atomically, unless an identical complete one exists."""
    window = shard.corpus.audio_window
    code = code_digest("stages.mcn.audio_features")
    digest = shards.fingerprint(VERSION, code, window, context, shard.inputs(), shard.file_inputs())
    if shards.is_complete(params.out, shard.key, digest):
        return {**shards.read_manifests(params.out, [shard.key])[0], "skipped": True}
    clips, videos, failures = shard_rows(shard)
    name = shard.corpus.name
    windows = windows_schema(window, context)
    videos_schema = replace(VIDEOS_SCHEMA, metadata=context.record)
    tables = {
        f"windows-{window}": (windows, clips.columns(name, windows)),
        "videos": (videos_schema, videos.columns(name, videos_schema)),
        "failures": (
            mcn_corpus.FAILURES_SCHEMA,
            failures.columns(name, mcn_corpus.FAILURES_SCHEMA),
        ),
    }
    if params.davenet_weights is not None:
        columns = tables[f"windows-{window}"][1]
        ok = np.array([s == "ok" for s in columns["status"]], bool)
        vectors = np.zeros((len(ok), EMBED_DIM), np.float32)
        if ok.any():
            vectors[ok] = embed(
                columns["window"][ok],
                np.array(columns["n_frames"])[ok],
                params.davenet_weights,
                context.device,
                params.batch_size,
                params.threads,
            )
        tables["embeddings"] = (
            replace(EMBEDDINGS_SCHEMA, metadata=context.record),
            {
                "corpus": columns["corpus"],
                "video": columns["video"],
                "clip": columns["clip"],
                "status": columns["status"],
                "embedding": vectors,
            },
        )
    record = {**context._asdict(), "clips": len(clips), "failures_by_kind": failures.by_kind()}
    return shards.write_shard(params.out, shard.key, digest, tables, record)


def finalize(params: Params, context: Context, manifests: list[dict], seconds: float) -> dict:
    """Remove what this run's shards do not list, write metrics and stats; the run's record."""
    summary = mcn_corpus.summarise(manifests)
    rows = summary["rows"]
    metrics = {
        "videos": rows.get("videos", 0),
        "clips": sum(n for table, n in rows.items() if table.startswith("windows-")),
        "failures": rows.get("failures", 0),
    }
    stats = {**summary, **context._asdict(), **device_record(context.device)}
    run = mcn_corpus.finish(params, manifests, metrics, stats)
    return {**summary, **run, "shard_seconds": round(seconds, 2)}


def main(params: Params) -> dict:
    """Log-mel windows (and DaveNet embeddings with weights) for every clip of every corpus."""
    run = mcn_corpus.run_local(sys.modules[__name__], params, "audio_features")
    log.info("%s rows, failures %s", run["rows"], run["failures_by_kind"])
    return run


if __name__ == "__main__":
    run_stage("audio_features", Params, main)
