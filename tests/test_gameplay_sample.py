"""The synthetic gameplay recordings: schedule, motion, distinct events, deterministic files."""

from __future__ import annotations

import csv
import hashlib
import warnings
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import LeaveOneOut, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from stages.common.errors import StageError
from stages.common.media import probe
from stages.common.params import load_section
from stages.common.seeding import rng
from stages.gameplay import art
from stages.gameplay import sample as gs

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = load_section(gs.Params, "gameplay_sample", ROOT / "params.yaml")


def sample_params(out: Path = DEFAULTS.out, **changes) -> gs.Params:
    """params.yaml's section with `changes`, writing to `out` (events.csv inside it)."""
    return replace(DEFAULTS, out=out, events=out / "events.csv", masks=out / "masks", **changes)


def test_plan_balances_labels_and_keeps_events_apart():
    params = sample_params(seed=7, recordings=3, length=48.0, event_count=30)
    schedule = gs.plan(params)
    assert [len(events) for events in schedule] == [10, 10, 10]
    labels = [ev.label for events in schedule for ev in events]
    assert sorted(labels.count(k) for k in gs.LABELS) == [7, 7, 8, 8]
    for events in schedule:
        times = np.array([ev.frame for ev in events]) / gs.FPS
        assert times.min() >= gs.MARGIN and times.max() <= params.length - gs.MARGIN
        assert np.diff(times).min() >= gs.SPACING - 1 / gs.FPS
    assert gs.plan(params) == schedule  # a pure function of the params


def test_plan_rejects_more_events_than_fit():
    with pytest.raises(StageError, match=r"need length >= 43\.0 s"):
        gs.plan(sample_params(seed=1, recordings=1, length=30.0, event_count=10))


def test_arc_starts_ends_and_peaks_where_asked():
    height = np.zeros(100)
    gs.arc(height, 10, 40, 0.0, 16.0, 44.0)
    assert height[10] == pytest.approx(0.0)
    assert height[38] > height[39] > 16.0  # falling onto h1, reached at frame 40
    assert height[39] < 16.0 + (44.0 - 16.0) * 0.3
    assert height.max() == pytest.approx(44.0, abs=0.5)
    assert height[:10].max() == 0 and height[40:].max() == 0


# --- the events can be told apart --------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered_events():
    """Frames (30 fps, 3 s, downscaled 4x) and 16 kHz audio around 40 events, without encoding."""
    params = sample_params(seed=3, recordings=1, length=6 + 40 * 3.75, event_count=40)
    (events,) = gs.plan(params)
    frames = round(params.length * gs.FPS)
    motion = gs.simulate(events, frames, rng(params.seed, "gameplay-jumps", 0))
    width = int(motion.x[-1]) - gs.SCREEN_X + gs.WIDTH + 32
    level = gs.build_level(width, motion, events, rng(params.seed, "gameplay-level", 0))
    scene = gs.Scene(events, motion, level, art.make_sprites())
    audio = gs.soundtrack(events, params.length, 16000, params.seed, 0)[0]
    clips, sounds = [], []
    for ev in events:
        window = range(ev.frame - 90, ev.frame + 90, 2)
        clips.append(np.stack([gs.render_frame(scene, f)[::4, ::4] for f in window]))
        at = round(ev.frame / gs.FPS * 16000)
        sounds.append(audio[at - 24000 : at + 24000])
    return np.array([ev.label for ev in events]), clips, sounds


def picture_features(frames: np.ndarray) -> np.ndarray:
    """Colour histograms and mean motion in six time segments of a clip."""
    q = (frames // 64).astype(int)
    codes = q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2]
    parts = np.array_split(np.arange(len(frames)), 6)
    hist = [np.bincount(codes[p].ravel(), minlength=64) / codes[p].size for p in parts]
    motion = [np.abs(np.diff(frames[p].astype(np.int16), axis=0)).mean() for p in parts]
    return np.concatenate([np.log(np.concatenate(hist) + 1e-4), motion])


def sound_features(audio: np.ndarray, rate: int = 16000) -> np.ndarray:
    """Log band energies of the second after the event, and the loudness envelope."""
    after = audio[len(audio) // 2 : len(audio) // 2 + rate]
    spectrum = np.abs(np.fft.rfft(after * np.hanning(len(after))))
    freqs = np.fft.rfftfreq(len(after), 1 / rate)
    edges = np.geomspace(60, 8000, 33)
    bands = [spectrum[(freqs >= lo) & (freqs < hi)].mean() for lo, hi in pairwise(edges)]
    hop = rate // 10
    envelope = [np.sqrt(np.mean(audio[k : k + hop] ** 2)) for k in range(0, len(audio), hop)]
    return np.log(np.concatenate([bands, envelope]) + 1e-6)


def leave_one_out_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(cross_val_score(model, features, labels, cv=LeaveOneOut()).mean())


@pytest.mark.slow
def test_event_kinds_can_be_told_apart_from_pictures_alone(rendered_events):
    labels, clips, _ = rendered_events
    features = np.array([picture_features(c) for c in clips])
    assert leave_one_out_accuracy(features, labels) >= 0.9


@pytest.mark.slow
def test_event_kinds_can_be_told_apart_from_sound_alone(rendered_events):
    labels, _, sounds = rendered_events
    features = np.array([sound_features(s) for s in sounds])
    assert leave_one_out_accuracy(features, labels) >= 0.9


def test_chance_features_do_not_separate_the_kinds(rendered_events):
    """The classifier check above can fail: features without the events score near chance."""
    labels, _, _ = rendered_events
    noise = np.random.default_rng(0).normal(size=(len(labels), 20))
    assert leave_one_out_accuracy(noise, labels) < 0.6


# --- the files ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_build_writes_decodable_recordings_byte_identical_per_seed(tmp_path, busy_cpu):
    small = dict(seed=5, recordings=2, length=18.0, event_count=6)
    stats = gs.build(sample_params(tmp_path / "a", **small, workers=1))
    gs.build(sample_params(tmp_path / "b", **small, workers=2))
    names = sorted(str(p.relative_to(tmp_path / "a")) for p in (tmp_path / "a").rglob("*.*"))
    assert names == [
        "events.csv", "masks/rec-000.parquet", "masks/rec-001.parquet", "rec-000.mp4", "rec-001.mp4"
    ]  # fmt: skip
    for name in names:
        digests = {hashlib.sha256((tmp_path / d / name).read_bytes()).hexdigest() for d in "ab"}
        assert len(digests) == 1, name
    with open(tmp_path / "a" / "events.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == stats["events"] == 6
    assert {r["label"] for r in rows} <= set(gs.LABELS)
    for name in ("rec-000.mp4", "rec-001.mp4"):
        info = probe(tmp_path / "a" / name)
        assert (info.video.width, info.video.height, info.video.fps) == (256, 240, 60)
        assert info.video.frames == 18 * 60 and info.duration == pytest.approx(18.0, abs=0.03)
        assert info.audio is not None and info.audio.rate == 48000
        times = [float(r["time"]) for r in rows if r["recording"] == name]
        assert all(gs.MARGIN <= t <= 18.0 - gs.MARGIN for t in times)


def test_events_table_must_lie_inside_the_output_folder(tmp_path):
    """DVC tracks the folder `out`: a table outside it would be an untracked output."""
    params = replace(sample_params(tmp_path / "a"), events=tmp_path / "events.csv")
    with pytest.raises(StageError, match="events: must lie inside out"):
        gs.build(params)
    assert not (tmp_path / "a").exists()
