"""Sprite masks, log-mel steps, the partly observed MTRNN, the audio-visual stages end to end."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import librosa
import numpy as np
import pytest
import torch
import yaml
from scipy.io import wavfile
from stage_cli import run_stage_cli

from stages.common import dataset
from stages.common.errors import StageError
from stages.common.params import load_section
from stages.common.seeding import rng
from stages.gameplay import art, masks, sound
from stages.gameplay import clips as gc
from stages.gameplay import mtrnn_train as mt
from stages.gameplay import sample as gs
from stages.gameplay import sound_evaluate as se
from stages.gameplay.mtrnn import MTRNN, Config

REPO = Path(__file__).resolve().parents[1]


# --- sprite masks ---------------------------------------------------------------------------


def test_sprite_mask_marks_what_is_drawn_over_the_level():
    events = [gs.Event(frame=200, label="stomp", enemy="goomba")]
    motion = gs.simulate(events, 300, rng(1, "jumps", 0))
    width = int(motion.x[-1]) - gs.SCREEN_X + gs.WIDTH + 32
    scene = gs.Scene(events, motion, gs.build_level(width, motion, events, rng(1, "lv", 0)),
                     art.make_sprites())  # fmt: skip
    for f in (0, 150, 199):
        frame = gs.render_frame(scene, f)
        mask = gs.sprite_mask(frame, scene, f).astype(bool)
        assert (frame[~mask] == gs.background(scene, f)[~mask]).all()
        # the player stands on the ground at SCREEN_X: its box holds sprite pixels
        top = gs.GROUND - round(motion.height[f]) - 16
        assert mask[top : gs.GROUND - round(motion.height[f]), gs.SCREEN_X : gs.SCREEN_X + 16].any()
        assert 0 < mask.mean() < 0.05


def brute_force_downsample(mask: np.ndarray, size: int) -> np.ndarray:
    height, width = mask.shape
    out = np.zeros((size, size), np.uint8)
    for r, c in zip(*np.nonzero(mask), strict=True):
        i, j = r * size // height, c * size // width
        out[max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2] = 1
    return out


def test_downsample_is_any_sprite_in_the_cell_or_a_neighbour():
    generator = np.random.default_rng(0)
    sparse = (generator.random((3, 240, 256)) < 0.002).astype(np.uint8)
    small = masks.downsample(sparse, 128)
    assert small.shape == (3, 128, 128)
    for k in range(3):
        assert np.array_equal(small[k], brute_force_downsample(sparse[k], 128))
    assert masks.downsample(np.zeros((1, 240, 256), np.uint8), 64).sum() == 0


def write_mask_file(path: Path, frames: int) -> np.ndarray:
    values = (np.random.default_rng(1).random((frames, 6, 8)) < 0.3).astype(np.uint8)
    shard = dataset.ShardFile(path, masks.schema(6, 8, 60))
    for lo in range(0, frames, 4):  # row groups of 4 frames
        part = np.arange(lo, min(lo + 4, frames), dtype=np.int32)
        shard.write({"frame": part, "sprites": values[part]})
    shard.close()
    return values


def test_mask_frames_are_read_by_index_and_a_bad_file_is_named(tmp_path):
    values = write_mask_file(tmp_path / "rec.parquet", 10)
    wanted = np.array([1, 2, 2, 7])
    assert np.array_equal(masks.read_frames(tmp_path / "rec.parquet", wanted), values[wanted])
    with pytest.raises(StageError, match=r"rec\.parquet.*no mask for frames 8\.\.12"):
        masks.read_frames(tmp_path / "rec.parquet", np.array([8, 12]))
    with pytest.raises(StageError, match="sprite mask file not found"):
        masks.check_file(tmp_path / "other.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(StageError, match=r"junk\.parquet: not a sprite mask file"):
        masks.check_file(tmp_path / "junk.parquet")


def test_a_missing_mask_file_stops_the_clip_stage_before_any_output(tmp_path):
    (tmp_path / "rec").mkdir()
    (tmp_path / "rec/a.mp4").write_bytes(b"")
    (tmp_path / "events.csv").write_text("recording,time,label\na.mp4,2.0,stomp\n")
    defaults = load_section(gc.Params, "gameplay_clips", REPO / "params.yaml")
    params = replace(defaults, recordings=tmp_path / "rec", events=tmp_path / "events.csv",
                     masks=tmp_path / "masks", out=tmp_path / "clips", workers=1)  # fmt: skip
    with pytest.raises(StageError, match=r"masks/a\.parquet: sprite mask file not found"):
        gc.build(params)
    assert not (tmp_path / "clips").exists()


# --- sound per step -------------------------------------------------------------------------


def test_log_mel_matches_librosa_where_the_step_is_a_whole_hop():
    y = (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32)
    ours = sound.log_mel(y, 16000, steps=16, step_seconds=1000 / 16000, n_fft=2048, n_mels=32)
    power = librosa.feature.melspectrogram(
        y=y, sr=16000, n_fft=2048, hop_length=1000, n_mels=32, center=True, pad_mode="constant"
    )
    reference = librosa.power_to_db(power, ref=1.0, amin=sound.AMIN, top_db=None).T[:16]
    assert np.allclose(ours, reference, atol=1e-3)


def test_io_scaling_round_trips_inside_three_deviations():
    generator = np.random.default_rng(2)
    parts = [generator.normal(-40, 5, (20, 4)) for _ in range(3)]
    mean, scale = sound.normaliser(parts)
    inside = parts[0][np.abs(parts[0] - mean).max(1) < 2.9 * scale.min()]
    back = sound.from_io(sound.to_io(inside, mean, scale), mean, scale)
    assert np.allclose(back, inside)
    assert np.abs(sound.to_io(np.full((1, 4), 1e3), mean, scale)).max() == pytest.approx(0.99)


# --- the partly observed MTRNN ----------------------------------------------------------------


def test_known_mask_spans_teacher_forcing_and_the_closed_loop():
    torch.manual_seed(0)
    model = MTRNN(Config(io=5, fast=7, slow=3), sequences=2)
    inputs, cs0 = torch.randn(2, 6, 5), 0.5 * torch.randn(2, 3)
    with torch.no_grad():
        forced = model(inputs, cs0)
        assert torch.equal(model(inputs, cs0, torch.ones(5, dtype=torch.bool)), forced)
        closed = model(inputs, cs0, torch.zeros(5, dtype=torch.bool))
        assert torch.equal(closed, model.generate(inputs[:, 0], cs0, 6))
        assert torch.equal(model(inputs, cs0, feedback=1.0), closed)  # training closed loop
        half = model(inputs, cs0, feedback=0.5)
        assert not torch.allclose(half, closed) and not torch.allclose(half, forced)
        known = torch.tensor([True, True, True, False, False])
        mixed = model(inputs, cs0, known)
        changed = inputs.clone()
        changed[:, 1:, 3:] = 9.0  # what the network is never shown
        assert torch.equal(model(changed, cs0, known), mixed)
        assert not torch.allclose(mixed, forced)


def test_channel_weights_scale_the_loss():
    outputs, targets = torch.zeros(1, 3, 2), torch.ones(1, 3, 2)
    targets[..., 1] = 3.0
    lengths = torch.tensor([4])
    assert mt.prediction_loss(outputs, targets, lengths).item() == pytest.approx(5.0)
    only_first = torch.tensor([1.0, 0.0])
    assert mt.prediction_loss(outputs, targets, lengths, only_first).item() == pytest.approx(1.0)


# --- the stages end to end ------------------------------------------------------------------


@pytest.fixture(scope="module")
def sounding_clips(tmp_path_factory) -> Path:
    """Eight 32x32 one-second clips of two kinds that look and sound different: a red square and a
    500 Hz tone from the middle on (stomp), a green square and a 3 kHz tone (mushroom); clips 3
    (a mushroom) and 6 (a stomp) are held out."""
    out = tmp_path_factory.mktemp("av") / "clips"
    base = load_section(gc.Params, "gameplay_clips", REPO / "params.yaml")
    schema = gc.schema(replace(base, size=32, masks=None), max_frames=30, max_samples=16000)
    frames = np.zeros((8, 30, 32, 32, 3), np.uint8)
    frames[..., 2] = 120
    audio = np.zeros((8, 16000), np.float32)
    time = np.arange(16000) / 16000
    labels = ["stomp", "mushroom"] * 4
    noise = np.random.default_rng(3)
    for k, label in enumerate(labels):
        tone = 500.0 if label == "stomp" else 3000.0
        audio[k] = 0.05 * noise.standard_normal(16000)
        audio[k, 8000:] += 0.5 * np.sin(2 * np.pi * tone * time[8000:])
        for t in range(30):
            x = (t + 3 * k) % 24
            frames[k, t, 12:20, x : x + 8, 0 if label == "stomp" else 1] = 255
    out.mkdir()
    with dataset.ShardWriter(out, schema, shard_rows=8) as writer:
        writer.write({
            "clip_id": np.arange(1, 9), "recording": ["r.mp4"] * 8, "label": labels,
            "label_index": np.array([2, 0] * 4, np.int16), "start": np.zeros(8),
            "end": np.ones(8), "n_frames": np.full(8, 30, np.int32), "frames": frames,
            "n_samples": np.full(8, 16000, np.int32), "audio": audio,
            "audio_rate": np.full(8, 16000, np.int32),
            "split": ["train", "train", "train", "test", "train", "train", "test", "train"],
        })  # fmt: skip
    return out


def av_params(folder: Path, clips: Path, cae: Path) -> mt.Params:
    full = yaml.safe_load((REPO / "params.yaml").read_text())
    section = full["av_mtrnn_train"] | {
        "clips": str(clips), "cae": str(cae), "model": str(folder / "av.pt"),
        "checkpoint": str(folder / "ck/last.pt"), "live": str(folder / "live"), "device": "cpu",
        "model_config": {"fast": 8, "slow": 4, "tau_io": 2.0, "tau_fast": 5.0, "tau_slow": 70.0},
        "audio": {"n_mels": 8, "n_fft": 512, "weight": 1.0}, "steps": 30, "log_every": 10,
        "checkpoint_every": 10,
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump({"base": full["base"], "av_mtrnn_train": section}))
    return load_section(mt.Params, "av_mtrnn_train", path)


@pytest.mark.slow
def test_the_audio_visual_stages_train_and_judge_the_sound(tmp_path, sounding_clips):
    from test_cae_train import params_of as cae_params_of
    from test_cae_train import tiny_params as cae_tiny_params

    from stages.gameplay import cae_train as ct

    ct.train(cae_params_of(cae_tiny_params(tmp_path / "cae", sounding_clips, frame_stride=2)))
    cae = tmp_path / "cae/cae.pt"
    params = av_params(tmp_path / "av", sounding_clips, cae)
    mt.train(params, "av_mtrnn_train", "stages.gameplay.av_mtrnn_train")
    record = torch.load(params.model, weights_only=True)
    assert record["config"]["io"] == 8 + 8 and len(record["sound"]["mean"]) == 8
    assert record["sound"]["step_seconds"] == pytest.approx(2 / 30)

    full = yaml.safe_load((REPO / "params.yaml").read_text())
    outs = {k: str(tmp_path / "ev" / Path(v).name) for k, v in full["av_mtrnn_evaluate"].items()
            if k in ("metrics", "baselines", "stats", "sounds", "spectra")}  # fmt: skip
    changes = outs | {
        "clips": str(sounding_clips), "cae": str(cae), "mtrnn": str(params.model),
        "device": "cpu", "recognise_steps": 5,
    }  # fmt: skip
    done = run_stage_cli("stages.gameplay.sound_evaluate", "av_mtrnn_evaluate", changes,
                         tmp_path / "run")  # fmt: skip
    assert done.returncode == 0, done.stderr
    metrics = json.loads(Path(outs["metrics"]).read_text())
    assert set(metrics["test"]) == {f"{m}_{k}" for m in ("pictures_shown", "closed_loop")
                                    for k in ("kind_accuracy", "logmel_db")}  # fmt: skip
    baselines = json.loads(Path(outs["baselines"]).read_text())
    # the tones are far apart: real held-out sounds are named right; two kinds: chance is 1/2
    assert baselines["test"]["real_sound_kind_accuracy"] == 1.0
    assert baselines["test"]["chance"] == 0.5
    for kind in ("mushroom", "stomp"):
        for version in ("real", "generated"):
            rate, wave = wavfile.read(Path(outs["sounds"]) / f"{kind}-{version}.wav")
            assert rate == 16000 and wave.dtype == np.int16 and 12000 < len(wave) < 17000
    assert Path(outs["spectra"]).is_file()


def test_a_pictures_only_model_is_refused_by_the_sound_evaluation(tmp_path):
    model = MTRNN(Config(io=4, fast=3, slow=2), sequences=1)
    from stages.common import training

    source = training.Provenance(inputs={}, code="0" * 8, fingerprint="f")
    record = training.model_record(model.state_dict(), model.config, 1, source,
                                   clip_ids=torch.zeros(1), frame_stride=2)  # fmt: skip
    training.save_model(tmp_path / "m.pt", record)
    with pytest.raises(StageError, match=r"m\.pt: is a pictures-only MTRNN"):
        se.load_av_mtrnn(tmp_path / "m.pt", torch.device("cpu"))
