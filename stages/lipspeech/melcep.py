"""Mel-cepstral analysis (SPTK `mcep`), batched over frames, and its inverse for pictures.

SPTK's `mcep` (Tokuda et al. 1994) minimises the unbiased log-spectral criterion by Newton-Raphson
on a frequency-warped cepstrum: starting from the frame's warped log periodogram, each step
rebuilds the model's log amplitude, weights the periodogram by its inverse, warps that back to an
autocorrelation-like sequence r(0..2M) and solves the (M+1)^2 Toeplitz-plus-Hankel system
(r_|i-j| + r_(i+j)) d = r(0..M) - (1, -a, a^2, ...). It stops once r(0) changes by less than
`threshold` (relative) after at least `miniter` steps, or after `maxiter`.

SPTK runs the three frequency transforms (`freqt`, FFT, `frqtr`) as scalar recursions per frame.
They are linear maps, so here each one is folded, with its FFT, into a single matrix built once per
(order, alpha, FFT size); an iteration is two BLAS matrix products, one `exp` and a batched solve
for all frames still iterating. The defaults are pysptk's (`pysptk.sptk.mcep`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft
import scipy.signal

from stages.lipspeech.spdsolve import solve_toeplitz_plus_hankel

BLOCK = 256  # frames iterated together: their work arrays stay in cache


def freqt(c: np.ndarray, order: int, alpha: float) -> np.ndarray:
    """SPTK `freqt`: warp cepstra c (..., m1+1) to order `order` with all-pass constant alpha."""
    c = np.asarray(c, np.float64)
    beta = 1.0 - alpha * alpha
    g = np.zeros((*c.shape[:-1], order + 1))
    for i in range(c.shape[-1] - 1, -1, -1):  # SPTK runs the input from its last coefficient
        d = g.copy()
        g[..., 0] = c[..., i] + alpha * d[..., 0]
        if order >= 1:
            g[..., 1] = beta * d[..., 0] + alpha * d[..., 1]
        for j in range(2, order + 1):
            g[..., j] = d[..., j - 1] + alpha * (d[..., j] - g[..., j - 1])
    return g


def frqtr(c: np.ndarray, order: int, alpha: float) -> np.ndarray:
    """SPTK `frqtr`: the warp mcep applies to the weighted autocorrelation (no 1 - a^2 term)."""
    c = np.asarray(c, np.float64)
    g = np.zeros((*c.shape[:-1], order + 1))
    for i in range(c.shape[-1] - 1, -1, -1):
        d = g.copy()
        g[..., 0] = c[..., i]
        for j in range(1, order + 1):
            g[..., j] = d[..., j - 1] + alpha * (d[..., j] - g[..., j - 1])
    return g


@dataclass(frozen=True)
class Operators:
    """The linear maps of one (order, alpha, nfft), as right-multiplied matrices."""

    start: np.ndarray  # (nfft/2+1, M+1): log periodogram -> initial mel-cepstrum
    log_amplitude: np.ndarray  # (M+1, nfft/2+1): mel-cepstrum -> model log amplitude per bin
    inverse_power: np.ndarray  # -2 * log_amplitude: exp(mc @ it) = 1 / |H|^2
    autocorrelation: np.ndarray  # (nfft/2+1, 2M+1): weighted periodogram -> warped r(0..2M)
    first_c0: np.ndarray  # (nfft/2+1,): log periodogram -> c0 of its halved cepstrum
    powers: np.ndarray  # (M+1,): 1, -a, a^2, ...


@lru_cache(maxsize=16)
def operators(order: int, alpha: float, nfft: int) -> Operators:
    if nfft % 2 or nfft < 2 * (order + 1):
        raise ValueError(f"nfft must be even and at least 2 * (order + 1), got {nfft}")
    half = nfft // 2
    eye = np.eye(half + 1)
    # Initial value: real cepstrum of the log periodogram, one-sided (c0 and c(N/2) halved), warped.
    cep = scipy.fft.irfft(eye, n=nfft, axis=-1)[:, : half + 1]
    cep[:, 0] /= 2.0
    cep[:, half] /= 2.0
    start = freqt(cep, order, alpha)
    # Model log amplitude: unwarp to a linear cepstrum of length N/2+1, real part of its FFT.
    linear = freqt(np.eye(order + 1), half, -alpha)
    log_amplitude = scipy.fft.rfft(linear, n=nfft, axis=-1).real
    # r: inverse FFT of the (real, even) weighted periodogram, first N/2+1 lags, warped to 2M.
    lags = scipy.fft.irfft(eye, n=nfft, axis=-1)[:, : half + 1]
    autocorrelation = frqtr(lags, 2 * order, alpha)
    return Operators(
        start=start,
        log_amplitude=log_amplitude,
        inverse_power=np.ascontiguousarray(-2.0 * log_amplitude),
        autocorrelation=autocorrelation,
        first_c0=cep[:, 0].copy(),
        powers=(-alpha) ** np.arange(order + 1),
    )


def periodogram(frames: np.ndarray, etype: int = 0, eps: float = 0.0) -> np.ndarray:
    """|FFT|^2 of windowed frames (B, nfft) over bins 0..nfft/2, floored as SPTK's etype says.

    etype 0: as is; 1: plus eps; 2: floored at eps dB (negative) below each frame's peak.
    """
    spectrum = scipy.fft.rfft(frames, axis=-1)
    power = np.square(spectrum.real)
    power += np.square(spectrum.imag)
    if etype == 1:
        if eps < 0:
            raise ValueError("etype 1 needs eps >= 0")
        power += eps
    elif etype == 2:
        if eps >= 0:
            raise ValueError("etype 2 needs a negative eps (dB below the frame's peak)")
        floor = power.max(axis=-1, keepdims=True) * 10.0 ** (eps / 10.0)
        power = np.maximum(power, floor)
    elif etype != 0 or eps != 0:
        raise ValueError(f"etype must be 0, 1 or 2 (and eps 0 with etype 0), got {etype}, {eps}")
    return power


def mcep(
    frames: np.ndarray,
    order: int = 25,
    alpha: float = 0.35,
    *,
    miniter: int = 2,
    maxiter: int = 30,
    threshold: float = 1e-3,
    etype: int = 0,
    eps: float = 0.0,
    min_det: float = 1e-6,
) -> np.ndarray:
    """Mel-cepstra (B, order+1) of windowed frames (B, nfft), as `pysptk.sptk.mcep` per frame.

    Frames whose periodogram has a zero (digital silence with etype 0) raise ValueError naming
    them: floor it with etype 1 or 2. Results never contain NaN. `min_det` bounds the Cholesky
    pivots of the Newton matrix (SPTK applies it to the 2x2 determinants inside its `theq`);
    a frame below it raises ValueError, as SPTK stops. Like SPTK, a frame still changing after
    `maxiter` steps returns its last iterate.
    """
    frames = np.atleast_2d(np.asarray(frames, np.float64))
    ops = operators(order, float(alpha), frames.shape[-1])
    power = periodogram(frames, etype, eps)
    bad = np.flatnonzero((power <= 0).any(axis=-1) | ~np.isfinite(power).all(axis=-1))
    if bad.size:
        raise ValueError(
            f"periodogram has zeros or non-finite values in frames {bad[:5].tolist()}"
            f"{' ...' if bad.size > 5 else ''}: floor it with etype 1 or 2"
        )
    log_power = np.log(power)
    mc = np.empty((len(frames), order + 1))
    for lo in range(0, len(frames), BLOCK):
        block = slice(lo, lo + BLOCK)
        mc[block] = _newton(log_power[block], ops, miniter, maxiter, threshold, min_det, lo)
    return mc


def _newton(
    log_power: np.ndarray,
    ops: Operators,
    miniter: int,
    maxiter: int,
    threshold: float,
    min_det: float,
    first: int,
) -> np.ndarray:
    """SPTK's Newton-Raphson iterations for one block of frames' log periodograms."""
    mc = log_power @ ops.start
    previous = log_power @ ops.first_c0  # SPTK's first convergence reference
    active = np.arange(len(log_power))
    order = mc.shape[1] - 1
    for step in range(1, maxiter + 1):
        full = len(active) == len(mc)  # skip the gathers while no frame has converged
        # power / |H|^2 = exp(log power - 2 log|H|)
        weighted = (mc if full else mc[active]) @ ops.inverse_power
        weighted += log_power if full else log_power[active]
        np.exp(weighted, out=weighted)
        r = weighted @ ops.autocorrelation
        if step >= miniter:
            going = np.abs((r[:, 0] - previous[active]) / r[:, 0]) >= threshold
            active, r = active[going], r[going]
            if not active.size:
                break
            previous[active] = r[:, 0]
        delta, ok = solve_toeplitz_plus_hankel(r, r[:, : order + 1] - ops.powers, min_det)
        if not ok.all():
            raise ValueError(
                f"Newton matrix not positive definite (pivot <= min_det {min_det}) in frames "
                f"{(first + active[~ok][:5]).tolist()} at iteration {step}"
            )
        if len(active) == len(mc):
            mc += delta
        else:
            mc[active] += delta
    return mc


def frame_signal(
    signal: np.ndarray, frame_length: int, hop: int, nfft: int, window: str = "blackman"
) -> np.ndarray:
    """Windowed frames (T, nfft) of a 1-D signal, frame k centred on sample k * hop.

    The signal is zero-padded by half a frame at both ends, so T = 1 + len(signal) // hop and frame
    k describes time k * hop / rate; each frame is zero-padded from frame_length to nfft.
    """
    if not 0 < frame_length <= nfft:
        raise ValueError(f"need 0 < frame_length <= nfft, got {frame_length}, {nfft}")
    half = frame_length // 2
    count = 1 + len(signal) // hop
    padded = np.zeros(half + count * hop + frame_length)
    padded[half : half + len(signal)] = signal
    windows = np.lib.stride_tricks.sliding_window_view(padded, frame_length)[: count * hop : hop]
    frames = np.zeros((count, nfft))
    frames[:, :frame_length] = windows * scipy.signal.get_window(
        window, frame_length, fftbins=False
    )
    return frames


def log_amplitude(mc: np.ndarray, alpha: float, nfft: int) -> np.ndarray:
    """Natural-log amplitude spectra (T, nfft/2+1) of the filters mel-cepstra (T, M+1) describe."""
    mc = np.atleast_2d(mc)
    return mc @ operators(mc.shape[1] - 1, float(alpha), nfft).log_amplitude
