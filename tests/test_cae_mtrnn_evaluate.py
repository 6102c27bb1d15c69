"""Stage cae_mtrnn_evaluate: PSNR/SSIM known answers, baselines, the curve, the stage end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from stage_cli import run_stage_cli
from test_cae_train import clips  # noqa: F401  (the fixture: six small clips, two held out)
from test_mtrnn_train import cae  # noqa: F401  (a CAE trained on them)
from test_mtrnn_train import params_of as mtrnn_params_of
from test_mtrnn_train import tiny_params as mtrnn_tiny_params

from stages.gameplay import evaluate as ev
from stages.gameplay import mtrnn_train as mt

REPO = Path(__file__).resolve().parents[1]


def test_psnr_and_ssim_known_answers():
    a = np.zeros((8, 8, 3), np.float32)
    b = a + 0.1  # mse 0.01 -> 20 dB
    assert ev.psnr(a, b) == pytest.approx(20.0)
    assert ev.psnr(a, a) == 100.0
    rng = np.random.default_rng(0)
    c = rng.random((16, 16, 3)).astype(np.float32)
    assert ev.ssim(c, c) == pytest.approx(1.0)
    assert ev.ssim(c, rng.random((16, 16, 3)).astype(np.float32)) < 0.2


def test_baselines_and_scores_skip_the_starting_frame():
    original = np.stack([np.full((8, 8, 3), v, np.float32) for v in (0.0, 0.2, 0.4)])
    versions = ev.versions_of(original, original.copy(), original.copy())
    assert np.array_equal(versions["first_frame"][2], original[0])
    assert np.allclose(versions["mean_frame"][1], 0.2)
    scores = ev.compare(original, versions)
    assert scores["cae"].shape == (2, 2) and (scores["cae"][:, 0] == 100.0).all()
    assert scores["first_frame"][:, 0] == pytest.approx(
        [10 * np.log10(1 / 0.04), 10 * np.log10(1 / 0.16)]
    )


def test_by_step_averages_the_clips_that_reach_each_step():
    scores = [{"m": np.array([[10.0, 0], [20.0, 0]])}, {"m": np.array([[30.0, 0]])}]
    assert ev.by_step(scores, "m").tolist() == [20.0, 20.0]
    assert ev.summary(scores, "m") == (20.0, 0.0)


@pytest.mark.slow
def test_the_stage_scores_train_and_held_out_clips(tmp_path, clips, cae):  # noqa: F811
    mt.main(mtrnn_params_of(mtrnn_tiny_params(tmp_path / "m", clips, cae)))
    full = yaml.safe_load((REPO / "params.yaml").read_text())
    outs = {k: str(tmp_path / Path(v).name) for k, v in full["cae_mtrnn_evaluate"].items()
            if k in ("metrics", "baselines", "stats", "curve", "strips", "recovered",
                     "recovered_baselines", "per_clip")}  # fmt: skip
    changes = outs | {
        "clips": str(clips), "cae": str(cae), "mtrnn": str(tmp_path / "m/mtrnn.pt"),
        "device": "cpu", "recognise_steps": 5,
    }  # fmt: skip
    done = run_stage_cli("stages.gameplay.evaluate", "cae_mtrnn_evaluate", changes, tmp_path)
    assert done.returncode == 0, done.stderr
    metrics = json.loads(Path(outs["metrics"]).read_text())
    assert set(metrics) == {"train", "test"}
    assert set(metrics["test"]) == {"cae_psnr", "cae_ssim", "mtrnn_psnr", "mtrnn_ssim"}
    baselines = json.loads(Path(outs["baselines"]).read_text())
    assert set(baselines["train"]) == {"first_frame_psnr", "first_frame_ssim",
                                       "mean_frame_psnr", "mean_frame_ssim"}  # fmt: skip
    curve = Path(outs["curve"]).read_text().splitlines()
    assert curve[0].split("\t")[:3] == ["step", "train_cae_psnr", "train_mtrnn_psnr"]
    assert len(curve) == 1 + 10  # the longest clip (11 frames at stride 1) scores steps 1..10
    assert Path(outs["strips"]).is_file()
    recovered = json.loads(Path(outs["recovered"]).read_text())
    assert set(recovered["test"]) == {"cae_background", "cae_details", "mtrnn_background",
                                      "mtrnn_details"}  # fmt: skip
    assert all(0 <= v <= 1 for split in recovered.values() for v in split.values())
    per_clip = Path(outs["per_clip"]).read_text().splitlines()
    assert len(per_clip) == 1 + 6 and per_clip[0].split("\t")[3] == "cae_background_psnr"


def test_region_psnr_pools_background_and_sprite_pixels_apart():
    original = np.zeros((3, 4, 4, 3), np.float32)
    version = original.copy()
    version[1:, :, :, :] = 0.1  # background error 0.01 -> 20 dB
    version[1:, 0, 0, :] = 0.5  # the sprite pixel: error 0.25 -> 6.02 dB
    sprites = np.zeros((3, 4, 4), np.uint8)
    sprites[:, 0, 0] = 1
    background, details = ev.region_psnr(original, version, sprites)
    assert background == pytest.approx(20.0) and details == pytest.approx(10 * np.log10(4))
    sprites[1:] = 0  # frame 0 is never scored: no sprite left in the scored frames
    assert np.isnan(ev.region_psnr(original, version, sprites)[1])


def test_recovered_share_counts_clips_at_the_threshold():
    regions = [{"m": np.array([25.0, 10.0])}, {"m": np.array([24.9, 30.0])}]
    assert ev.recovered_share(regions, "m", 0, 25.0) == 0.5
    assert ev.recovered_share(regions, "m", 1, 20.0) == 0.5
