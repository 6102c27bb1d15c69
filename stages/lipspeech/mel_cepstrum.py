"""mel_cepstrum: speech of every utterance -> 32 mel-cepstral coefficients per 5 ms frame.

Per utterance: decode the audio track (any rate, mono or stereo; channels are averaged), resample
to 12 kHz with soxr's very-high-quality anti-aliasing filter, cut centred Blackman-windowed frames
(frame k at time k * hop / rate) and run SPTK-style mel-cepstral analysis (`melcep`,
checked against `pysptk.sptk.mcep` on a sample of frames every run; the MCD is in the metrics).

Outputs (paths in params): `out` (schema `mcep_schema`), `metrics`, `stats` and `preview` (a test
utterance's spectrogram beside the spectrum rebuilt from its mel-cepstra).
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import soxr
from threadpoolctl import threadpool_limits

from stages.common import dataset, kernels
from stages.common.atomic import atomic_dir, write_json
from stages.common.cli import run_stage
from stages.common.errors import StageError
from stages.common.images import save_grid
from stages.common.media import AudioReader
from stages.common.workers import worker_count
from stages.lipspeech import corpus, melcep
from stages.lipspeech.colormap import spectrogram_image
from stages.lipspeech.corpus import Corpus
from stages.lipspeech.mcd import mcd_frames

log = logging.getLogger(__name__)

MAX_MCD_VS_PYSPTK = 0.05  # dB: the promised agreement with the reference implementation
AUDIO_SLACK = 0.05  # seconds an audio track may fall short of the table's duration


@dataclass(frozen=True)
class Analysis:
    sample_rate: int
    frame_length: int
    hop: int
    nfft: int
    window: Literal["blackman", "hamming", "hann"]
    order: int  # order 31 = 32 coefficients c0..c31
    alpha: float
    miniter: int
    maxiter: int
    threshold: float
    etype: int  # 1: add eps to the periodogram, so digital silence stays finite
    eps: float
    min_det: float

    @property
    def solver(self) -> dict:
        """SPTK's iteration settings, spelled as both our mcep and pysptk's take them."""
        return {
            "miniter": self.miniter,
            "maxiter": self.maxiter,
            "threshold": self.threshold,
            "etype": self.etype,
            "eps": self.eps,
            "min_det": self.min_det,
        }


@dataclass(frozen=True)
class Params:
    corpus: Corpus
    out: Path
    metrics: Path
    stats: Path
    preview: Path
    analysis: Analysis
    check_frames: int  # frames re-analysed with pysptk.sptk.mcep each run (0 = none)
    workers: int


def mcep_schema(a: Analysis) -> dataset.SampleSchema:
    return dataset.SampleSchema(
        name="lipspeech/mcep/v1",
        doc="Mel-cepstra of each utterance's speech, one row per analysis frame.",
        columns=(
            dataset.Column("utterance", pa.string(), "utterance id from the corpus table"),
            dataset.Column("split", pa.string(), "train or test"),
            dataset.Column("frame", pa.int32(), "analysis frame index k in the utterance"),
            dataset.Column("time", pa.float64(), "frame centre, seconds: k * hop / sample_rate"),
            dataset.ArrayColumn("mcep", "float32", (a.order + 1,), "mel-cepstrum c0..cM"),
        ),
        metadata={"analysis": a.__dict__},
    )


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """The whole audio track as float32 (samples, channels) at its own rate, and that rate."""
    with AudioReader(path) as reader:
        return reader.track().T, reader.rate


def speech_at(samples: np.ndarray, rate: int, target: int, path: Path) -> np.ndarray:
    """Mono float64 speech at `target` Hz from (n, channels) samples; NaNs are an error."""
    bad = ~np.isfinite(samples)
    if bad.any():
        first = int(np.argmax(bad.any(axis=1)))
        raise StageError(
            path, f"audio has {int(bad.sum())} NaN/inf samples (first at {first / rate:.3f} s)"
        )
    mono = samples.astype(np.float64).mean(axis=1)
    return mono if rate == target else soxr.resample(mono, rate, target, quality="VHQ")


def frames_of(signal: np.ndarray, a: Analysis) -> np.ndarray:
    """The windowed, zero-padded analysis frames (T, nfft) of a mono signal at a.sample_rate."""
    return melcep.frame_signal(signal, a.frame_length, a.hop, a.nfft, a.window)


def analyse(signal: np.ndarray, a: Analysis) -> np.ndarray:
    """Mel-cepstra (T, order+1) of a mono signal at a.sample_rate."""
    return melcep.mcep(frames_of(signal, a), a.order, a.alpha, **a.solver)


@dataclass(frozen=True)
class Result:
    entry: corpus.Entry
    mcep: np.ndarray
    input_rate: int
    channels: int


def process(job: tuple[corpus.Entry, Analysis]) -> Result:
    entry, a = job
    # One process per core already: threaded BLAS on these small products only adds contention.
    with threadpool_limits(1):
        return _process(entry, a)


def _process(entry: corpus.Entry, a: Analysis) -> Result:
    samples, rate = read_audio(entry.path)
    if len(samples) / rate < entry.duration - AUDIO_SLACK:
        raise StageError(
            entry.path,
            f"audio lasts {len(samples) / rate:.3f} s, the table says {entry.duration:.3f} s",
        )
    speech = speech_at(samples, rate, a.sample_rate, entry.path)
    try:
        mc = analyse(speech, a)
    except ValueError as exc:
        raise StageError(entry.path, f"mel-cepstral analysis failed: {exc}") from None
    return Result(entry, mc, rate, samples.shape[1])


def check_against_pysptk(results: list[Result], a: Analysis, count: int) -> dict:
    """Re-analyse `count` evenly spread frames with pysptk.sptk.mcep; MCD of ours against it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pysptk imports the deprecated pkg_resources
        import pysptk

    picked = []
    total = sum(len(r.mcep) for r in results)
    wanted = set(np.linspace(0, total - 1, min(count, total)).astype(int).tolist())
    offset = 0
    for r in results:
        local = [k - offset for k in sorted(wanted) if offset <= k < offset + len(r.mcep)]
        offset += len(r.mcep)
        if local:
            samples, rate = read_audio(r.entry.path)
            frames = frames_of(speech_at(samples, rate, a.sample_rate, r.entry.path), a)
            for k in local:
                try:
                    reference = pysptk.sptk.mcep(
                        frames[k], order=a.order, alpha=a.alpha, **a.solver
                    )
                except RuntimeError as exc:  # SPTK gives up where our solver flagged nothing
                    raise StageError(
                        f"{r.entry.path}: frame {k}",
                        f"pysptk.sptk.mcep failed with these analysis settings ({exc}); "
                        "check min_det, eps and etype",
                    ) from None
                picked.append((r.mcep[k], reference))
    ours, reference = (np.array(x) for x in zip(*picked, strict=True))
    distortion = mcd_frames(ours, reference)
    return {
        "frames": len(picked),
        "pysptk_version": pysptk.__version__,
        "mcd_db_mean": float(distortion.mean()),
        "mcd_db_max": float(distortion.max()),
        "max_abs_coefficient_difference": float(np.abs(ours - reference).max()),
    }


