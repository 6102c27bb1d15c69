"""stages.common.training: batch order, DVC hashes, model and resume files, DVCLive, extends."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from dvc_data.hashfile.hash_info import HashInfo
from dvc_data.hashfile.meta import Meta
from dvc_data.hashfile.tree import Tree

from stages.common import training
from stages.common.closure import code_digest
from stages.common.errors import StageError
from stages.common.params import load_yaml, set_arguments


def test_batches_are_a_function_of_the_step_and_cover_each_epoch():
    rows, batch = 50, 8  # 6 batches an epoch, 2 rows dropped
    epoch0 = np.concatenate([training.batch_indices(1, "s", k, rows, batch) for k in range(6)])
    assert len(set(epoch0.tolist())) == 48
    again = training.batch_indices(1, "s", 3, rows, batch)
    assert np.array_equal(again, epoch0[24:32])  # no state: resuming at step 3 replays it
    epoch1 = training.batch_indices(1, "s", 6, rows, batch)
    assert not np.array_equal(epoch1, epoch0[:8])  # each epoch reshuffled
    assert not np.array_equal(training.batch_indices(1, "t", 0, rows, batch), epoch0[:8])
    with pytest.raises(ValueError, match="batch"):
        training.batch_indices(1, "s", 0, rows, 51)


def test_to_device_puts_2d_convolutions_channels_last_and_keeps_the_function():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 16 * 16, 5),
    )
    video = torch.nn.Conv3d(2, 4, 3)
    x = torch.randn(2, 3, 8, 8)
    before = model(x)
    training.to_device(model, "cpu")
    training.to_device(video, "cpu")
    for conv in (model[0], model[2]):
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        assert not conv.weight.is_contiguous()
    assert model[2](model[1](model[0](x))).is_contiguous(memory_format=torch.channels_last)
    assert video.weight.is_contiguous()  # 3-D stays NCDHW (slower channels-last here)
    assert torch.allclose(model(x), before, atol=1e-5)  # a layout, not another function


class RecordingLive:
    """What a loop writes to DVCLive: (step, name, value) rows."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, str, float]] = []
        self.step = 0

    def log_metric(self, name: str, value: float) -> None:
        self.rows.append((self.step, name, value))

    def make_summary(self) -> None:
        pass


def test_log_window_logs_means_and_a_resumed_window_goes_on_where_it_was():
    live = RecordingLive()
    window = training.LogWindow(live, 3, None, "cpu")
    for done in range(1, 5):  # steps 1-3 logged, step 4 left half done
        window.add(done, {"loss": torch.tensor(float(done)), "kl": torch.tensor(1.0)})
    assert live.rows == [(3, "train/loss", 2.0), (3, "train/kl", 1.0)]
    resumed = training.LogWindow(live, 3, window.state(), "cpu")  # as from a resume state
    for done in (5, 6):
        resumed.add(done, {"loss": torch.tensor(float(done)), "kl": torch.tensor(1.0)})
    assert live.rows[2:] == [(6, "train/loss", 5.0), (6, "train/kl", 1.0)]  # (4 + 5 + 6) / 3


def test_dvc_md5_matches_dvc_own_tree_hash(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    files = {"part-00000.parquet": b"abc", "sub/x.bin": b"\x00" * 1000, "b.txt": b"hello\n"}
    tree = Tree()
    for rel, data in files.items():
        (tmp_path / "d" / rel).write_bytes(data)
        md5 = training.dvc_md5(tmp_path / "d" / rel)
        assert md5 == __import__("hashlib").md5(data).hexdigest()
        tree.add(tuple(rel.split("/")), Meta(size=len(data)), HashInfo("md5", md5))
    tree.digest()
    assert training.dvc_md5(tmp_path / "d") == tree.hash_info.value
    with pytest.raises(StageError, match="not found"):
        training.dvc_md5(tmp_path / "missing")


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 2)


