"""MDBiGAN (seed 002): the model's shapes and gradients, known answers, the loop, the stages."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from stages.common import training
from stages.common.errors import StageError
from stages.common.params import load_section
from stages.motionmnist import evaluate as ev
from stages.motionmnist import train as tr
from stages.motionmnist.mdbigan import Config, MDBiGAN, init_weights, shrink

REPO = Path(__file__).resolve().parents[1]
TINY = Config(frames=8, size=16, dim_z_content=6, dim_z_motion=3, width=4, d_hidden=8)


def tiny_model(config: Config = TINY, seed: int = 0) -> MDBiGAN:
    torch.manual_seed(seed)
    model = MDBiGAN(config)
    init_weights(model)
    return model


def test_shapes():
    model = tiny_model()
    video, z_motion = model.generator.sample(5)
    assert video.shape == (5, 8, 1, 16, 16) and z_motion.shape == (5, 8, 3)
    assert video.min() >= -1 and video.max() <= 1  # tanh
    assert model.encoder(video).shape == (5, 8, 3)
    assert model.d_image(video[:, 0], z_motion[:, 0]).shape == (5,)
    assert model.d_video(video, z_motion).shape == (5,)
    big = MDBiGAN(Config())  # the authors' sizes build too: 64x64, 20 frames
    assert big.generator.sample(2)[0].shape == (2, 20, 1, 64, 64)


@pytest.mark.parametrize("spectral_norm", [False, True])
def test_every_parameter_gets_a_gradient(spectral_norm):
    model = tiny_model(Config(**(asdict(TINY) | {"spectral_norm": spectral_norm,
                                                 "motion_noise": True})))  # fmt: skip
    video, z = model.generator.sample(4)
    e = model.encoder(video)
    loss = model.d_video(video, z).sum() + model.d_image(video[:, 1], e[:, 1]).sum()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert missing == []


def test_motion_generator_is_the_authors_recurrence():
    """z_M(t) = BN(h_t), h_t = GRU(e_t, h_{t-1}), h_0 = 0, e_1 ~ N(0, I), e_{t+1} = W h_t:
    the GRU equations written out by hand give the same codes."""
    motion = tiny_model().generator.motion
    cell, linear = motion.cell, motion.next_input
    e = torch.randn(6, 3, generator=torch.Generator().manual_seed(4))
    h, states = torch.zeros(6, 3), []
    w_ir, w_iz, w_in = cell.weight_ih.chunk(3)
    w_hr, w_hz, w_hn = cell.weight_hh.chunk(3)
    b_ir, b_iz, b_in = cell.bias_ih.chunk(3)
    b_hr, b_hz, b_hn = cell.bias_hh.chunk(3)
    for _ in range(TINY.frames):
        r = torch.sigmoid(e @ w_ir.T + b_ir + h @ w_hr.T + b_hr)
        z = torch.sigmoid(e @ w_iz.T + b_iz + h @ w_hz.T + b_hz)
        n = torch.tanh(e @ w_in.T + b_in + r * (h @ w_hn.T + b_hn))
        h = (1 - z) * n + z * h
        states.append(h)
        e = linear(h)
    stacked = torch.stack(states, 1).flatten(0, 1)
    normalised = (stacked - stacked.mean(0)) / torch.sqrt(stacked.var(0, unbiased=False) + 1e-5)
    expected = normalised * motion.norm.weight + motion.norm.bias
    got = motion(6, torch.Generator().manual_seed(4))
    assert torch.allclose(got.flatten(0, 1), expected, atol=1e-5)


def test_losses_at_an_undecided_discriminator_are_log_2():
    """With the discriminators' last layers zeroed every logit is 0: each D loss is 2 ln 2 and
    the flipped-label G/E loss 4 ln 2 (BCE of 0.5 against 0 or 1 is ln 2)."""
    model = tiny_model()
    for d in (model.d_image, model.d_video):
        torch.nn.init.zeros_(d.joint[-1].weight)
        torch.nn.init.zeros_(d.joint[-1].bias)
    x = torch.rand(4, 8, 1, 16, 16) * 2 - 1
    opt_d = torch.optim.SGD(model.discriminator_parameters(), lr=0.0)
    opt_ge = torch.optim.SGD(model.generator_parameters(), lr=0.0)
    losses = tr.train_step(
        model, x, opt_d, opt_ge, image_frames=2, latent_regression=0.0, noise=0.0,
        generator=torch.Generator().manual_seed(0),
        autocast=lambda: torch.autocast("cpu", enabled=False),
    )  # fmt: skip
    assert losses["loss_d_image"].item() == pytest.approx(2 * math.log(2), abs=1e-6)
    assert losses["loss_d_video"].item() == pytest.approx(2 * math.log(2), abs=1e-6)
    assert losses["loss_ge"].item() == pytest.approx(4 * math.log(2), abs=1e-6)


def test_pick_frames_keeps_frames_with_their_codes():
    video = torch.arange(3 * 5, dtype=torch.float32).view(3, 5, 1, 1, 1).expand(3, 5, 1, 2, 2)
    z = torch.arange(3 * 5, dtype=torch.float32).view(3, 5, 1)
    frames, codes = tr.pick_frames(video, z, 4, torch.Generator().manual_seed(1))
    assert frames.shape == (12, 1, 2, 2) and codes.shape == (12, 1)
    assert torch.equal(frames[:, 0, 0, 0], codes[:, 0])
    assert torch.equal(codes[:4, 0] // 5, torch.zeros(4))  # the first 4 from the first video


def test_shrink_is_a_mean_pool():
    frames = torch.tensor(
        [[[[0, 2, 4, 8], [2, 0, 4, 8], [1, 1, 0, 0], [1, 2, 0, 0]]]], dtype=torch.uint8
    )
    assert shrink(frames, 2).tolist() == [[[[1, 6], [1, 0]]]]


def test_the_encoder_overfits_one_batch_by_latent_regression():
    """The loop's regression term alone drives |E(G(z)) - z|^2 down on one fixed batch."""
    model = tiny_model()
    video, z = model.generator.sample(8, torch.Generator().manual_seed(2))
    video, z = video.detach(), z.detach()
    opt = torch.optim.Adam(model.encoder.parameters(), 1e-2)
    first = None
    for _ in range(300):
        loss = F.mse_loss(model.encoder(video), z)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.01 * first