def preview(path: Path, result: Result, a: Analysis) -> None:
    """Spectrogram (dB) of one utterance beside the spectrum its mel-cepstra describe."""
    samples, rate = read_audio(result.entry.path)
    frames = frames_of(speech_at(samples, rate, a.sample_rate, result.entry.path), a)
    measured = 10 * np.log10(melcep.periodogram(frames, a.etype, a.eps))
    rebuilt = 20 / np.log(10) * melcep.log_amplitude(result.mcep, a.alpha, a.nfft)
    top = measured.max()
    tiles = [spectrogram_image(s, top - 80.0, top) for s in (measured, rebuilt)]
    save_grid(path, np.stack(tiles)[None])


def check_analysis(a: Analysis) -> None:
    """Every analysis setting in its range, named by its key, before any audio is decoded."""
    rules = {
        "sample_rate": (1000 <= a.sample_rate <= 192_000, "must be 1000 to 192000 Hz"),
        "nfft": (16 <= a.nfft <= 65_536, "must be 16 to 65536"),
        "frame_length": (0 < a.frame_length <= a.nfft, "must be in (0, nfft]"),
        "hop": (a.hop > 0, "must be > 0"),
        "order": (0 < a.order < a.nfft // 2, "must be in (0, nfft / 2)"),
        "alpha": (-1 < a.alpha < 1, "all-pass constant: must be in (-1, 1)"),
        "miniter": (a.miniter >= 1, "must be >= 1"),
        "maxiter": (a.maxiter >= a.miniter, "must be >= miniter"),
        "threshold": (a.threshold > 0, "must be > 0"),
        "min_det": (a.min_det >= 0, "must be >= 0"),
    }
    for key, (ok, rule) in rules.items():
        if not ok:
            raise StageError(
                f"params.yaml: mel_cepstrum.analysis.{key}", f"{rule}, got {getattr(a, key)}"
            )


def main(params: Params) -> dict:
    """Mel-cepstra of every utterance's speech, at 12 kHz, 5 ms frames, checked against pysptk."""
    a = params.analysis
    check_analysis(a)
    if params.check_frames < 0:
        raise StageError("params.yaml: mel_cepstrum.check_frames", "must be >= 0 (0 = no check)")
    try:
        melcep.operators(a.order, a.alpha, a.nfft)
        melcep.periodogram(np.zeros((1, a.nfft)), a.etype, a.eps)
    except ValueError as exc:
        raise StageError("params.yaml: mel_cepstrum.analysis", str(exc)) from None
    entries = corpus.read_corpus(params.corpus)
    started = time.perf_counter()
    workers = worker_count(params.workers, len(entries), "mel_cepstrum.workers")
    results = corpus.map_utterances(process, [(e, a) for e in entries], workers, "mcep")
    seconds = time.perf_counter() - started
    frames = sum(len(r.mcep) for r in results)
    check = check_against_pysptk(results, a, params.check_frames) if params.check_frames else None
    if check and check["mcd_db_max"] > MAX_MCD_VS_PYSPTK:
        raise StageError(
            params.corpus.table,
            f"mel-cepstra differ from pysptk.sptk.mcep by up to {check['mcd_db_max']:.4f} dB MCD "
            f"(allowed {MAX_MCD_VS_PYSPTK} dB): the analysis is broken, nothing was written",
        )
    schema = mcep_schema(a)
    with (
        atomic_dir(params.out) as tmp,
        dataset.ShardWriter(tmp, schema, shard_rows=200_000) as writer,
    ):
        for r in results:
            n = len(r.mcep)
            writer.write(
                {
                    "utterance": [r.entry.utterance] * n,
                    "split": [r.entry.split] * n,
                    "frame": np.arange(n, dtype=np.int32),
                    "time": np.arange(n) * a.hop / a.sample_rate,
                    "mcep": r.mcep.astype(np.float32),
                }
            )
    shown = next((r for r in results if r.entry.split == "test"), results[0])
    preview(params.preview, shown, a)
    # The MCDs are the check's result (metrics); frames checked and versions describe it (stats).
    score_keys = ("mcd_db_mean", "mcd_db_max")
    # Rounded to 1e-6 dB (the goal is 0.05 dB): the last bits of a 1e-12 dB difference depend on
    # the CPU's SIMD kernels, and a metric must not change between machines that agree.
    scores = {k: round(v, 6) for k, v in check.items() if k in score_keys} if check else None
    record = {k: v for k, v in check.items() if k not in score_keys} if check else None
    write_json(
        params.metrics,
        {
            "utterances": len(results),
            "frames": frames,
            "non_finite_values": int(sum((~np.isfinite(r.mcep)).sum() for r in results)),
            "check_against_pysptk": scores,
        },
    )
    write_json(
        params.stats,
        {
            "corpus": corpus.provenance(params.corpus.table),
            "cpu_kernels": kernels.record(),  # numpy's SIMD exp and log set the last bits
            "frames_per_split": {
                s: sum(len(r.mcep) for r in results if r.entry.split == s) for s in corpus.SPLITS
            },
            "input_sample_rates": sorted({r.input_rate for r in results}),
            "input_channels": sorted({r.channels for r in results}),
            "check_against_pysptk": record,
            "preview_utterance": shown.entry.utterance,
        },
    )
    log.info("%d frames of %d utterances (%.0f frames/s)", frames, len(results), frames / seconds)
    return {
        "analysis_seconds": round(seconds, 3),
        "frames_per_second": round(frames / seconds, 1),
        "workers": workers,
        "check_against_pysptk_unrounded": {k: check[k] for k in score_keys} if check else None,
    }


if __name__ == "__main__":
    run_stage("mel_cepstrum", Params, main)
