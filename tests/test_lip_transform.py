"""DCT + PCA lip features: known orders, exact inversion, agreement with scikit-learn's PCA."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
from sklearn.decomposition import PCA

from stages.lipspeech.lip_transform import (
    LipTransform,
    dct2,
    fit_pca,
    idct2,
    select_coefficients,
    zigzag,
)


def test_zigzag_is_the_jpeg_order():
    expected = [(0, 0), (0, 1), (1, 0), (2, 0), (1, 1), (0, 2), (0, 3), (1, 2), (2, 1), (3, 0)]
    assert [tuple(p) for p in zigzag(8, 8)[:10]] == expected
    assert len({tuple(p) for p in zigzag(5, 7)}) == 35


def test_dct_is_orthonormal_and_inverts():
    x = np.random.default_rng(0).random((3, 55, 55)) * 255
    c = dct2(x)
    np.testing.assert_allclose((c**2).sum(axis=(1, 2)), (x**2).sum(axis=(1, 2)))  # Parseval
    np.testing.assert_allclose(idct2(c), x, atol=1e-9)
    np.testing.assert_allclose(
        c[0], scipy.fft.dct(scipy.fft.dct(x[0], norm="ortho", axis=0), norm="ortho", axis=1)
    )


def test_energy_selection_picks_the_strongest_in_zigzag_order():
    energy = np.zeros((4, 4))
    energy[3, 3], energy[0, 2], energy[1, 0] = 5.0, 3.0, 1.0
    picked = select_coefficients(energy, 3, "energy")
    assert [tuple(p) for p in picked] == [(1, 0), (0, 2), (3, 3)]
    assert [tuple(p) for p in select_coefficients(energy, 3, "zigzag")] == [(0, 0), (0, 1), (1, 0)]


def test_pca_agrees_with_scikit_learn():
    x = np.random.default_rng(1).standard_normal((200, 12)) @ np.diag(np.arange(12, 0, -1.0))
    mean, basis, ratio = fit_pca(x, 5, None)
    reference = PCA(n_components=12).fit(x)
    np.testing.assert_allclose(ratio, reference.explained_variance_ratio_, rtol=1e-9)
    np.testing.assert_allclose(np.abs(basis), np.abs(reference.components_[:5]), atol=1e-9)
    np.testing.assert_allclose(mean, reference.mean_)
    _, basis_v, _ = fit_pca(x, None, float(ratio[:4].sum()))
    assert basis_v.shape[0] == 4  # the fewest components reaching the target


def make_transform(rois: np.ndarray, keep: int, dims: int) -> LipTransform:
    coefficients = zigzag(*rois.shape[1:])[:keep]
    selected = dct2(rois)[:, coefficients[:, 0], coefficients[:, 1]]
    mean = selected.mean(axis=0)
    pca_mean, basis, ratio = fit_pca(selected - mean, dims, None)
    return LipTransform(
        roi=np.array([0, 0, rois.shape[2], rois.shape[1]]),
        coefficients=coefficients,
        mean_normalise=np.array(True),
        pca_mean=pca_mean,
        basis=basis,
        explained_variance_ratio=ratio,
        utterances=np.array(["u1"]),
        utterance_means=mean[None],
        train_mean=mean,
    )


def test_full_rank_transform_rebuilds_exactly(tmp_path):
    rois = np.random.default_rng(2).integers(0, 256, (40, 6, 5)).astype(np.uint8)
    t = make_transform(rois, keep=30, dims=30)
    features = t.project(t.selected(rois), t.offset("u1"))
    np.testing.assert_allclose(t.rebuild(features, "u1"), rois, atol=1e-8)
    t.save(tmp_path / "a.npz")
    t.save(tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    loaded = LipTransform.load(tmp_path / "a.npz")
    np.testing.assert_array_equal(loaded.basis, t.basis)
    np.testing.assert_allclose(loaded.rebuild(features, "u1"), rois, atol=1e-8)


def test_truncation_keeps_the_low_frequencies():
    x = np.mgrid[0:16, 0:16][1]
    rois = np.stack([128 + 60 * np.cos(np.pi * (x + 0.5) * k / 16) for k in (1, 2)] * 5)
    t = make_transform(rois, keep=10, dims=2)
    rebuilt = t.rebuild(t.project(t.selected(rois), t.offset("u1")), "u1")
    np.testing.assert_allclose(rebuilt, rois, atol=1e-6)  # both patterns live in the first 10
    assert t.offset("unseen").tolist() == t.train_mean.tolist()


def test_load_rejects_other_files(tmp_path):
    np.savez(tmp_path / "x.npz", a=np.zeros(2))
    with pytest.raises(Exception, match="not a lip transform"):
        LipTransform.load(tmp_path / "x.npz")