# --- evaluation helpers -----------------------------------------------------------------------


def test_centroids_and_digit_crops_known_answers():
    frames = np.zeros((1, 2, 8, 8), np.uint8)
    frames[0, 0, 2, 5] = 255  # one pixel at x=5, y=2
    frames[0, 1, 4:6, 1:3] = 100  # a 2x2 block: centre x=1.5, y=4.5
    assert np.allclose(ev.centroids(frames)[0], [[5, 2], [1.5, 4.5]])
    crops = ev.digit_crops(frames, 3)
    assert crops.shape == (1, 2, 9)
    assert crops[0, 0].reshape(3, 3)[1, 1] == 1.0  # the pixel sits in the window's centre
    assert ev.centroids(np.zeros((1, 1, 4, 4), np.uint8)).tolist() == [[[2.0, 2.0]]]


def test_travel_is_the_centroid_displacement():
    frames = np.zeros((2, 3, 16, 16), np.uint8)
    frames[0, 0, 2, 2] = frames[0, 2, 2, 10] = 255  # moves 8 px right
    frames[1, :, 5, 5] = 255  # stays
    assert ev.travel(frames) == pytest.approx(4.0)


def test_kmeans_and_probe_scores_on_separable_and_random_features():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(8), 40)
    separable = np.eye(8)[labels] * 10 + rng.normal(0, 0.1, (320, 8))
    nmi, ari = ev.kmeans_scores(separable, labels, 0)
    assert nmi > 0.99 and ari > 0.99
    noise = rng.normal(size=(320, 8))
    assert ev.kmeans_scores(noise, labels, 0)[0] < 0.2
    assert ev.probe(separable, labels, separable, labels) == 1.0
    assert ev.probe(noise[:160], labels[:160], noise[160:], labels[160:]) < 0.35


# --- the stages on a tiny params file -----------------------------------------------------


def tiny_params(tmp_path: Path, data: Path, **train_changes) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    out = tmp_path / "out"
    train = params["mdbigan_train"] | {
        "data": str(data), "model": str(out / "m.pt"), "history": str(out / "history"),
        "checkpoint": str(out / "ck/last.pt"), "live": str(out / "live"), "device": "cpu",
        "steps": 6, "batch": 4, "log_every": 2, "sample_every": 3, "snapshot_every": 3,
        "checkpoint_every": 3, "downsample": 4,
    }  # fmt: skip
    train["model_config"] = train["model_config"] | {"width": 4, "d_hidden": 8}
    evaluate = params["mdbigan_evaluate"] | {
        k: str(out / Path(v).name) for k, v in params["mdbigan_evaluate"].items()
        if k in ("metrics", "baselines", "judges", "stats", "curve", "scatter", "regenerated")
    }  # fmt: skip
    evaluate |= {"data": str(data), "model": train["model"], "history": train["history"],
                 "device": "cpu", "probe_rows": 150}  # fmt: skip
    train |= train_changes
    path = tmp_path / "params.yaml"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"base": params["base"], "mdbigan_train": train,
                                    "mdbigan_evaluate": evaluate}))  # fmt: skip
    return path


