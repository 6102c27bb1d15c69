"""Mel-cepstrum extraction speed: our batched SPTK mcep vs pysptk.sptk.mcep called per frame.

Both on one core, on the same Blackman-windowed 12 kHz frames (25 ms, 5 ms shift, FFT 512,
order 31, alpha 0.37) of synthetic talker speech, with the stage's settings (etype 1, eps 1e-8).
Prints frames/s per core of each (best of `--repeats` alternating runs: this VM's speed drifts
from minute to minute), the speed ratio, and the mel-cepstral distortion between them.

    python benchmarks/mcep_speed.py [--seconds 30] [--reference-frames 1500]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import soxr
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stages.common.seeding import rng
from stages.lipspeech import melcep, talker
from stages.lipspeech.mcd import mcd_frames

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # pysptk imports the deprecated pkg_resources
    import pysptk

SETTINGS = {"etype": 1, "eps": 1e-8}


def speech_frames(seconds: float) -> np.ndarray:
    generator = rng(2026, "benchmark-mcep")
    parts, total = [], 0.0
    while total < seconds:
        utt = talker.random_utterance(generator, 2.0, 4.0)
        parts.append(talker.synthesize(utt, generator).astype(np.float64))
        total += utt.duration
    signal = soxr.resample(np.concatenate(parts), 48000, 12000, quality="VHQ")
    return melcep.frame_signal(signal, 300, 60, 512, "blackman")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of speech analysed")
    parser.add_argument(
        "--reference-frames", type=int, default=1500, help="frames run through pysptk"
    )
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each")
    args = parser.parse_args()
    frames = speech_frames(args.seconds)
    subset = frames[
        np.linspace(0, len(frames) - 1, min(args.reference_frames, len(frames))).astype(int)
    ]
    with threadpool_limits(1):  # one core: BLAS single-threaded (numba code is serial)
        start = time.perf_counter()
        melcep.mcep(frames[:8], 31, 0.37, **SETTINGS)  # JIT-compile the solver or load its cache
        compile_s = time.perf_counter() - start
        # Alternating runs: this VM's speed drifts from minute to minute, and both should see it.
        ours_times, ref_times = [], []
        for _ in range(args.repeats):
            ours_times.append(timed(lambda: melcep.mcep(frames, 31, 0.37, **SETTINGS)))
            ref_times.append(
                timed(
                    lambda: [pysptk.sptk.mcep(f, order=31, alpha=0.37, **SETTINGS) for f in subset]
                )
            )
        ours = melcep.mcep(subset, 31, 0.37, **SETTINGS)
        reference = np.array(
            [pysptk.sptk.mcep(f, order=31, alpha=0.37, **SETTINGS) for f in subset]
        )
    distortion = mcd_frames(ours, reference)
    ours_fps, ref_fps = len(frames) / min(ours_times), len(subset) / min(ref_times)
    median_ratio = np.median(
        [(len(frames) / o) / (len(subset) / r) for o, r in zip(ours_times, ref_times, strict=True)]
    )
    print(
        f"frames: {len(frames)} ({args.seconds:.0f} s of speech at 5 ms), pysptk on {len(subset)}"
    )
    print(f"{'implementation':<34}{'frames/s/core':>14}{'x real time':>13}")
    print(f"{'pysptk.sptk.mcep, per frame':<34}{ref_fps:>14.0f}{ref_fps / 200:>13.1f}")
    print(f"{'stages.lipspeech.melcep.mcep, batched':<34}{ours_fps:>14.0f}{ours_fps / 200:>13.1f}")
    print(
        f"speed-up: {ours_fps / ref_fps:.1f}x best against best of {args.repeats}, "
        f"{median_ratio:.1f}x median of the paired runs   (JIT compile or cache load: "
        f"{compile_s:.1f} s)"
    )
    print(
        f"MCD ours vs pysptk: mean {distortion.mean():.2e} dB, max {distortion.max():.2e} dB "
        f"(goal <= 0.05 dB)"
    )


if __name__ == "__main__":
    main()
