"""MCN: losses on hand-computed examples, retrieval with ties, freezing, the stages end to end."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from stage_cli import REPO, params_file

from stages.mcn import retrieval
from stages.mcn import train as mt
from stages.mcn.model import MCN, Config, assign, contrastive, margin_softmax, spherical_kmeans


def test_margin_softmax_on_a_hand_computed_3x3_example():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    # scores a.b^T = [[1, 0, 0], [0, 2, 0], [1, 2, 0]]; the diagonal minus the margin 0.5
    s = np.array([[0.5, 0, 0], [0, 1.5, 0], [1, 2, -0.5]])
    rows = -np.mean([s[i, i] - math.log(np.exp(s[i]).sum()) for i in range(3)])
    cols = -np.mean([s[i, i] - math.log(np.exp(s[:, i]).sum()) for i in range(3)])
    none = torch.zeros(3, 3, dtype=torch.bool)
    assert margin_softmax(a, b, 0.5, none).item() == pytest.approx(rows + cols, rel=1e-6)
    # clips 0 and 2 from one video: neither is the other's negative
    same = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=torch.bool)
    rows = -np.mean([s[0, 0] - math.log(np.exp(s[0, [0, 1]]).sum()),
                     s[1, 1] - math.log(np.exp(s[1]).sum()),
                     s[2, 2] - math.log(np.exp(s[2, [1, 2]]).sum())])  # fmt: skip
    cols = -np.mean([s[0, 0] - math.log(np.exp(s[[0, 1], 0]).sum()),
                     s[1, 1] - math.log(np.exp(s[:, 1]).sum()),
                     s[2, 2] - math.log(np.exp(s[[1, 2], 2]).sum())])  # fmt: skip
    assert margin_softmax(a, b, 0.5, same).item() == pytest.approx(rows + cols, rel=1e-6)


def test_contrastive_sums_every_pair_of_the_given_modalities():
    torch.manual_seed(0)
    e = {m: torch.randn(4, 3) for m in ("video", "audio", "text")}
    none = torch.zeros(4, 4, dtype=torch.bool)
    pairs = [("video", "audio"), ("video", "text"), ("audio", "text")]
    expected = sum(margin_softmax(e[x], e[y], 0.1, none) for x, y in pairs)
    assert contrastive(e, 0.1, none).item() == pytest.approx(expected.item())
    two = {"video": e["video"], "text": e["text"]}
    assert contrastive(two, 0.1, none).item() == pytest.approx(
        margin_softmax(e["video"], e["text"], 0.1, none).item()
    )


def test_retrieval_counts_ties_as_even_chances():
    scores = np.array([
        [1.0, 1.0, 0.0],  # tied with one other: position 0 or 1
        [0.0, 0.5, 0.9],  # one higher: position 1
        [0.2, 0.2, 0.2],  # tied with both: positions 0-2
    ])  # fmt: skip
    m = retrieval.metrics(scores)
    assert m["r1"] == pytest.approx((0.5 + 0 + 1 / 3) / 3)
    assert m["r5"] == 1.0
    assert m["median_rank"] == pytest.approx(1.0 + 1)  # average positions 0.5, 1, 1
    missed = retrieval.metrics(scores, misses=np.array([False, False, True]))
    assert missed["r1"] == pytest.approx(0.5 / 3)
    assert retrieval.recall_at(np.array([2]), np.array([0]), 2) == 0.0
    assert retrieval.chance(20) == {"r1": 0.05, "r5": 0.25, "r10": 0.5, "median_rank": 10.5}


def test_spherical_kmeans_finds_two_directions():
    points = torch.tensor([[1.0, 0.1], [2.0, -0.1], [0.1, 1.0], [-0.1, 3.0]])
    centroids = spherical_kmeans(points, torch.tensor([[1.0, 1.0], [1.0, 0.9]]), 10)
    assert assign(points, centroids).tolist() in ([0, 0, 1, 1], [1, 1, 0, 0])
    assert torch.allclose(centroids.norm(dim=1), torch.ones(2))


def tiny_config() -> Config:
    return Config(video_dim=6, word_dim=5, n_mels=4, embed_dim=8,
                  davenet_widths=(2, 2, 4, 4), reconstruction_hidden=6)  # fmt: skip


def tiny_batch(n: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "video": torch.randn(n, 6, generator=g), "audio": torch.randn(n, 4, 32, generator=g),
        "audio_frames": torch.full((n,), 32), "words": torch.randn(n, 3, 5, generator=g),
    }  # fmt: skip


def test_every_branch_embeds_to_d_and_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = MCN(tiny_config())
    batch = tiny_batch()
    embedded = {m: model.embed(m, batch) for m in ("video", "audio", "text")}
    assert all(e.shape == (6, 8) for e, _ in embedded.values())
    loss = contrastive({m: e for m, (e, _) in embedded.items()}, 0.001,
                       torch.zeros(6, 6, dtype=torch.bool))  # fmt: skip
    loss = loss + sum(((model.reconstruct[m](e) - x) ** 2).mean() for m, (e, x) in embedded.items())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_phases_of_each_order():
    assert mt.phases("AVT", 3, 2) == [(["video", "audio", "text"], [], 5)]
    assert mt.phases("AT-V", 3, 2) == [
        (["audio", "text"], [], 3),
        (["video"], ["audio", "text"], 2),
    ]
    assert mt.lr_factor(0, 4, 10) == 0.25 and mt.lr_factor(4, 4, 10) == 1.0
    assert mt.lr_factor(10, 4, 10) == pytest.approx(0.0)


# --- the stages on tiny feature tables --------------------------------------------------------

WINDOW = 32


def write_table(folder, name: str, columns: tuple, rows: dict) -> None:
    from stages.common import dataset

    out = folder / name
    out.mkdir(parents=True)
    schema = dataset.SampleSchema(name, "test table", columns)
    with dataset.ShardWriter(out, schema, shard_rows=1000) as writer:
        writer.write(rows)


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    """Tiny tables in the feature stages' schemas: 3 corpora; a clip's three modalities share a
    random 'concept' vector, so they can be matched; one eval_shifted clip has no sound."""
    import pyarrow as pa

    from stages.common import dataset
    from stages.mcn.clipdata import FeatureDirs

    root = tmp_path_factory.mktemp("mcn")
    g = np.random.default_rng(0)
    sizes = {"train": 48, "eval_close": 12, "eval_shifted": 10}
    keys = {"corpus": [], "video": [], "clip": []}
    concept = []
    for corpus, n in sizes.items():
        for k in range(n):
            keys["corpus"].append(corpus)
            keys["video"].append(f"{corpus}-v{k // 2}")
            keys["clip"].append(k % 2)
            concept.append(g.normal(size=4))
    concept = np.array(concept)
    n = len(concept)
    base = (dataset.Column("corpus", pa.string(), ""), dataset.Column("video", pa.string(), ""),
            dataset.Column("clip", pa.int64(), ""))  # fmt: skip
    video = concept @ g.normal(size=(4, 6)) + 0.1 * g.normal(size=(n, 6))
    write_table(root / "video", "clips",
                (*base, dataset.Column("empty", pa.bool_(), ""),
                 dataset.ArrayColumn("feature", "float16", (6,), "")),
                keys | {"empty": np.zeros(n, bool),
                        "feature": video.astype(np.float16)})  # fmt: skip
    audio = (concept @ g.normal(size=(4, 4)))[:, :, None] + 0.1 * g.normal(size=(n, 4, WINDOW))
    status = np.array(["ok"] * n, dtype=object)
    status[-1] = "no_audio"
    write_table(root / "audio", f"windows-{WINDOW}",
                (*base, dataset.Column("status", pa.string(), ""),
                 dataset.Column("n_frames", pa.int32(), ""),
                 dataset.ArrayColumn("window", "float16", (4, WINDOW), "")),
                keys | {"status": list(status), "n_frames": np.full(n, WINDOW, np.int32),
                        "window": audio.astype(np.float16)})  # fmt: skip
    words = (concept @ g.normal(size=(4, 5)))[:, None, :] + 0.1 * g.normal(size=(n, 3, 5))
    write_table(root / "text", "words",
                (*base, dataset.Column("n_words", pa.int32(), ""),
                 dataset.ArrayColumn("words", "float32", (3, 5), "")),
                keys | {"n_words": np.full(n, 3, np.int32),
                        "words": words.astype(np.float32)})  # fmt: skip
    return FeatureDirs(root / "video", root / "audio", root / "text")


def train_params(tmp_path, features, **changes) -> mt.Params:
    from dataclasses import replace

    from stages.common.params import load_section

    base = load_section(mt.Params, "mcn_train", "params.yaml")
    small = mt.ModelParams(embed_dim=8, davenet_widths=(2, 2, 4, 4), reconstruction_hidden=6)
    tiny = dict(features=features, audio_window=WINDOW, audio_crop=WINDOW,
                models=tmp_path / "models", checkpoints=tmp_path / "ck",
                live=tmp_path / "live", device="cpu", checkpoint_every=3,
                model_config=small, batch=8, first_steps=6, second_steps=4, warmup_steps=2,
                clusters=4, queue_batches=2, refit_every=2, log_every=2, seed=0)  # fmt: skip
    return replace(base, **tiny | changes)


@pytest.mark.parametrize("stop", [4, 6])  # inside the second phase; at the phase boundary
def test_an_interrupted_run_resumes_to_the_bytes_of_an_unbroken_one(
    tmp_path, features, stop, monkeypatch
):
    whole = train_params(tmp_path / "a", features, order="AT-V", checkpoint_every=2)
    mt.train(whole)
    half = train_params(tmp_path / "b", features, order="AT-V", checkpoint_every=2)
    real, calls = mt.contrastive, []

    def power_cut_after_step_stop(*args, **kwargs):
        calls.append(1)
        if len(calls) > stop + 1:  # step stop + 2 fails: the last resume state is at `stop`
            raise RuntimeError("power cut")
        return real(*args, **kwargs)

    monkeypatch.setattr(mt, "contrastive", power_cut_after_step_stop)
    with pytest.raises(RuntimeError, match="power cut"):
        mt.train(half)
    monkeypatch.undo()
    assert mt.train(half)["resumed_at"] == stop
    name = mt.run_name("AT-V", 0)
    assert (half.models / f"{name}.pt").read_bytes() == (whole.models / f"{name}.pt").read_bytes()
    curve = "plots/metrics/train/contrastive.tsv"
    assert (half.live / name / curve).read_text() == (whole.live / name / curve).read_text()
    assert mt.train(half)["resumed_at"] == 10  # finished: a rerun trains nothing


def branch_state(path, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith(prefixes)}


def test_the_second_step_changes_no_frozen_parameter_or_statistic(tmp_path, features):
    frozen = (
        "video.",
        "davenet.",
        "audio_gate.",
        "audio.",
        "reconstruct.video",
        "reconstruct.audio",
    )
    text = ("text.", "text_projection.")
    short, long = tmp_path / "short", tmp_path / "long"
    mt.train(train_params(short, features, order="AV-T", second_steps=1))
    mt.train(train_params(long, features, order="AV-T", second_steps=4))
    a, b = (branch_state(p / "models/AV-T-seed0.pt", frozen) for p in (short, long))
    assert a.keys() == b.keys() and any(k.endswith("running_mean") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)  # phase 2 left them as phase 1 did
    t1, t2 = (branch_state(p / "models/AV-T-seed0.pt", text) for p in (short, long))
    assert not all(torch.equal(t1[k], t2[k]) for k in t1)  # the text branch did learn


def test_two_processes_under_torchrun_learn_what_one_process_learns(tmp_path, features):
    """DDP over 2 Gloo processes: each embeds its half of every batch, the losses see the whole
    batch (gathered) and the gradients are averaged, so the video and text branches (no BatchNorm;
    Gloo has no SyncBatchNorm) learn what one process learns, to float tolerance. The audio
    branch, trained second, normalises each half with its own statistics and may differ."""

    def run(folder, launcher):
        changes = {
            "features": {k: str(getattr(features, k)) for k in ("video", "audio", "text")},
            "audio_window": WINDOW, "audio_crop": WINDOW, "models": str(folder / "models"),
            "checkpoints": str(folder / "ck"), "live": str(folder / "live"), "device": "cpu",
            "threads": 1, "batch": 8, "first_steps": 6, "second_steps": 2, "warmup_steps": 2,
            "clusters": 4, "queue_batches": 2, "refit_every": 2, "log_every": 2,
            "checkpoint_every": 4,
            "model_config": {"embed_dim": 8, "davenet_widths": [2, 2, 4, 4],
                             "reconstruction_hidden": 6},
        }  # fmt: skip
        path = params_file("mcn_train", changes, folder / "params.yaml")
        command = [
            *launcher,
            "-m",
            mt.MODULE,
            "--params",
            str(path),
            "--set",
            "order=VT-A",
            "--set",
            "seed=0",
        ]
        env = {**os.environ, "STAGES_RUN_LOG": str(folder / "logs")}
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        return torch.load(folder / "models" / "VT-A-seed0.pt", weights_only=True)

    one = run(tmp_path / "one", [sys.executable])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    two = run(tmp_path / "two", [*torchrun, "--nproc_per_node", "2"])
    assert (one["processes"], two["processes"]) == (1, 2)
    branches = ("video.", "text.", "text_projection.", "reconstruct.video", "reconstruct.text")
    compared = [k for k in one["state_dict"] if k.startswith(branches)]
    assert len(compared) >= 10
    for key in compared:
        a, b = one["state_dict"][key], two["state_dict"][key]
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), key
    curve = "live/VT-A-seed0/plots/metrics/train/contrastive.tsv"  # the whole batch's loss
    losses = [np.loadtxt(tmp_path / name / curve, skiprows=1)[:, 1] for name in ("one", "two")]
    phase_1 = [curve[:3] for curve in losses]  # steps 2, 4, 6; step 8 trains audio's BatchNorm
    assert len(losses[0]) == 4 and np.allclose(*phase_1, rtol=1e-5)
    assert losses[0][0] != losses[0][1]  # it trained


@pytest.mark.slow
def test_train_evaluate_study_end_to_end(tmp_path, features):
    from dataclasses import replace

    from stages.common.params import load_section
    from stages.mcn import evaluate as me
    from stages.mcn import study as ms
    from stages.mcn.evaluate import Corpus

    corpora = (Corpus("eval_close", WINDOW), Corpus("eval_shifted", WINDOW))
    for order in ("AVT", "AV-T"):
        for seed in (0, 1):
            mt.train(train_params(tmp_path, features, order=order, seed=seed, first_steps=100,
                                  second_steps=100, lr=0.01))  # fmt: skip
            base = load_section(me.Params, "mcn_evaluate", "params.yaml")
            me.evaluate(replace(base, order=order, seed=seed, features=features, corpora=corpora,
                                models=tmp_path / "models", runs=tmp_path / "runs",
                                device="cpu"))  # fmt: skip
    base = load_section(ms.Params, "mcn_study", "params.yaml")
    out = {
        k: tmp_path / "study" / name
        for k, name in (
            ("metrics", "m.json"),
            ("stats", "s.json"),
            ("table", "t.md"),
            ("plot", "p.tsv"),
        )
    }
    ms.study(
        replace(
            base,
            orders=("AVT", "AV-T"),
            seeds=(0, 1),
            features=features,
            train_window=WINDOW,
            corpora=corpora,
            runs=tmp_path / "runs",
            **out,
        )
    )
    import json

    metrics = json.loads(out["metrics"].read_text())
    assert set(metrics) == {"eval_close", "eval_shifted"}
    assert set(metrics["eval_close"]) == {"AVT_r10", "AV-T_r10"}
    stats = json.loads(out["stats"].read_text())
    chance = stats["baselines"]["eval_close"]["chance"]["r1"]
    # the modalities share a concept: a trained model ranks the true clip first far above chance
    assert stats["orders"]["AVT"]["eval_close"]["r1"][0] > 2 * chance
    assert "| AV-T [2] |" in out["table"].read_text()
    with pytest.raises(Exception, match="missing"):
        ms.study(
            replace(
                base,
                orders=("AT-V",),
                seeds=(0,),
                features=features,
                train_window=WINDOW,
                corpora=corpora,
                runs=tmp_path / "runs",
                **out,
            )
        )
