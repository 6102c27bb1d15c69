"""Stage mtrnn_train: CAE features of the train clips, the padding-aware loss, resume, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from test_cae_train import clips  # noqa: F401  (the fixture: six small clips, two held out)
from test_cae_train import params_of as cae_params_of
from test_cae_train import tiny_params as cae_tiny_params

from stages.common import training
from stages.common.errors import StageError
from stages.common.params import load_section
from stages.gameplay import cae_train as ct
from stages.gameplay import mtrnn_train as mt
from stages.gameplay.cae_train import to_input
from stages.gameplay.mtrnn import Config, prediction_loss

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cae(tmp_path_factory, clips):  # noqa: F811
    folder = tmp_path_factory.mktemp("cae")
    ct.train(cae_params_of(cae_tiny_params(folder, clips)))
    return folder / "cae.pt"


def tiny_params(folder: Path, clip_data: Path, cae: Path, **changes) -> Path:
    full = yaml.safe_load((REPO / "params.yaml").read_text())
    section = full["mtrnn_train"] | {
        "clips": str(clip_data), "cae": str(cae), "model": str(folder / "mtrnn.pt"),
        "checkpoint": str(folder / "ck/last.pt"), "live": str(folder / "live"), "device": "cpu",
        "model_config": {"fast": 6, "slow": 3, "tau_io": 2.0, "tau_fast": 5.0, "tau_slow": 70.0},
        "frame_stride": 1, "steps": 6, "log_every": 2, "checkpoint_every": 3,
    } | changes  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump({"base": full["base"], "mtrnn_train": section}))
    return path


def params_of(path: Path, **changes) -> mt.Params:
    return replace(load_section(mt.Params, "mtrnn_train", path), **changes)


def test_features_are_the_caes_encoding_of_the_train_frames_zero_padded(clips, cae):  # noqa: F811
    model = mt.load_cae(cae, torch.device("cpu"))
    rows = training.load_split(clips, "train", ["clip_id", "frames", "n_frames"])
    features, lengths = mt.feature_sequences(model, rows, 2, torch.device("cpu"))
    assert rows["clip_id"].tolist() == [1, 3, 4, 6] and lengths.tolist() == [3, 4, 5, 6]
    assert features.shape == (4, 6, 8)
    frames = rows["frames"]
    with torch.no_grad():
        expected = model.encode(to_input(torch.from_numpy(frames[1, 0:8:2])))
    assert torch.allclose(features[1, :4], expected)
    assert (features[0, 3:] == 0).all()


def test_the_loss_counts_real_steps_only():
    targets = torch.zeros(2, 4, 1)
    outputs = torch.zeros(2, 4, 1)
    outputs[0, 3] = outputs[1, 1] = 10.0  # past the end of sequence 0 (length 3): ignored
    loss = prediction_loss(outputs, targets, torch.tensor([3, 5]))
    assert loss.item() == pytest.approx(100.0 / 6)  # 2 + 4 real steps, one error of 10


def test_resume_gives_the_bytes_of_an_unbroken_run(tmp_path, clips, cae):  # noqa: F811
    mt.main(params_of(tiny_params(tmp_path / "a", clips, cae)))
    half = tiny_params(tmp_path / "b", clips, cae)
    mt.main(params_of(half, steps=3))
    assert mt.main(params_of(half))["resumed_at"] == 3
    assert (tmp_path / "a/mtrnn.pt").read_bytes() == (tmp_path / "b/mtrnn.pt").read_bytes()


def test_bad_time_constant_is_refused_by_key(tmp_path, clips, cae):  # noqa: F811
    bad = mt.ModelParams(fast=6, slow=3, tau_io=0.5, tau_fast=5.0, tau_slow=70.0)
    with pytest.raises(StageError, match=r"mtrnn_train\.model_config.*tau_io"):
        mt.check(params_of(tiny_params(tmp_path, clips, cae), model_config=bad), "mtrnn_train")


@pytest.mark.slow
def test_cli_writes_the_model_with_each_clips_cs0(tmp_path, clips, cae):  # noqa: F811
    params = tiny_params(tmp_path, clips, cae)
    env = {**os.environ, "STAGES_RUN_LOG": str(tmp_path / "logs")}
    command = [sys.executable, "-m", "stages.gameplay.mtrnn_train", "--params", str(params)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    config, record = training.load_model(tmp_path / "mtrnn.pt", Config)
    assert config.io == 8 and record["clip_ids"].tolist() == [1, 3, 4, 6]
    assert record["state_dict"]["initial_slow"].shape == (4, 3)
    assert set(record["inputs"]) == {str(clips), str(cae)}
