"""MotionMNIST: pixels equal PIL's recipe, motion is right, labels balanced, bytes reproducible."""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages.common import dataset
from stages.common.errors import StageError
from stages.motionmnist import build as mm

REPO = Path(__file__).resolve().parents[1]
SMALL = mm.Params(seed=3, digits=mm.DigitSource(count=40), workers=2)


@pytest.fixture(scope="module")
def digits():
    return mm.load_digits(mm.DigitSource(count=200))


def pil_video(digit: np.ndarray, motion: int, angles: np.ndarray, jitter: np.ndarray) -> np.ndarray:
    """The original recipe, frame by frame: PIL rotate, then paste onto a black canvas."""
    (sx, sy), (dx, dy) = mm.MOTIONS[motion].start, mm.MOTIONS[motion].direction
    frames = []
    for t in range(len(angles)):
        x = int(sx + 1.8 * t * dx + jitter[t, 0])  # int() truncates toward zero
        y = int(sy + 1.8 * t * dy + jitter[t, 1])
        canvas = Image.new("L", (64, 64), 0)
        canvas.paste(Image.fromarray(digit).rotate(angles[t]), (x, y))
        frames.append(np.asarray(canvas))
    return np.stack(frames)


def test_rotation_equals_pil_for_any_angle(digits):
    rs = np.random.default_rng(0)
    which = rs.integers(0, len(digits.images), 2000)
    angles = np.concatenate([rs.uniform(0, 15, 1000), rs.uniform(-400, 400, 1000)])
    got = mm.rotate_nearest(digits.images, angles, which)
    for i in range(len(angles)):
        expected = np.asarray(Image.fromarray(digits.images[which[i]]).rotate(angles[i]))
        np.testing.assert_array_equal(got[i], expected, err_msg=f"angle {angles[i]}")