@pytest.fixture(scope="module")
def videos(motionmnist_videos: Path) -> Path:
    return motionmnist_videos


def params_of(path: Path, **changes) -> tr.Params:
    return replace(load_section(tr.Params, "mdbigan_train", path), **changes)


def run(module: str, params: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "STAGES_RUN_LOG": str(params.parent / "logs")}
    return subprocess.run([sys.executable, "-m", module, "--params", str(params), *extra],
                          cwd=REPO, env=env, capture_output=True, text=True)  # fmt: skip


def test_resume_gives_the_bytes_of_an_unbroken_run(tmp_path, videos):
    """k steps, then resume to N, against N steps in one run: the same model file bytes."""
    whole = params_of(tiny_params(tmp_path / "a", videos))
    tr.train(whole)
    half = tiny_params(tmp_path / "b", videos)
    tr.train(params_of(half, steps=3))
    summary = tr.train(params_of(half))
    assert summary["resumed_at"] == 3
    a, b = whole.model, params_of(half).model
    assert a.read_bytes() == b.read_bytes()
    loss = lambda p: (p.parent / "live/plots/metrics/train/loss_ge.tsv").read_text()  # noqa: E731
    assert loss(a) == loss(b)
    # a changed param that shapes training starts afresh
    summary = tr.train(params_of(half, lr=0.001))
    assert summary["resumed_at"] == 0


@pytest.mark.slow
def test_stages_train_and_evaluate_from_the_cli(tmp_path, videos):
    params = tiny_params(tmp_path, videos)
    done = run("stages.motionmnist.train", params)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "history").iterdir()) == [
        "step-000003.pt",
        "step-000006.pt",
    ]
    assert (out / "live/plots/images/samples-step-000006.png").is_file()
    config, record = training.load_model(out / "m.pt", Config)
    assert record["step"] == 6 and config.size == 16 and record["device"] == "cpu"
    assert list(record["inputs"]) == [str(videos)]
    assert record["inputs"][str(videos)] == training.dvc_md5(videos)

    done = run("stages.motionmnist.evaluate", params)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"motion_nmi", "motion_ari", "motion_probe", "digit_probe",
                            "regenerated_motion_agreement",
                            "regenerated_digit_consistency",
                            "regenerated_travel_px"}  # fmt: skip
    travel = metrics.pop("regenerated_travel_px")
    assert all(0 <= v <= 1 for v in metrics.values()) and travel >= 0
    baselines = json.loads((out / "baselines.json").read_text())
    assert baselines["pixels_pca"]["motion_probe"] > 0.9  # motion is easy from pixels
    judges = json.loads((out / "judges.json").read_text())
    assert judges["real_motion_accuracy"] > 0.9  # the motion judge is right on real videos
    assert judges["real_travel_px"] > 5  # real digits cross the (16 px) frame
    curve = (out / "curve.tsv").read_text().splitlines()
    assert curve[0] == "step\tmotion_nmi\tdigit_probe" and len(curve) == 3
    for name in ("scatter", "regenerated"):
        assert (
            out / Path(yaml.safe_load(params.read_text())["mdbigan_evaluate"][name]).name
        ).is_file()

    # a corrupt model file is refused in one line, and nothing is written
    (out / "m.pt").write_bytes(b"not a model")
    (out / "metrics.json").unlink()
    done = run("stages.motionmnist.evaluate", params)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "not a readable model file" in done.stderr
    assert not (out / "metrics.json").exists()


def test_bad_params_are_refused_before_work(tmp_path, videos):
    with pytest.raises(StageError, match=r"mdbigan_train\.batch"):
        tr.check(params_of(tiny_params(tmp_path, videos), batch=0))
    with pytest.raises(StageError, match=r"mdbigan_train\.batch.*train split has"):
        tr.train(params_of(tiny_params(tmp_path, videos), batch=10_000))
    with pytest.raises(StageError, match="label_noise"):
        tr.check(params_of(tiny_params(tmp_path, videos), label_noise=0.7))
