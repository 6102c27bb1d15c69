"""Stage cae_train: train-split frames only, resume to the same bytes, the CLI, bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages.common import dataset, training
from stages.common.errors import StageError
from stages.common.params import load_section
from stages.gameplay import cae_train as ct
from stages.gameplay import clips as gc
from stages.gameplay.cae import Config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """Six 32x32 clips in the gameplay-clips schema: a coloured square (the sprite, in the
    `sprites` mask) moving over a gradient; clip k has 6 + k frames, clips 1 and 4 held out."""
    out = tmp_path_factory.mktemp("clips") / "clips"
    base = load_section(gc.Params, "gameplay_clips", REPO / "params.yaml")
    schema = gc.schema(replace(base, size=32), max_frames=12, max_samples=4)
    frames = np.zeros((6, 12, 32, 32, 3), np.uint8)
    sprites = np.zeros((6, 12, 32, 32), np.uint8)
    frames[..., 2] = np.linspace(80, 200, 32, dtype=np.uint8)[:, None]
    for k in range(6):
        for t in range(6 + k):
            frames[k, t, 10:18, 2 * t + k : 2 * t + k + 8, k % 3] = 255
            sprites[k, t, 10:18, 2 * t + k : 2 * t + k + 8] = 1
    out.mkdir()
    with dataset.ShardWriter(out, schema, shard_rows=6) as writer:
        writer.write({
            "clip_id": np.arange(1, 7), "recording": ["r.mp4"] * 6, "label": ["stomp"] * 6,
            "label_index": np.full(6, 2, np.int16), "start": np.zeros(6), "end": np.ones(6),
            "n_frames": np.arange(6, 12, dtype=np.int32), "frames": frames, "sprites": sprites,
            "n_samples": np.full(6, 4, np.int32), "audio": np.zeros((6, 4), np.float32),
            "audio_rate": np.full(6, 16000, np.int32),
            "split": ["train", "test", "train", "train", "test", "train"],
        })  # fmt: skip
    return out


def tiny_params(folder: Path, clips: Path, **changes) -> Path:
    full = yaml.safe_load((REPO / "params.yaml").read_text())
    section = full["cae_train"] | {
        "clips": str(clips), "model": str(folder / "cae.pt"),
        "checkpoint": str(folder / "ck/last.pt"), "live": str(folder / "live"), "device": "cpu",
        "model_config": {"channels": [4, 4, 8, 8, 8], "bottleneck": 8}, "frame_stride": 1,
        "steps": 6, "batch": 8, "log_every": 2, "sample_every": 3, "checkpoint_every": 3,
    } | changes  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump({"base": full["base"], "cae_train": section}))
    return path


def params_of(path: Path, **changes) -> ct.Params:
    return replace(load_section(ct.Params, "cae_train", path), **changes)


def test_only_the_train_split_is_seen_every_stride_th_frame(clips):
    frames = ct.training_frames(clips, 2)
    # train clips 0, 2, 3, 5 have 6, 8, 9, 11 frames: 3 + 4 + 5 + 6 at stride 2
    assert frames.shape == (18, 32, 32, 3)
    assert frames.max() == 255  # the squares are there, the zero padding is not
    assert not (frames.reshape(18, -1) == 0).all(axis=1).any()


def test_resume_gives_the_bytes_of_an_unbroken_run(tmp_path, clips):
    ct.train(params_of(tiny_params(tmp_path / "a", clips)))
    half = tiny_params(tmp_path / "b", clips)
    ct.train(params_of(half, steps=3))
    assert ct.train(params_of(half))["resumed_at"] == 3
    assert (tmp_path / "a/cae.pt").read_bytes() == (tmp_path / "b/cae.pt").read_bytes()
    curve = "live/plots/metrics/train/mse.tsv"
    assert (tmp_path / "a" / curve).read_text() == (tmp_path / "b" / curve).read_text()


def test_bad_params_are_refused_by_key(tmp_path, clips):
    with pytest.raises(StageError, match=r"cae_train\.batch.*train split has 34"):
        ct.train(params_of(tiny_params(tmp_path, clips), batch=100))
    with pytest.raises(StageError, match=r"cae_train\.model_config"):
        ct.check(params_of(tiny_params(tmp_path, clips), model_config=ct.ModelParams((4, 4), 8)))


@pytest.mark.slow
def test_cli_writes_a_model_that_rebuilds_itself_and_refuses_a_corrupt_one(tmp_path, clips):
    params = tiny_params(tmp_path, clips)
    env = {**os.environ, "STAGES_RUN_LOG": str(tmp_path / "logs")}
    command = [sys.executable, "-m", "stages.gameplay.cae_train", "--params", str(params)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    config, record = training.load_model(tmp_path / "cae.pt", Config)
    assert config == Config(size=32, channels=(4, 4, 8, 8, 8), bottleneck=8)
    assert record["inputs"] == {str(clips): training.dvc_md5(clips)} and record["step"] == 6
    assert (tmp_path / "live/plots/images/reconstructions-step-000006.png").is_file()
    (tmp_path / "cae.pt").write_bytes(b"\0" * 64)
    with pytest.raises(StageError, match="not a readable model file"):
        training.load_model(tmp_path / "cae.pt", Config)
