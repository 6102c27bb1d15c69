"""ggdrm_train, dnn_train and lipspeech_evaluate on a tiny synthetic pairs dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
import yaml

from stages.common import dataset
from stages.common.errors import StageError
from stages.common.params import load_section
from stages.lipspeech import dnn_train, ggdrm_train
from stages.lipspeech import evaluate as ev
from stages.lipspeech.lip_transform import LipTransform
from stages.lipspeech.pairs import pairs_schema

REPO = Path(__file__).resolve().parents[1]
X_DIMS, Y_DIMS = 4, 6


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Pairs where y is a smooth function of x (plus a little noise), 8 utterances of 60 frames
    (2 held out); a matching mel-cepstrum dataset description and lip transform."""
    root = tmp_path_factory.mktemp("lipspeech")
    generator = np.random.default_rng(0)
    mixing = generator.normal(size=(X_DIMS, Y_DIMS))
    names, splits, xs, ys = [], [], [], []
    for u in range(8):
        t = np.linspace(0, 2 * np.pi, 60)
        x = np.stack([np.sin((k + 1) * t + u) for k in range(X_DIMS)], 1)
        y = np.tanh(x @ mixing) + 0.05 * generator.normal(size=(60, Y_DIMS))
        names += [f"utt{u}"] * 60
        splits += ["test" if u in (3, 6) else "train"] * 60
        xs.append(x)
        ys.append(y)
    x, y = np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.float32)
    pairs = root / "pairs"
    pairs.mkdir()
    with dataset.ShardWriter(pairs, pairs_schema(X_DIMS, Y_DIMS, "pool"), shard_rows=1000) as w:
        w.write({"utterance": np.array(names), "split": np.array(splits),
                 "frame": np.arange(len(x), dtype=np.int32), "time": np.arange(len(x)) / 30.0,
                 "lip": x, "mcep": y})  # fmt: skip
    mcep = root / "mcep"
    mcep.mkdir()
    schema = dataset.SampleSchema(
        "mcep-test", "analysis only", (dataset.Column("frame", pa.int32(), "frame"),),
        {"analysis": {"alpha": 0.37, "nfft": 64}},
    )  # fmt: skip
    with dataset.ShardWriter(mcep, schema, shard_rows=10) as w:
        w.write({"frame": np.zeros(1, np.int32)})
    coefficients = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [0, 2], [2, 0]])
    LipTransform(
        roi=np.array([0, 0, 8, 8]), coefficients=coefficients, mean_normalise=np.array(False),
        pca_mean=np.full(6, 100.0), basis=generator.normal(size=(X_DIMS, 6)) * 20,
        explained_variance_ratio=np.full(6, 1 / 6), utterances=np.array(["none"]),
        utterance_means=np.zeros((1, 6)), train_mean=np.zeros(6),
    ).save(root / "transform.npz")  # fmt: skip
    return root


def section(name: str, folder: Path, corpus: Path, **changes) -> dict:
    full = yaml.safe_load((REPO / "params.yaml").read_text())
    return full[name] | {"pairs": str(corpus / "pairs"), "device": "cpu"} | {
        k: str(folder / Path(v).name) for k, v in full[name].items()
        if k in ("model", "live", "lip_to_speech", "speech_to_lip", "baselines", "stats", "lips",
                 "spectrograms")
    } | changes  # fmt: skip


def params_file(folder: Path, **sections: dict) -> Path:
    full = yaml.safe_load((REPO / "params.yaml").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump({"base": full["base"], **sections}))
    return path


TINY_GGDRM = dict(
    hidden=[8, 8],
    batch=40,
    pretrain_steps=40,
    joint_steps=30,
    finetune_steps=60,
    chains=20,
    mean_field_iterations=5,
    log_every=10,
    checkpoint_every=25,
)


def ggdrm_params(folder: Path, corpus: Path, **changes) -> ggdrm_train.Params:
    s = section("ggdrm_train", folder, corpus, checkpoint=str(folder / "ck/last.pt"),
                **TINY_GGDRM | changes)  # fmt: skip
    return load_section(ggdrm_train.Params, "ggdrm_train", params_file(folder, ggdrm_train=s))


def dnn_params(folder: Path, corpus: Path, **changes) -> dnn_train.Params:
    tiny = dict(hidden=[8, 8], batch=40, steps=60, log_every=10, checkpoint_every=25)
    s = section(
        "dnn_train", folder, corpus, checkpoint=str(folder / "ck/last.pt"), **tiny | changes
    )
    return load_section(dnn_train.Params, "dnn_train", params_file(folder, dnn_train=s))


