"""The conditional MoCoGAN (issue 18): shapes and gradients, the factorisation as a known answer,
the held-out filter, the loop (losses fall, resume to the bytes), and both stages on a tiny
MotionMNIST."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from stages.common import training
from stages.common.errors import StageError
from stages.motionmnist import cmocogan_evaluate as ev
from stages.motionmnist import cmocogan_train as tr
from stages.motionmnist.cmocogan import CMoCoGAN, Config, init_weights, losses
from tests.stage_cli import REPO, run_stage_cli, stage_params

TINY = Config(frames=8, size=16, dim_z_content=4, dim_z_style=3, dim_z_motion=5, dim_e_motion=3,
              dim_eps=2, width=4, d_noise=0.1, clip_stride=2)  # fmt: skip


def tiny_model(config: Config = TINY, seed: int = 0) -> CMoCoGAN:
    torch.manual_seed(seed)
    model = CMoCoGAN(config)
    init_weights(model)
    return model


def classes(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(10, (n,), generator=g), torch.randint(8, (n,), generator=g)


def test_shapes() -> None:
    model = tiny_model()
    digit, motion = classes(5)
    z_content, z_motion = model.generator.codes(digit, motion)
    assert z_content.shape == (5, 7) and z_motion.shape == (5, 8, 5)
    video = model.generator(digit, motion)
    assert video.shape == (5, 8, 1, 16, 16) and video.min() >= -1 and video.max() <= 1
    real, logits = model.d_image(video[:, 0])
    assert real.shape == (5,) and logits.shape == (5, 10)
    real, logits = model.d_video(video[:, ::2])  # a clip: every clip_stride-th frame
    assert real.shape == (5,) and logits.shape == (5, 8)
    big = CMoCoGAN(replace(TINY, frames=20, size=64, width=8))  # 64x64, 20 frames build too
    assert big.generator(*classes(2)).shape == (2, 20, 1, 64, 64)
    with pytest.raises(ValueError, match="clip_stride"):
        replace(TINY, clip_stride=3)


def test_every_parameter_gets_a_gradient() -> None:
    model = tiny_model()
    digit, motion = torch.arange(10) % 10, torch.arange(10) % 8  # every class in the batch
    real = torch.rand(10, 4, 1, 16, 16) * 2 - 1
    z_content, z_motion = model.generator.codes(digit, motion)
    fake = model.generator.frames(z_content, z_motion[:, ::2])
    picks = torch.randint(4, (10, 2))
    losses(model, real, fake.detach(), digit, motion, picks, 1.0, "d")["loss"].backward()
    losses(model, real, fake, digit, motion, picks, 1.0, "g")["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


def test_content_ignores_the_motion_class_and_motion_the_digit() -> None:
    """The factorisation as a known answer: from the same noise, z_C is the same whatever the
    motion class and z_M the same whatever the digit; each changes with its own class."""
    model = tiny_model().eval()

    def codes(digit: list[int], motion: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(7)
        return model.generator.codes(torch.tensor(digit), torch.tensor(motion), g)

    c1, m1 = codes([3, 5], [1, 6])
    c2, m2 = codes([3, 5], [4, 0])  # other motions
    c3, m3 = codes([9, 0], [1, 6])  # other digits
    torch.testing.assert_close(c1, c2, rtol=0, atol=0)
    torch.testing.assert_close(m1, m3, rtol=0, atol=0)
    assert not torch.allclose(c1, c3) and not torch.allclose(m1, m2)
    # the style part of z_C is noise alone: equal digits, equal E_C(digit)
    torch.testing.assert_close(c1[:, :4], model.generator.content.embed(torch.tensor([3, 5])))


def test_heldout_filter_on_a_hand_made_table() -> None:
    digit = np.array([0, 0, 1, 1, 2, 0, 1])
    motion = np.array([0, 3, 3, 0, 0, 0, 3])
    heldout = tr.heldout_array([tr.Pair(0, 0), tr.Pair(1, 3)])
    assert tr.seen_mask(digit, motion, heldout).tolist() == [
        False, True, False, True, True, False, False,
    ]  # fmt: skip
    assert tr.seen_mask(digit, motion, heldout[:0]).all()
    pairs = np.array([[0, 0], [0, 1], [1, 3]])
    assert ev.is_heldout(pairs, heldout).tolist() == [True, False, True]
    assert len(ev.all_pairs()) == 80 and ev.is_heldout(ev.all_pairs(), heldout).sum() == 2


def test_losses_fall_on_a_small_batch() -> None:
    """D learns to tell real from fake and classify the real batch; against that D frozen, G
    learns to fool it and to name the requested classes."""
    model = tiny_model()
    g = torch.Generator().manual_seed(3)
    digit, motion = torch.arange(8) % 10, torch.arange(8) % 8
    real = torch.rand(8, 4, 1, 16, 16, generator=g) * 2 - 1
    picks = torch.randint(4, (8, 2), generator=g)
    fake = model.generator.frames(*[
        z if i == 0 else z[:, ::2] for i, z in enumerate(model.generator.codes(digit, motion, g))
    ]).detach()  # fmt: skip
    opt_d = torch.optim.Adam(model.discriminator_parameters(), 2e-3)
    first = losses(model, real, fake, digit, motion, picks, 1.0, "d")["loss"].item()
    for _ in range(40):
        loss = losses(model, real, fake, digit, motion, picks, 1.0, "d")["loss"]
        opt_d.zero_grad()
        loss.backward()
        opt_d.step()
    assert loss.item() < 0.5 * first

    opt_g = torch.optim.Adam(model.generator.parameters(), 2e-3)
    fixed = [z.detach() for z in model.generator.codes(digit, motion, g)]

    def g_loss() -> torch.Tensor:
        z_content = model.generator.content.embed(digit)
        z_content = torch.cat([z_content, fixed[0][:, z_content.shape[1] :]], 1)
        fake = model.generator.frames(z_content, fixed[1][:, ::2])
        return losses(model, real, fake, digit, motion, picks, 1.0, "g")["loss"]

    first = g_loss().item()
    for _ in range(40):
        loss = g_loss()
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()
    assert loss.item() < 0.5 * first


# --- the stages on a tiny MotionMNIST ---------------------------------------------------------


def tiny_sections(out: Path, data: Path) -> tuple[dict, dict]:
    train = {
        "data": str(data), "model": str(out / "m.pt"), "checkpoint": str(out / "ck/last.pt"),
        "live": str(out / "live"), "device": "cpu", "steps": 6, "batch": 4, "log_every": 2,
        "sample_every": 3, "checkpoint_every": 3, "downsample": 4, "image_frames": 2,
        "model_config": {"dim_z_content": 4, "dim_z_style": 3, "dim_z_motion": 5,
                         "dim_e_motion": 3, "dim_eps": 2, "width": 4, "d_noise": 0.1,
                         "clip_stride": 2},
    }  # fmt: skip
    evaluate = {"data": str(data), "model": train["model"], "device": "cpu", "probe_rows": 100,
                "videos_per_pair": 2, "batch": 64} | {
        k: str(out / f"{k}{suffix}")
        for k, suffix in (("metrics", ".json"), ("stats", ".json"), ("pairs", ".tsv"),
                          ("grid", ".png"))
    }  # fmt: skip
    return train, evaluate


def train_params(out: Path, data: Path, **changes) -> tr.Params:
    train, _ = tiny_sections(out, data)
    params = stage_params(tr.Params, "cmocogan_train", train, out.parent / f"{out.name}.yaml")
    return replace(params, **changes)


def test_resume_gives_the_bytes_of_an_unbroken_run(tmp_path, motionmnist_videos) -> None:
    whole = train_params(tmp_path / "a", motionmnist_videos)
    done = tr.train(whole)
    assert done["dropped_heldout"] > 0 and done["resumed_at"] == 0
    half = train_params(tmp_path / "b", motionmnist_videos)
    tr.train(replace(half, steps=3))
    assert tr.train(half)["resumed_at"] == 3
    assert whole.model.read_bytes() == half.model.read_bytes()
    loss = lambda p: (p.live / "plots/metrics/train/d_image.tsv").read_text()  # noqa: E731
    assert loss(whole) == loss(half) and loss(whole).count("\n") == 4  # header + steps 2, 4, 6
    assert tr.train(replace(half, lr=0.002))["resumed_at"] == 0  # another lr starts afresh


def test_bad_params_are_refused_before_work(tmp_path, motionmnist_videos) -> None:
    params = train_params(tmp_path / "p", motionmnist_videos)
    with pytest.raises(StageError, match=r"cmocogan_train\.batch"):
        tr.check(replace(params, batch=0))
    with pytest.raises(StageError, match=r"cmocogan_train\.heldout\[1\].*motion 0\.\.7, got"):
        tr.check(replace(params, heldout=[tr.Pair(0, 0), tr.Pair(3, 8)]))
    with pytest.raises(StageError, match=r"cmocogan_train\.heldout.*twice"):
        tr.check(replace(params, heldout=[tr.Pair(0, 0), tr.Pair(0, 0)]))
    every_motion_of_4 = [tr.Pair(4, m) for m in range(8)]
    with pytest.raises(StageError, match=r"every pair of digit 4"):
        tr.check(replace(params, heldout=every_motion_of_4))
    with pytest.raises(StageError, match=r"cmocogan_train\.batch.*seen pairs"):
        tr.train(replace(params, batch=10_000))


@pytest.mark.slow
def test_stages_train_and_evaluate_from_the_cli(tmp_path, motionmnist_videos) -> None:
    train, evaluate = tiny_sections(tmp_path / "out", motionmnist_videos)
    train["downsample"] = 2  # 32 px frames: the digit judge's crops need 50+ pixels
    done = run_stage_cli("stages.motionmnist.cmocogan_train", "cmocogan_train", train,
                         tmp_path / "t")  # fmt: skip
    assert done.returncode == 0, done.stderr
    config, record = training.load_model(train["model"], Config)
    assert config.size == 32 and config.frames == 20 and config.width == 4
    assert record["step"] == 6 and record["downsample"] == 2
    heldout = yaml.safe_load((REPO / "params.yaml").read_text())["cmocogan_train"]["heldout"]
    assert record["heldout"] == [[p["digit"], p["motion"]] for p in heldout]
    assert record["inputs"] == {str(motionmnist_videos): training.dvc_md5(motionmnist_videos)}
    model = CMoCoGAN(config)
    training.load_state(train["model"], model, record["state_dict"])  # round-trips
    assert (Path(train["live"]) / "plots/images/samples-step-000006.png").is_file()

    done = run_stage_cli("stages.motionmnist.cmocogan_evaluate", "cmocogan_evaluate", evaluate,
                         tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    metrics = json.loads(Path(evaluate["metrics"]).read_text())
    assert set(metrics) == {
        "heldout_both_right", "heldout_digit_right", "heldout_motion_right", "seen_both_right",
        "seen_digit_right", "seen_motion_right", "real_test_both_right", "real_test_digit_right",
    }  # fmt: skip
    assert all(0 <= v <= 1 for v in metrics.values())
    stats = json.loads(Path(evaluate["stats"]).read_text())
    assert stats["heldout_pairs"] == record["heldout"] and len(stats["per_pair"]) == 80
    rows = Path(evaluate["pairs"]).read_text().splitlines()
    assert rows[0].split("\t")[:3] == ["pair", "heldout", "both_right"] and len(rows) == 81
    assert Path(evaluate["grid"]).is_file()

    # a corrupt model file is refused in one line, naming it, exit 2
    Path(train["model"]).write_bytes(b"not a model")
    Path(evaluate["metrics"]).unlink()
    done = run_stage_cli("stages.motionmnist.cmocogan_evaluate", "cmocogan_evaluate", evaluate,
                         tmp_path)  # fmt: skip
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert "m.pt" in done.stderr and not Path(evaluate["metrics"]).exists()
