"""The clips' sound as the MTRNN's IO layer sees it: one log-mel vector per model step.

Seed 000 names sound as its next step; the audio-visual MTRNN takes a clip's log-mel spectrum beside
its picture features at every step. A step is `frame_stride / fps` seconds (66.7 ms at 15 steps/s),
which is not a whole number of samples at 16 kHz, so each step's spectrum is taken from an
`n_fft` window centred on the step's own instant (rounded to the sample), not from a fixed-hop STFT
that would drift from the pictures.
"""

from __future__ import annotations

import librosa
import numpy as np

AMIN = 1e-10  # power floor before the log: -100 dB


def step_centres(steps: int, rate: int, step_seconds: float) -> np.ndarray:
    """Sample index of each step's instant: round(t * step_seconds * rate)."""
    return np.round(np.arange(steps) * step_seconds * rate).astype(np.int64)


def log_mel(
    audio: np.ndarray, rate: int, steps: int, step_seconds: float, n_fft: int, n_mels: int
) -> np.ndarray:
    """(steps, n_mels) log-mel power in dB of mono `audio`, one Hann window of `n_fft` samples
    centred on each step (zero beyond the clip's ends)."""
    half = n_fft // 2
    padded = np.pad(audio.astype(np.float64), (half, half + n_fft))
    starts = step_centres(steps, rate, step_seconds)  # centre + half - half in padded samples
    windows = padded[starts[:, None] + np.arange(n_fft)] * np.hanning(n_fft + 1)[:-1]
    power = np.abs(np.fft.rfft(windows, axis=1)) ** 2
    bank = librosa.filters.mel(sr=rate, n_fft=n_fft, n_mels=n_mels)
    return 10 * np.log10(np.maximum(power @ bank.T, AMIN))


def normaliser(log_mels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and scale that map training log-mels into the IO units' range: (x - mean) /
    scale keeps three standard deviations inside (-1, 1), where tanh can reach."""
    every = np.concatenate(log_mels)
    return every.mean(0), 3 * every.std(0) + 1e-6


def to_io(log_mels: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.clip((log_mels - mean) / scale, -0.99, 0.99)


def from_io(values: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return values * scale + mean


def pooled(log_mels: np.ndarray) -> np.ndarray:
    """The features a sound classifier sees: each band's mean and maximum over the steps, so an
    effect counts wherever in the clip it sounds."""
    return np.concatenate([log_mels.mean(0), log_mels.max(0)])


def waveform(
    log_mels: np.ndarray, rate: int, step_seconds: float, n_fft: int, seed: int
) -> np.ndarray:
    """A waveform with this (steps, n_mels) log-mel spectrum, by Griffin-Lim (seeded, so the same
    spectrum gives the same samples). The hop is the step rounded to a whole sample."""
    magnitude = librosa.feature.inverse.mel_to_stft(10 ** (log_mels.T / 10), sr=rate, n_fft=n_fft)
    hop = round(step_seconds * rate)
    return librosa.griffinlim(magnitude, n_iter=32, hop_length=hop, random_state=seed).astype(
        np.float32
    )