def test_ggdrm_resume_gives_the_bytes_of_an_unbroken_run(tmp_path, corpus, monkeypatch):
    ggdrm_train.train(ggdrm_params(tmp_path / "a", corpus))
    # interrupted at step 27 of the joint phase: it resumes from its checkpoint at step 25, with
    # the chains and the optimiser's state
    real = ggdrm_train.generator_for

    def interrupting(seed: int, phase: str, step: int, device: object) -> torch.Generator:
        if phase == "joint" and step == 27:
            raise KeyboardInterrupt
        return real(seed, phase, step, device)

    monkeypatch.setattr(ggdrm_train, "generator_for", interrupting)
    with pytest.raises(KeyboardInterrupt):
        ggdrm_train.train(ggdrm_params(tmp_path / "b", corpus))
    monkeypatch.setattr(ggdrm_train, "generator_for", real)
    assert ggdrm_train.train(ggdrm_params(tmp_path / "b", corpus))["resumed_at"] == 3 * 40 + 25
    assert (tmp_path / "a/ggdrm.pt").read_bytes() == (tmp_path / "b/ggdrm.pt").read_bytes()
    curve = "train/plots/metrics/joint/x2y_mse.tsv"
    assert (tmp_path / "a" / curve).read_text() == (tmp_path / "b" / curve).read_text()


def test_dnn_resume_gives_the_bytes_of_an_unbroken_run(tmp_path, corpus):
    dnn_train.train(dnn_params(tmp_path / "a", corpus))
    half = dnn_params(tmp_path / "b", corpus)
    dnn_train.train(replace(half, steps=25))
    assert dnn_train.train(half)["resumed_at"] == 25
    assert (tmp_path / "a/dnn.pt").read_bytes() == (tmp_path / "b/dnn.pt").read_bytes()
    curve = "train/plots/metrics/train/y2x_mse.tsv"
    assert (tmp_path / "a" / curve).read_text() == (tmp_path / "b" / curve).read_text()


def test_dnn_overfits_a_small_set(tmp_path, corpus):
    params = dnn_params(tmp_path, corpus, steps=600, lr=0.01, batch=360)
    dnn_train.train(params)
    curve = (tmp_path / "train/plots/metrics/train/x2y_mse.tsv").read_text().splitlines()
    first, last = float(curve[1].split("\t")[1]), float(curve[-1].split("\t")[1])
    assert last < 0.1 * first


def test_bad_params_are_refused_by_key(tmp_path, corpus):
    with pytest.raises(StageError, match=r"ggdrm_train\.hidden"):
        ggdrm_train.train(ggdrm_params(tmp_path, corpus, hidden=[8, 8, 8]))
    with pytest.raises(StageError, match=r"dnn_train\.batch.*train split has|larger than"):
        dnn_train.train(dnn_params(tmp_path, corpus, batch=10_000))


def test_global_variance_ratio_and_psnr_known_answers():
    real = np.c_[np.zeros(4), [1.0, -1.0, 1.0, -1.0]]
    names = np.array(["a"] * 4)
    assert ev.global_variance_ratio(real * 0.5, real, names) == pytest.approx(0.25)
    assert ev.global_variance_ratio(np.zeros_like(real), real, names) == 0.0
    assert ev.image_psnr(np.zeros((2, 2)), np.full((2, 2), 255.0)) == pytest.approx(0.0)
    x = np.random.default_rng(1).normal(size=(50, 3))
    assert np.allclose(ev.affine(x, ev.least_squares(x, 2 * x + 1)), 2 * x + 1)


@pytest.mark.slow
def test_the_evaluation_scores_the_three_models_and_the_baselines(tmp_path, corpus):
    ggdrm_train.train(ggdrm_params(tmp_path / "g", corpus))
    dnn_train.train(dnn_params(tmp_path / "d", corpus))
    s = section("lipspeech_evaluate", tmp_path / "ev", corpus, mcep=str(corpus / "mcep"),
                transform=str(corpus / "transform.npz"), ggdrm=str(tmp_path / "g/ggdrm.pt"),
                dnn=str(tmp_path / "d/dnn.pt"))  # fmt: skip
    path = params_file(tmp_path / "ev", lipspeech_evaluate=s)
    env = {**os.environ, "STAGES_RUN_LOG": str(tmp_path / "logs")}
    command = [sys.executable, "-m", "stages.lipspeech.evaluate", "--params", str(path)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    speech = json.loads((tmp_path / "ev/lip_to_speech.json").read_text())
    assert set(speech["mcd_db"]) == {"dnn", "drm", "drm_finetuned"}
    baselines = json.loads((tmp_path / "ev/baselines.json").read_text())
    assert baselines["lip_to_speech"]["gv_ratio_train_mean"] == 0.0  # a constant has no change
    assert baselines["speech_to_lip"]["psnr_db_train_mean"] > 0
    for picture in ("lips.png", "spectrograms.png"):
        assert (tmp_path / "ev" / picture).stat().st_size > 0
    # a corrupt model file is one line naming it
    (tmp_path / "g/ggdrm.pt").write_bytes(b"not a model")
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "ggdrm.pt: not a readable model file" in done.stderr


def test_unrolled_nets_load_from_the_model_file(tmp_path, corpus):
    params = ggdrm_params(tmp_path, corpus, pretrain_steps=5, joint_steps=5, finetune_steps=5)
    ggdrm_train.train(params)
    record = torch.load(params.model, weights_only=True)
    assert {k.split(".")[0] for k in record["finetuned"]} == {"x2y", "y2x"}
    assert set(record["standardisation"]) == {"x_mean", "x_std", "y_mean", "y_std"}
