"""Batched solver for the small Toeplitz-plus-Hankel systems of mel-cepstral analysis.

mcep's Newton matrix A_ij = r_|i-j| + r_(i+j) is a Gram matrix (2 C^T W C, C a cosine basis and W
the positive weighted periodogram), so it is symmetric positive definite and a Cholesky solve is
exact and stable. numpy's batched `linalg.solve` pays a LAPACK call with copies per 32x32 matrix
(~11 us here). This compiled loop factors `LANES` frames' matrices side by side, a frame per SIMD
lane: every inner loop runs over frames, so it vectorises fully however short the row being
reduced is (~1.5 us per frame, against ~3 us for one matrix at a time, whose dot products are
only 1 to 31 long). Each lane runs the same instructions, so a frame's answer does not depend on
the frames beside it.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Frames per group. LLVM fully unrolls a lane loop of 32 or fewer into scalar code; at 64 it
# vectorises it (measured: 16 and 32 lanes were no faster than one matrix at a time, 128 slower).
LANES = 64


# Cached (in __pycache__, which .dvcignore hides from the stages/common dep): compiling the 64-lane
# loops takes ~3 s, paid once per machine instead of once per worker per run.
@njit(nogil=True, fastmath=True, cache=True)
def _cholesky_solve(
    r: np.ndarray, rhs: np.ndarray, min_pivot: float
) -> tuple[np.ndarray, np.ndarray]:
    batch, n = rhs.shape
    out = np.zeros((batch, n))
    ok = np.ones(batch, np.bool_)
    lags = np.empty((2 * n - 1, LANES))  # lane-minor copies of r and rhs
    x = np.empty((n, LANES))
    a = np.empty((n, n, LANES))  # lower Cholesky factor, in place
    inverse_pivot = np.empty((n, LANES))
    failed = np.empty(LANES, np.bool_)
    acc = np.empty(LANES)
    for first in range(0, batch, LANES):
        for c in range(LANES):
            row = min(first + c, batch - 1)  # the last group is padded with its last frame
            for k in range(2 * n - 1):
                lags[k, c] = r[row, k]
            for k in range(n):
                x[k, c] = rhs[row, k]
            failed[c] = False
        for i in range(n):
            for j in range(i + 1):
                for c in range(LANES):
                    a[i, j, c] = lags[i - j, c] + lags[i + j, c]
        for j in range(n):
            # Column j from the diagonal down: a_ij - sum_k a_ik a_jk; the diagonal gives the pivot.
            for i in range(j, n):
                for c in range(LANES):
                    acc[c] = a[i, j, c]
                for k in range(j):
                    for c in range(LANES):
                        acc[c] -= a[i, k, c] * a[j, k, c]
                if i == j:
                    for c in range(LANES):
                        good = acc[c] > min_pivot  # also False for NaN
                        failed[c] |= not good
                        # A failed lane goes on with pivot 1 (its answer is dropped) so the
                        # lanes stay in step without branches.
                        inverse_pivot[j, c] = 1.0 / np.sqrt(acc[c] if good else 1.0)
                else:
                    for c in range(LANES):
                        a[i, j, c] = acc[c] * inverse_pivot[j, c]
        # L y = rhs, then L^T x = y.
        for i in range(n):
            for c in range(LANES):
                acc[c] = x[i, c]
            for k in range(i):
                for c in range(LANES):
                    acc[c] -= a[i, k, c] * x[k, c]
            for c in range(LANES):
                x[i, c] = acc[c] * inverse_pivot[i, c]
        for i in range(n - 1, -1, -1):
            for c in range(LANES):
                acc[c] = x[i, c]
            for k in range(i + 1, n):
                for c in range(LANES):
                    acc[c] -= a[k, i, c] * x[k, c]
            for c in range(LANES):
                x[i, c] = acc[c] * inverse_pivot[i, c]
        for c in range(min(LANES, batch - first)):
            if failed[c]:
                ok[first + c] = False
            else:
                for k in range(n):
                    out[first + c, k] = x[k, c]
    return out, ok


def solve_toeplitz_plus_hankel(
    r: np.ndarray, rhs: np.ndarray, min_pivot: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Solve (r_|i-j| + r_(i+j)) x = rhs for each row; r (B, 2n-1), rhs (B, n).

    Returns x (B, n) and a mask of rows whose matrix was positive definite with every Cholesky
    pivot above `min_pivot`; rows that failed get x = 0.
    """
    r = np.ascontiguousarray(r, np.float64)
    rhs = np.ascontiguousarray(rhs, np.float64)
    if (
        r.ndim != 2
        or rhs.ndim != 2
        or r.shape[0] != rhs.shape[0]
        or r.shape[1] < 2 * rhs.shape[1] - 1
    ):
        raise ValueError(f"need r (B, 2n-1) and rhs (B, n), got {r.shape} and {rhs.shape}")
    return _cholesky_solve(r, rhs, float(min_pivot))
