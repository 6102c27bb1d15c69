"""Lip-image features by 2-D DCT + PCA (Potamianos et al.), fitted, applied and inverted.

grey ROI (h, w) -> orthonormal 2-D DCT-II -> keep K coefficients (zig-zag order, or the K of highest
mean energy on the training split) -> subtract the utterance's mean (optional) -> PCA (fitted on
the training split) -> d features. `LipTransform.rebuild` runs it backwards (inverse PCA, add the
mean back, zero the dropped coefficients, inverse DCT), for previews and for the lip images the
GGDRM stage predicts. Saved as one deterministic `.npz` (no timestamps inside).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import scipy.fft

from stages.common.atomic import atomic_file
from stages.common.errors import StageError


def dct2(images: np.ndarray) -> np.ndarray:
    """Orthonormal 2-D DCT-II over the last two axes."""
    return scipy.fft.dctn(np.asarray(images, np.float64), type=2, norm="ortho", axes=(-2, -1))


def idct2(coefficients: np.ndarray) -> np.ndarray:
    return scipy.fft.idctn(coefficients, type=2, norm="ortho", axes=(-2, -1))


def zigzag(h: int, w: int) -> np.ndarray:
    """(row, col) of an h x w block in JPEG zig-zag order: anti-diagonals, alternating direction."""
    rows, cols = np.indices((h, w))
    diagonal = (rows + cols).ravel()
    along = np.where(diagonal % 2 == 0, -rows.ravel(), rows.ravel())  # even diagonals run upward
    order = np.lexsort((along, diagonal))
    return np.stack([rows.ravel()[order], cols.ravel()[order]], axis=1)


def select_coefficients(energy: np.ndarray, keep: int, method: str) -> np.ndarray:
    """(keep, 2) DCT positions: the first `keep` in zig-zag order, or the `keep` of highest mean
    energy (`energy`: (h, w) mean squared coefficient over the training frames). Ties and the
    output follow zig-zag order, so the choice is deterministic."""
    order = zigzag(*energy.shape)
    if method == "zigzag":
        return order[:keep]
    if method != "energy":
        raise ValueError(f"selection must be zigzag or energy, got {method!r}")
    ranked = np.argsort(-energy[order[:, 0], order[:, 1]], kind="stable")[:keep]
    return order[np.sort(ranked)]


def fit_pca(
    x: np.ndarray, components: int | None, variance: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA of rows x (N, K): mean (K,), basis (d, K) (orthonormal rows), explained ratio (K,).

    d is `components`, or the fewest reaching the `variance` share. Each component's sign is fixed
    (largest-magnitude loading positive), so refits give identical bases.
    """
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    ratio = s**2 / max((s**2).sum(), np.finfo(float).tiny)
    if components is not None:
        d = components
    else:
        assert variance is not None
        d = int(np.searchsorted(np.cumsum(ratio), variance - 1e-12) + 1)
    d = min(d, vt.shape[0])
    basis = vt[:d]
    flip = np.sign(basis[np.arange(d), np.abs(basis).argmax(axis=1)])
    return mean, basis * flip[:, None], ratio


@dataclass(frozen=True)
class LipTransform:
    roi: np.ndarray  # (4,) x, y, width, height of the box in the frame
    coefficients: np.ndarray  # (K, 2) kept DCT positions (row, col)
    mean_normalise: np.ndarray  # () bool: per-utterance means subtracted before PCA
    pca_mean: np.ndarray  # (K,)
    basis: np.ndarray  # (d, K)
    explained_variance_ratio: np.ndarray  # (K,) of every component, the first d are kept
    utterances: np.ndarray  # (U,) ids whose mean DCT vector is stored
    utterance_means: np.ndarray  # (U, K) each utterance's mean kept-DCT vector
    train_mean: np.ndarray  # (K,) mean over training frames: the offset for unseen utterances

    @property
    def dims(self) -> int:
        return self.basis.shape[0]

    def selected(self, rois: np.ndarray) -> np.ndarray:
        """Kept DCT coefficients (T, K) of grey ROIs (T, h, w)."""
        c = dct2(rois)
        return c[:, self.coefficients[:, 0], self.coefficients[:, 1]]

    def offset(self, utterance: str | None) -> np.ndarray:
        """What mean normalisation subtracts for an utterance (the train mean if unknown)."""
        if not bool(self.mean_normalise):
            return np.zeros_like(self.pca_mean)
        hit = np.flatnonzero(self.utterances == utterance)
        return self.utterance_means[hit[0]] if hit.size else self.train_mean

    def project(self, selected: np.ndarray, offset: np.ndarray) -> np.ndarray:
        return (selected - offset - self.pca_mean) @ self.basis.T

    def rebuild(self, features: np.ndarray, utterance: str | None = None) -> np.ndarray:
        """Grey ROIs (T, h, w) float, 0..255, from features (T, d): inverse PCA, inverse DCT."""
        selected = np.atleast_2d(features) @ self.basis + self.pca_mean + self.offset(utterance)
        h, w = int(self.roi[3]), int(self.roi[2])
        full = np.zeros((len(selected), h, w))
        full[:, self.coefficients[:, 0], self.coefficients[:, 1]] = selected
        return np.clip(idct2(full), 0, 255)

    def save(self, path: Path) -> None:
        """A .npz whose bytes depend only on the arrays (fixed zip timestamps)."""
        with atomic_file(path) as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as z:
            for f in fields(self):
                buffer = io.BytesIO()
                np.lib.format.write_array(
                    buffer, np.asarray(getattr(self, f.name)), allow_pickle=False
                )
                info = zipfile.ZipInfo(f"{f.name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> LipTransform:
        path = Path(path)
        if not path.is_file():
            raise StageError(path, "lip transform not found (run the lip_features stage)")
        with np.load(path, allow_pickle=False) as data:
            missing = [f.name for f in fields(cls) if f.name not in data]
            if missing:
                raise StageError(path, f"not a lip transform: missing {missing}")
            return cls(**{f.name: data[f.name] for f in fields(cls)})