def test_model_file_round_trips_and_bad_files_are_one_line_errors(tmp_path):
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Config:
        width: int = 3

    model = Tiny()
    path = tmp_path / "m.pt"
    record = {"state_dict": model.state_dict(), "config": {"width": 3}, "inputs": {}, "code": "c",
              "step": 7}  # fmt: skip
    training.save_model(path, record)
    config, loaded = training.load_model(path, Config)
    assert config == Config(3) and loaded["step"] == 7
    other = Tiny()
    training.load_state(path, other, loaded["state_dict"])
    assert torch.equal(other.layer.weight, model.layer.weight)

    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(StageError, match="not a readable model file") as err:
        training.load_model(path, Config)
    assert "\n" not in str(err.value)
    training.save_model(path, record | {"config": {"width": 3, "depth": 2}})
    with pytest.raises(StageError, match="config does not match"):
        training.load_model(path, Config)
    wrong = {"layer.weight": torch.zeros(5, 3), "layer.bias": torch.zeros(5)}
    with pytest.raises(StageError, match="weights do not fit") as err:
        training.load_state(path, Tiny(), wrong)
    assert "\n" not in str(err.value)


def test_resume_state_is_used_only_when_its_fingerprint_matches(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    assert training.load_resume(path, "f") is None
    training.save_resume(path, {"fingerprint": "f", "step": 3})
    assert training.load_resume(path, "f")["step"] == 3
    assert training.load_resume(path, "g") is None
    path.write_bytes(b"garbage")
    assert training.load_resume(path, "f") is None
    a = training.fingerprint({"lr": 1.0}, {"data": "x.dir"}, "code")
    assert a != training.fingerprint({"lr": 2.0}, {"data": "x.dir"}, "code")
    assert a != training.fingerprint({"lr": 1.0}, {"data": "y.dir"}, "code")
    assert a != training.fingerprint({"lr": 1.0}, {"data": "x.dir"}, "code2")


def test_live_resume_drops_rows_logged_after_the_resume_point(tmp_path):
    live = training.open_live(tmp_path / "live", None)
    for step in (10, 20, 30):
        live.step = step
        live.log_metric("train/loss", step / 10)
        live.make_summary()
    live = training.open_live(tmp_path / "live", 20)  # the checkpoint was at step 20
    live.step = 30
    live.log_metric("train/loss", 9.0)
    live.make_summary()
    rows = (tmp_path / "live/plots/metrics/train/loss.tsv").read_text().splitlines()
    assert rows == ["step\tloss", "10\t1.0", "20\t2.0", "30\t9.0"]  # 30 is the resumed run's
    assert json.loads((tmp_path / "live/metrics.json").read_text())["train"]["loss"] == 9.0
    assert not (tmp_path / "dvc.yaml").exists()


def test_params_file_extends_another_and_gives_dvc_exp_arguments(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"base": {"seed": 1}, "train": {"lr": 0.1, "model": {"width": 8, "depth": 2}}}
    ))  # fmt: skip
    (tmp_path / "gpu.yaml").write_text(
        "extends: params.yaml\ntrain:\n  model:\n    width: 32\n  count: null\n"
    )
    merged = load_yaml(tmp_path / "gpu.yaml")
    train = {"lr": 0.1, "model": {"width": 32, "depth": 2}, "count": None}
    assert merged == {"base": {"seed": 1}, "train": train}
    assert set_arguments(tmp_path / "gpu.yaml") == [
        "-S", "train.model.width=32", "-S", "train.count=null"
    ]  # fmt: skip
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(StageError, match="extends itself"):
        load_yaml(tmp_path / "loop.yaml")


def test_provenance_ignores_only_the_resumable_changes(tmp_path):
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class P:
        lr: float
        steps: int
        checkpoint_every: int

    data = tmp_path / "x.bin"
    data.write_bytes(b"abc")
    first = training.provenance(P(0.1, 10, 5), "stages.common.training", [data])
    assert first.inputs == {str(data): training.dvc_md5(data)}
    assert first.code == code_digest("stages.common.training")
    longer = training.provenance(P(0.1, 99, 7), "stages.common.training", [data])
    assert longer.fingerprint == first.fingerprint
    assert training.provenance(P(0.2, 10, 5), "stages.common.training", [data]).fingerprint != (
        first.fingerprint
    )