def test_frames_equal_pil_rotate_and_paste(digits):
    n = 96  # 12 digits x 8 motions, with jitter large enough to clip at every edge
    angles, jitter = mm.random_draws(seed=1, block=0, n_videos=n, max_angle=15.0, jitter=3.0)
    motions = np.tile(np.arange(8), n // 8)
    which = np.repeat(np.arange(n // 8), 8)
    frames, corners = mm.render(digits.images[which], motions, angles, jitter)
    assert frames.shape == (n, 20, 64, 64) and frames.dtype == np.uint8
    assert (corners < 0).any() and (corners > 36).any()  # clipping was exercised
    for v in range(n):
        expected = pil_video(digits.images[which[v]], motions[v], angles[v], jitter[v])
        np.testing.assert_array_equal(frames[v], expected, err_msg=f"video {v}")


def test_centre_of_mass_moves_along_the_motion_at_step_speed(digits):
    n = 8 * 100
    angles, jitter = mm.random_draws(seed=2, block=0, n_videos=n, max_angle=15.0, jitter=1.0)
    motions = np.tile(np.arange(8), n // 8)
    frames, _ = mm.render(digits.images[np.repeat(np.arange(100), 8)], motions, angles, jitter)
    mass = frames.astype(np.float64)
    total = mass.sum(axis=(2, 3))
    cx = (mass.sum(axis=2) * np.arange(64)).sum(axis=2) / total
    cy = (mass.sum(axis=3) * np.arange(64)).sum(axis=2) / total
    t = np.arange(20)
    for label, motion in enumerate(mm.MOTIONS):
        # Frames 2..17 keep the digit wholly on the canvas, so clipping does not bias the centre.
        inner = slice(2, 18)
        vx = np.polyfit(t[inner], cx[motions == label][:, inner].mean(axis=0), 1)[0]
        vy = np.polyfit(t[inner], cy[motions == label][:, inner].mean(axis=0), 1)[0]
        assert vx == pytest.approx(1.8 * motion.direction[0], abs=0.05), motion.name
        assert vy == pytest.approx(1.8 * motion.direction[1], abs=0.05), motion.name


def test_angles_and_jitter_follow_their_distributions():
    angles, jitter = mm.random_draws(seed=4, block=0, n_videos=4000, max_angle=15.0, jitter=1.0)
    assert angles.min() > 0 and angles.max() <= 15.0
    assert angles.mean() == pytest.approx(7.5, abs=0.05)
    assert jitter.std() == pytest.approx(1.0, abs=0.01)
    assert abs(jitter.mean()) < 0.01


def test_dataset_labels_splits_and_ids(tmp_path):
    stats = mm.build(SMALL, tmp_path / "mm")
    data = dataset.read_arrays(
        tmp_path / "mm",
        columns=["video_id", "digit_index", "motion", "split", "digit_class", "positions"],
    )
    assert stats["videos"] == len(data["video_id"]) == 320
    np.testing.assert_array_equal(data["video_id"], np.arange(320))
    np.testing.assert_array_equal(data["video_id"], data["digit_index"] * 8 + data["motion"])
    assert np.bincount(data["motion"]).tolist() == [40] * 8
    for d in range(40):
        assert len(set(data["split"][data["digit_index"] == d])) == 1
    assert set(data["split"]) == {"train", "test"}
    assert np.bincount(data["digit_class"], minlength=10).tolist() == [4 * 8] * 10  # round-robin
    assert sum(stats["videos_per_split"].values()) == 320
    assert stats["videos_per_split"]["test"] == 8 * int(mm.assign_splits(3, 40, 0.2).sum())
    assert data["positions"].shape == (320, 20, 2)


def test_same_seed_same_bytes_whatever_the_worker_count(tmp_path):
    mm.build(SMALL, tmp_path / "a")
    mm.build(replace(SMALL, workers=1), tmp_path / "b")
    mm.build(replace(SMALL, seed=4), tmp_path / "c")
    a, b, c = (dataset.shard_paths(tmp_path / x) for x in "abc")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert [p.read_bytes() for p in a] != [p.read_bytes() for p in c]


def test_splits_are_stable_when_more_digits_are_added():
    np.testing.assert_array_equal(
        mm.assign_splits(5, 100, 0.2), mm.assign_splits(5, 500, 0.2)[:100]
    )


def idx_file(path: Path, array: np.ndarray) -> Path:
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))
    return path


def test_idx_source_reads_official_files(tmp_path, digits):
    images = idx_file(tmp_path / "t10k-images-idx3-ubyte.gz", digits.images[:16])
    labels = idx_file(tmp_path / "t10k-labels-idx1-ubyte.gz", digits.classes[:16])
    loaded = mm.load_digits(mm.DigitSource(kind="idx", images=images, labels=labels))
    np.testing.assert_array_equal(loaded.images, digits.images[:16])
    assert loaded.provenance["images"]["sha256"] and loaded.provenance["count"] == 16
    with pytest.raises(StageError, match="count"):
        mm.load_digits(mm.DigitSource(kind="idx", images=images, labels=labels, count=17))


def run_cli(cwd: Path, params: str) -> subprocess.CompletedProcess:
    (cwd / "params.yaml").write_text(params)
    env = os.environ | {"PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "stages.motionmnist.build"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )


def test_cli_builds_outputs_and_rejects_a_bad_idx_file_without_touching_them(tmp_path, digits):
    good = run_cli(tmp_path, "base: {seed: 1}\nmotionmnist: {digits: {count: 16}}\n")
    assert good.returncode == 0, good.stderr
    shards = sorted((tmp_path / "data/motionmnist").iterdir())
    before = [p.read_bytes() for p in shards]
    assert (tmp_path / "reports/motionmnist/stats.json").exists()
    preview = Image.open(tmp_path / "reports/motionmnist/preview.png")
    assert preview.size == (20 * 66 + 2, 8 * 66 + 2)

    images = idx_file(tmp_path / "images.gz", digits.images[:16])
    truncated = tmp_path / "labels.gz"
    labels = idx_file(truncated, digits.classes[:16])
    labels.write_bytes(gzip.compress(gzip.decompress(labels.read_bytes())[:-3]))
    bad = run_cli(
        tmp_path,
        "base: {seed: 1}\nmotionmnist:\n"
        f"  digits: {{kind: idx, images: {images}, labels: {truncated}}}\n",
    )
    assert bad.returncode == 2
    assert (
        bad.stderr.strip()
        .splitlines()[-1]
        .startswith(f"motionmnist: error: {truncated}: header promises")
    )
    assert "Traceback" not in bad.stderr
    assert [p.read_bytes() for p in sorted((tmp_path / "data/motionmnist").iterdir())] == before


def test_cli_reports_a_params_typo(tmp_path):
    result = run_cli(
        tmp_path, "base: {seed: 1}\nmotionmnist: {digits: {count: 16}, max_angel: 5}\n"
    )
    assert result.returncode == 2
    assert "motionmnist.max_angel: unknown key" in result.stderr
