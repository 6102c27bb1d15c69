"""The disentangling sequential VAE (issue 18): its parts on known answers and invariants, the
loop, and the two stages on a tiny MotionMNIST."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.common import training
from stages.common.errors import StageError
from stages.motionmnist import seqvae_evaluate as ev
from stages.motionmnist import seqvae_train as tr
from stages.motionmnist.dmm import gaussian_kl
from stages.motionmnist.seqvae import Config, SequentialVAE, confusion
from tests.stage_cli import run_stage_cli, stage_params

TINY = Config(size=16, frames=7, width=4, hidden=16, static_dim=5, dynamic_dim=3)


def test_shapes_and_every_part_gets_its_gradient() -> None:
    torch.manual_seed(0)
    model = SequentialVAE(TINY)
    frames = torch.rand(3, 7, 16, 16)
    (s_mean, s_scale), (d_mean, d_scale) = model.infer(frames)
    assert s_mean.shape == s_scale.shape == (3, 5) and d_mean.shape == d_scale.shape == (3, 7, 3)
    assert torch.all(s_scale > 0) and torch.all(d_scale > 0)
    assert model.decode(s_mean, d_mean).shape == (3, 7, 16, 16)
    loss, parts, (z_static, z_dynamic) = model.loss(frames, kl_weight=1.0)
    assert torch.isclose(loss, sum(parts.values()))
    loss.backward()
    vae = {id(p) for p in model.vae_parameters()}
    for name, p in model.named_parameters():
        if id(p) in vae:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name  # the ELBO never trains the adversaries
    motion_logits, digit_logits = model.adversaries(z_static.detach(), z_dynamic.detach())
    assert motion_logits.shape == (3, 8) and digit_logits.shape == (3, 10)
    (motion_logits.sum() + digit_logits.sum()).backward()
    assert all(p.grad is not None for p in model.adversary_parameters())


def test_the_kl_is_the_closed_form_against_the_standard_normal_and_the_prior() -> None:
    """With the KL weight 0 the loss is the reconstruction alone; with 1 it adds both KLs, and
    kl_static is the closed form at the posterior's own means and scales."""
    torch.manual_seed(0)
    model = SequentialVAE(TINY)
    frames = torch.rand(2, 4, 16, 16)
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    loss0, parts, _ = model.loss(frames, 0.0, g())
    loss1, same, _ = model.loss(frames, 1.0, g())
    torch.testing.assert_close(loss0, parts["reconstruction"])
    torch.testing.assert_close(
        loss1, same["reconstruction"] + same["kl_static"] + same["kl_dynamic"]
    )
    (mean, scale), _ = model.infer(frames)
    reference = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, scale), torch.distributions.Normal(0.0, 1.0)
    )
    torch.testing.assert_close(parts["kl_static"], reference.sum() / 2)
    torch.testing.assert_close(gaussian_kl(mean, scale, torch.zeros_like(mean), 1.0 + 0 * scale),
                               reference)  # fmt: skip


def test_the_prior_is_causal() -> None:
    """p(z_t | z_<t): changing z from step k on leaves the prior at steps <= k unchanged."""
    torch.manual_seed(0)
    model = SequentialVAE(TINY)
    z = torch.randn(2, 6, 3)
    changed = z.clone()
    changed[:, 3:] = torch.randn(2, 3, 3)
    mean, scale = model.prior(z)
    mean2, scale2 = model.prior(changed)
    torch.testing.assert_close(mean[:, :4], mean2[:, :4])
    torch.testing.assert_close(scale[:, :4], scale2[:, :4])
    assert not torch.allclose(mean[:, 4:], mean2[:, 4:])


def test_swap_renders_one_videos_static_with_the_others_dynamic() -> None:
    torch.manual_seed(0)
    model = SequentialVAE(TINY).eval()
    a, b = torch.rand(2, 5, 16, 16), torch.rand(2, 5, 16, 16)
    (s_a, _), _ = model.infer(a)
    _, (d_b, _) = model.infer(b)
    torch.testing.assert_close(model.swap(a, b), torch.sigmoid(model.decode(s_a, d_b)))
    assert not torch.allclose(model.swap(a, b), model.swap(b, a))


def test_confusion_is_least_at_chance() -> None:
    uniform = torch.zeros(4, 10)
    assert math.isclose(confusion(uniform).item(), math.log(10), rel_tol=1e-6)
    peaked = torch.tensor([[5.0] + [0.0] * 9] * 4)
    assert confusion(peaked) > confusion(uniform)


def test_swap_partners_differ_in_both_factors() -> None:
    digit = np.array([0, 0, 1, 1, 2, 2])
    motion = np.array([0, 1, 0, 1, 0, 1])
    partners = ev.swap_partners(digit, motion, seed=1)
    assert np.all(digit[partners] != digit) and np.all(motion[partners] != motion)
    assert np.array_equal(partners, ev.swap_partners(digit, motion, seed=1))
    with pytest.raises(ValueError, match="video 0"):
        ev.swap_partners(np.array([0, 0]), np.array([0, 1]), seed=1)


