"""The convolutional deep Markov model (issue 18): its parts on known answers, the baselines on
exact motions, and the two stages on a tiny MotionMNIST."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.common import training
from stages.common.errors import StageError
from stages.motionmnist import dmm_evaluate as ev
from stages.motionmnist import dmm_train as tr
from stages.motionmnist.dmm import DMM, Config, gaussian_kl
from tests.stage_cli import run_stage_cli, stage_params

TINY = Config(size=16, width=4, z_dim=6, hidden=16)


def test_gaussian_kl_is_torchs_closed_form() -> None:
    g = torch.Generator().manual_seed(0)
    qm, pm = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    qs, ps = torch.rand(5, 3, generator=g) + 0.1, torch.rand(5, 3, generator=g) + 0.1
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(qm, qs), torch.distributions.Normal(pm, ps)
    )
    torch.testing.assert_close(gaussian_kl(qm, qs, pm, ps), reference)
    assert torch.all(gaussian_kl(qm, qs, qm, qs).abs() < 1e-6)


def test_shapes_probabilities_and_gradients() -> None:
    torch.manual_seed(0)
    model = DMM(TINY)
    frames = torch.rand(3, 7, 16, 16)
    z, mean, scale = model.infer(frames, sample=True)
    assert z.shape == mean.shape == scale.shape == (3, 7, 6) and torch.all(scale > 0)
    predicted = model.predict(frames[:, :4], horizon=5)
    assert predicted.shape == (3, 5, 16, 16)
    assert torch.all((predicted >= 0) & (predicted <= 1))
    loss, parts = model.loss(frames, kl_weight=1.0)
    assert torch.isclose(loss, parts["reconstruction"] + parts["kl"])
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    with pytest.raises(ValueError, match="multiple of 8"):
        DMM(replace(TINY, size=12))


def test_prediction_uses_only_the_context() -> None:
    """What comes after the context cannot leak into the prediction."""
    model = DMM(TINY).eval()
    frames = torch.rand(2, 8, 16, 16)
    changed = frames.clone()
    changed[:, 4:] = torch.rand(2, 4, 16, 16)
    torch.testing.assert_close(model.predict(frames[:, :4], 4), model.predict(changed[:, :4], 4))


def moving_square(steps: int, velocity: tuple[int, int]) -> np.ndarray:
    """A 4x4 white square on 32x32, moved `velocity` px per frame: (1, steps, 32, 32)."""
    frames = np.zeros((1, steps, 32, 32), np.float32)
    for t in range(steps):
        r, c = 4 + velocity[0] * t, 4 + velocity[1] * t
        frames[0, t, r : r + 4, c : c + 4] = 1.0
    return frames


def test_constant_velocity_is_exact_on_constant_motion_and_copy_last_is_not() -> None:
    video = moving_square(10, (1, 2))
    context, truth = video[:, :5], video[:, 5:]
    np.testing.assert_allclose(ev.constant_velocity(context, 5), truth, atol=1e-6)
    mse, ssim = ev.per_step_scores(truth, ev.constant_velocity(context, 5))
    np.testing.assert_allclose(mse, 0, atol=1e-10)
    np.testing.assert_allclose(ssim, 1, atol=1e-6)
    held = ev.copy_last(context, 5)
    assert np.array_equal(held[0, 3], context[0, -1])
    mse, _ = ev.per_step_scores(truth, held)
    assert np.all(np.diff(mse) >= 0) and mse[0] > 0  # it falls further behind every step


def test_centroid_known_answers() -> None:
    frame = np.zeros((5, 7))
    frame[1, 2], frame[3, 6] = 1.0, 3.0
    np.testing.assert_allclose(ev.centroid(frame), [(1 + 9) / 4, (2 + 18) / 4])
    np.testing.assert_allclose(ev.centroid(np.zeros((5, 7))), [2.0, 3.0])


def test_steps_beating_counts_strict_wins_over_every_baseline() -> None:
    ours = np.array([1.0, 2.0, 3.0])
    assert ev.steps_beating(ours, [np.array([2.0, 2.0, 4.0]), np.array([1.5, 3.0, 5.0])], True) == 2
    assert ev.steps_beating(ours, [np.array([0.0, 1.0, 2.0])], False) == 3


# --- the stages on a tiny MotionMNIST ---------------------------------------------------------


def tiny_sections(out: Path, data: Path) -> tuple[dict, dict]:
    train = {
        "data": str(data), "model": str(out / "m.pt"), "checkpoint": str(out / "ck/last.pt"),
        "live": str(out / "live"), "device": "cpu", "steps": 6, "batch": 4, "log_every": 2,
        "sample_every": 3, "checkpoint_every": 3, "downsample": 4, "kl_warmup": 4,
        "model_config": {"width": 4, "z_dim": 6, "hidden": 16},
    }  # fmt: skip
    evaluate = {"data": str(data), "model": train["model"], "device": "cpu", "batch": 16} | {
        k: str(out / f"{k}{suffix}")
        for k, suffix in (("metrics", ".json"), ("baselines", ".json"), ("mse_by_step", ".tsv"),
                          ("ssim_by_step", ".tsv"), ("strips", ".png"), ("stats", ".json"))
    }  # fmt: skip
    return train, evaluate


def train_params(out: Path, data: Path, **changes) -> tr.Params:
    train, _ = tiny_sections(out, data)
    params = stage_params(tr.Params, "dmm_train", train, out.parent / f"{out.name}.yaml")
    return replace(params, **changes)


def test_resume_gives_the_bytes_of_an_unbroken_run(tmp_path, motionmnist_videos) -> None:
    whole = train_params(tmp_path / "a", motionmnist_videos)
    tr.train(whole)
    half = train_params(tmp_path / "b", motionmnist_videos)
    tr.train(replace(half, steps=3))
    assert tr.train(half)["resumed_at"] == 3
    assert whole.model.read_bytes() == half.model.read_bytes()
    loss = lambda p: (p.live / "plots/metrics/train/loss.tsv").read_text()  # noqa: E731
    assert loss(whole) == loss(half) and loss(whole).count("\n") == 4  # header + steps 2, 4, 6
    assert tr.train(replace(half, lr=0.002))["resumed_at"] == 0  # another lr starts afresh


@pytest.mark.slow
def test_stages_train_and_evaluate_from_the_cli(tmp_path, motionmnist_videos) -> None:
    train, evaluate = tiny_sections(tmp_path / "out", motionmnist_videos)
    done = run_stage_cli("stages.motionmnist.dmm_train", "dmm_train", train, tmp_path / "t")
    assert done.returncode == 0, done.stderr
    config, record = training.load_model(train["model"], Config)
    assert config == Config(size=16, width=4, z_dim=6, hidden=16)
    assert record["step"] == 6 and record["downsample"] == 4
    assert record["inputs"] == {str(motionmnist_videos): training.dvc_md5(motionmnist_videos)}
    assert (Path(train["live"]) / "plots/images/predictions-step-000006.png").is_file()

    done = run_stage_cli("stages.motionmnist.dmm_evaluate", "dmm_evaluate", evaluate, tmp_path)
    assert done.returncode == 0, done.stderr
    metrics = json.loads(Path(evaluate["metrics"]).read_text())
    assert set(metrics) == {"mse_step1", "mse_step10", "ssim_step1", "ssim_step10",
                            "steps_beating_both_mse", "steps_beating_both_ssim",
                            "steps_beating_blank_mse"}  # fmt: skip
    assert 0 <= metrics["steps_beating_both_mse"] <= 10
    baselines = json.loads(Path(evaluate["baselines"]).read_text())
    assert set(baselines) == {"copy_last", "constant_velocity"}
    # digits move 1.8 / 4 px per frame at this size: holding the last frame falls behind
    assert baselines["copy_last"]["mse_step10"] > baselines["copy_last"]["mse_step1"]
    rows = Path(evaluate["mse_by_step"]).read_text().splitlines()
    assert rows[0].split("\t") == ["step", "dmm", "copy_last", "constant_velocity", "blank"]
    assert len(rows) == 11 and rows[1].split("\t")[1] == f"{metrics['mse_step1']:.6f}"
    stats = json.loads(Path(evaluate["stats"]).read_text())
    assert stats["test_videos"] > 0 and stats["frame_size"] == 16
    assert set(stats["blank_frame"]) == {"mse_step1", "mse_step10", "ssim_step1", "ssim_step10"}

    # a bad context is refused in one line, naming the key, before anything is written
    Path(evaluate["metrics"]).unlink()
    done = run_stage_cli(
        "stages.motionmnist.dmm_evaluate", "dmm_evaluate", evaluate | {"context": 20}, tmp_path
    )
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert "dmm_evaluate.context" in done.stderr and not Path(evaluate["metrics"]).exists()


def test_bad_params_are_refused_before_work(tmp_path, motionmnist_videos) -> None:
    params = train_params(tmp_path / "p", motionmnist_videos)
    with pytest.raises(StageError, match=r"dmm_train\.batch"):
        tr.check(replace(params, batch=0))
    with pytest.raises(StageError, match=r"dmm_train\.batch.*train split has"):
        tr.train(replace(params, batch=10_000))
    with pytest.raises(StageError, match=r"dmm_train\.downsample.*multiple of 8"):
        tr.train(replace(params, downsample=3))
