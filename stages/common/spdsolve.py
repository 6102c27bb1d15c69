"""Batched solver for the small Toeplitz-plus-Hankel systems of mel-cepstral analysis.

mcep's Newton matrix A_ij = r_|i-j| + r_(i+j) is a Gram matrix (2 C^T W C, C a cosine basis and W
the positive weighted periodogram), so it is symmetric positive definite and a Cholesky solve is
exact and stable. numpy's batched `linalg.solve` pays a LAPACK call with copies per 32x32 matrix
(~11 us here); this compiled loop builds each matrix from r in place and factors it in ~2 us.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, fastmath=True)  # no cache: its files would change the stages/common DVC dep
def _cholesky_solve(
    r: np.ndarray, rhs: np.ndarray, min_pivot: float
) -> tuple[np.ndarray, np.ndarray]:
    batch, n = rhs.shape
    out = np.empty((batch, n))
    ok = np.ones(batch, np.bool_)
    a = np.empty((n, n))
    for b in range(batch):
        for i in range(n):
            for j in range(i + 1):
                a[i, j] = r[b, i - j] + r[b, i + j]
        # In-place lower Cholesky factor.
        for j in range(n):
            s = a[j, j]
            for k in range(j):
                s -= a[j, k] * a[j, k]
            if not s > min_pivot:
                ok[b] = False
                break
            s = np.sqrt(s)
            a[j, j] = s
            for i in range(j + 1, n):
                t = a[i, j]
                for k in range(j):
                    t -= a[i, k] * a[j, k]
                a[i, j] = t / s
        if not ok[b]:
            out[b, :] = 0.0
            continue
        # L y = rhs, then L^T x = y.
        for i in range(n):
            t = rhs[b, i]
            for k in range(i):
                t -= a[i, k] * out[b, k]
            out[b, i] = t / a[i, i]
        for i in range(n - 1, -1, -1):
            t = out[b, i]
            for k in range(i + 1, n):
                t -= a[k, i] * out[b, k]
            out[b, i] = t / a[i, i]
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