def test_training_separates_the_factors_on_a_small_batch() -> None:
    """The loop's two moves do what they say on one fixed batch: the ELBO falls, and the
    adversaries learn what the latents leak."""
    torch.manual_seed(0)
    model = SequentialVAE(TINY)
    frames = torch.zeros(8, 7, 16, 16)  # video i: a 3x3 square from row i, one px right per frame
    for i in range(8):
        for t in range(7):
            frames[i, t, i : i + 3, t : t + 3] = 1.0
    motion, digit = torch.arange(8) % 8, torch.arange(8) % 10
    opt_vae = torch.optim.Adam(model.vae_parameters(), 3e-3)
    opt_adversary = torch.optim.Adam(model.adversary_parameters(), 3e-3)
    g = torch.Generator().manual_seed(0)
    no_cast = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731
    logged = [
        tr.train_step(model, frames, motion, digit, opt_vae, opt_adversary, kl_weight=1.0,
                      adversarial=0.0, generator=g, autocast=no_cast)
        for _ in range(60)
    ]  # fmt: skip
    assert logged[-1]["loss"] < 0.5 * logged[0]["loss"]
    assert logged[-1]["adversary_loss"] < logged[0]["adversary_loss"]


# --- the stages on a tiny MotionMNIST ---------------------------------------------------------


def tiny_sections(out: Path, data: Path) -> tuple[dict, dict]:
    train = {
        "data": str(data), "model": str(out / "m.pt"), "checkpoint": str(out / "ck/last.pt"),
        "live": str(out / "live"), "device": "cpu", "steps": 6, "batch": 4, "log_every": 2,
        "sample_every": 3, "checkpoint_every": 3, "downsample": 4, "kl_warmup": 4,
        "model_config": {"width": 4, "hidden": 16, "static_dim": 5, "dynamic_dim": 3},
    }  # fmt: skip
    evaluate = {
        "data": str(data), "model": train["model"], "device": "cpu", "probe_rows": 150,
        "metrics": str(out / "metrics.json"), "stats": str(out / "stats.json"),
        "swaps": str(out / "swaps.png"),
    }  # fmt: skip
    return train, evaluate


def train_params(out: Path, data: Path) -> tr.Params:
    train, _ = tiny_sections(out, data)
    params = stage_params(tr.Params, "seqvae_train", train, out.parent / f"{out.name}.yaml")
    return params


def test_resume_gives_the_bytes_of_an_unbroken_run(tmp_path, motionmnist_videos) -> None:
    whole = train_params(tmp_path / "a", motionmnist_videos)
    tr.train(whole)
    half = train_params(tmp_path / "b", motionmnist_videos)
    tr.train(replace(half, steps=3))
    assert tr.train(half)["resumed_at"] == 3
    assert whole.model.read_bytes() == half.model.read_bytes()
    curve = lambda p: (p.live / "plots/metrics/train/motion_from_static.tsv").read_text()  # noqa: E731
    assert curve(whole) == curve(half) and curve(whole).count("\n") == 4  # header + 2, 4, 6
    assert tr.train(replace(half, adversarial=2.0))["resumed_at"] == 0  # other params: afresh


def test_bad_params_are_refused_before_work(tmp_path, motionmnist_videos) -> None:
    params = train_params(tmp_path / "p", motionmnist_videos)
    with pytest.raises(StageError, match=r"seqvae_train\.adversarial"):
        tr.check(replace(params, adversarial=-1.0))
    with pytest.raises(StageError, match=r"seqvae_train\.batch.*train split has"):
        tr.train(replace(params, batch=10_000))
    with pytest.raises(StageError, match=r"seqvae_train\.downsample.*multiple of 8"):
        tr.train(replace(params, downsample=3))
    assert not params.model.exists()


@pytest.mark.slow
def test_stages_train_and_evaluate_from_the_cli(tmp_path, motionmnist_videos) -> None:
    train, evaluate = tiny_sections(tmp_path / "out", motionmnist_videos)
    done = run_stage_cli("stages.motionmnist.seqvae_train", "seqvae_train", train, tmp_path / "t")
    assert done.returncode == 0, done.stderr
    config, record = training.load_model(train["model"], Config)
    assert config == replace(TINY, frames=20)
    assert record["step"] == 6 and record["downsample"] == 4
    assert record["inputs"] == {str(motionmnist_videos): training.dvc_md5(motionmnist_videos)}
    assert (Path(train["live"]) / "plots/images/swaps-step-000006.png").is_file()

    done = run_stage_cli(
        "stages.motionmnist.seqvae_evaluate", "seqvae_evaluate", evaluate, tmp_path
    )
    assert done.returncode == 0, done.stderr
    metrics = json.loads(Path(evaluate["metrics"]).read_text())
    assert set(metrics) == {
        "dynamic_motion_nmi", "dynamic_motion_probe", "dynamic_digit_probe", "static_digit_probe",
        "static_motion_probe", "swap_both_right", "swap_digit_right", "swap_motion_right",
    }  # fmt: skip
    assert all(0 <= v <= 1 for v in metrics.values())
    assert metrics["swap_both_right"] <= min(
        metrics["swap_digit_right"], metrics["swap_motion_right"]
    )
    stats = json.loads(Path(evaluate["stats"]).read_text())
    assert stats["model_step"] == 6 and stats["frame_size"] == 16 and stats["test_videos"] > 0
    # the judges, fit on ~20 digits at 16 px, are far above chance (1/80) on real videos
    assert stats["judges_real_both_right"] > 0.1

    # a damaged model file is refused in one line, naming it, before anything is written
    Path(evaluate["metrics"]).unlink()
    Path(train["model"]).write_bytes(b"not a model")
    done = run_stage_cli(
        "stages.motionmnist.seqvae_evaluate", "seqvae_evaluate", evaluate, tmp_path
    )
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert train["model"] in done.stderr and not Path(evaluate["metrics"]).exists()
