"""End to end on a tiny stand-in: the DVC path and the Prefect/Dask flow, failures, resume."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.common import dataset
from stages.common.params import load_section
from stages.mcn import corpus as mcn_corpus
from stages.mcn.text_features import tokenize

pytestmark = pytest.mark.slow

STAGES = ("video_features", "audio_features", "text_features")
PARAMS = """
base: {seed: 5}
mcn_sample:
  train: {videos: 2, clips_per_video: 2}
  eval_close: {videos: 1, clips_per_video: 1}
  eval_shifted: {videos: 2, clips_per_video: 1, no_audio: 1}
  width: 64
  height: 48
  sample_rate: 16000
  min_clip_seconds: 1.0
  max_clip_seconds: 2.0
video_features:
  corpora: &c
    - {name: train, clips: data/mcn/sample/clips/train, videos: data/mcn/sample/videos/train,
       audio_window: 300}
    - {name: eval_close, clips: data/mcn/sample/clips/eval_close,
       videos: data/mcn/sample/videos/eval_close, audio_window: 300}
    - {name: eval_shifted, clips: data/mcn/sample/clips/eval_shifted,
       videos: data/mcn/sample/videos/eval_shifted, audio_window: 200}
  short_side: 64
  batch_size: 4
  chunk_seconds: 2
  decode_workers: 1
  device: cpu
  threads: 2  # Dask workers run with OMP_NUM_THREADS=1: the stage must not depend on it
  videos_per_shard: 2
audio_features: {corpora: *c, device: cpu, videos_per_shard: 2}
text_features: {corpora: *c, videos_per_shard: 2, training: {epochs: 5}}
"""


def params(stage: str, extra: str = ""):
    module = importlib.import_module(f"stages.mcn.{stage}")
    Path("params.yaml").write_text(PARAMS + extra)
    return module, load_section(module.Params, stage, Path("params.yaml"))


def run(stage: str):
    module, p = params(stage)
    return mcn_corpus.run_local(module, p, stage)


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder with the tiny corpus and the three stages run the DVC way."""
    from stages.mcn import sample as mcn_sample

    root = tmp_path_factory.mktemp("mcn")
    with contextlib.chdir(root):
        Path("params.yaml").write_text(PARAMS)
        mcn_sample.main(load_section(mcn_sample.Params, "mcn_sample", Path("params.yaml")))
        stats = {stage: run(stage) for stage in STAGES}
    return root, stats


def test_video_features_handle_every_edge_case(workspace):
    root, stats = workspace
    base = root / "data/mcn/features/video"
    failures = dataset.read_arrays(base / "failures")
    found = {
        (v, k, s)
        for v, k, s in zip(failures["video"], failures["kind"], failures["severity"], strict=True)
    }
    assert found == {("train_corrupt", "corrupt", "error"), ("train_short", "short", "warning")}
    videos = dataset.read_arrays(base / "videos")
    by_video = dict(
        zip(videos["video"], zip(videos["status"], videos["seconds"], strict=True), strict=True)
    )
    assert by_video["train_short"] == ("short", 1) and by_video["train_corrupt"] == ("corrupt", 0)
    seconds = dataset.read_arrays(base / "seconds")
    norms = np.linalg.norm(seconds["feature"].astype(np.float32), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)
    clips = dataset.read_arrays(base / "clips")
    assert len(clips["video"]) == stats["audio_features"]["rows"]["windows-300"] + 2
    corrupt = clips["video"] == "train_corrupt"
    assert clips["empty"][corrupt].all() and not clips["feature"][corrupt].any()
    assert not clips["empty"][~corrupt].any()
    meta = dataset.describe(base / "seconds")["metadata"]
    assert meta["weights"] == "random seed 5" and meta["precision"] == "fp32"


def test_audio_and_text_record_their_fallbacks(workspace):
    root, _ = workspace
    audio = dataset.read_arrays(root / "data/mcn/features/audio/failures")
    assert {(v, k) for v, k in zip(audio["video"], audio["kind"], strict=True)} == {
        ("train_corrupt", "corrupt"),
        ("eval_shifted_00000", "no_audio"),
    }
    windows = dataset.read_arrays(root / "data/mcn/features/audio/windows-200")
    silent = windows["status"] == "no_audio"
    assert silent.sum() == 1 and not windows["window"][silent].any()
    assert (windows["n_frames"][~silent] > 0).all()
    words = dataset.read_arrays(root / "data/mcn/features/text/words")
    known = words["n_words"] > 0
    text_failures = dataset.read_arrays(root / "data/mcn/features/text/failures")
    assert len(text_failures["video"]) == (~known).sum()
    for kept, caption in zip(words["tokens"][known], words["caption"][known], strict=True):
        tokens = iter(tokenize(caption))
        assert all(word in tokens for word in kept.split())  # an in-order subsequence


def test_a_rerun_skips_every_shard_and_changes_no_byte(workspace):
    root, _ = workspace
    before = digests(root / "data/mcn/features")
    with contextlib.chdir(root):
        stats = {stage: run(stage) for stage in STAGES}
    assert all(s["shards_skipped"] == s["shards"] > 0 for s in stats.values())
    assert digests(root / "data/mcn/features") == before


def test_an_interrupted_run_resumes_where_it_stopped(workspace, monkeypatch):
    root, _ = workspace
    out = root / "data/mcn/features/audio"
    before = digests(out)
    shutil.rmtree(out)
    from stages.mcn import audio_features

    calls = {"n": 0}
    real = audio_features.log_mel

    def crash_on_third_video(wave):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(wave)

    with contextlib.chdir(root):
        monkeypatch.setattr(audio_features, "log_mel", crash_on_third_video)
        with pytest.raises(KeyboardInterrupt):
            run("audio_features")
        assert len(list((out / "done").iterdir())) == 1  # the first shard was finished
        assert not list(out.rglob("*.tmp"))
        monkeypatch.setattr(audio_features, "log_mel", real)
        stats = run("audio_features")
    assert stats["shards_skipped"] == 1
    assert digests(out) == before


def test_the_flow_on_two_dask_workers_writes_the_dvc_paths_bytes(workspace, tmp_path):
    root, _ = workspace
    from prefect.testing.utilities import prefect_test_harness

    from flows import features

    other = tmp_path / "flow"
    shutil.copytree(root / "data/mcn/sample", other / "data/mcn/sample")
    (other / "params.yaml").write_text(PARAMS)
    # a temporary Prefect server of its own, stopped before pytest closes its output capture
    with contextlib.chdir(other), prefect_test_harness(server_startup_timeout=180):
        stats = features.run(list(STAGES), "params.yaml", workers=2)
    assert all(s["shards_skipped"] == 0 for s in stats.values())
    assert digests(other / "data/mcn/features") == digests(root / "data/mcn/features")


def test_davenet_weights_give_embeddings_and_a_recorded_hash(workspace, tmp_path):
    from stages.mcn.davenet import ResDavenet

    root, _ = workspace
    torch.manual_seed(0)
    torch.save(ResDavenet().state_dict(), tmp_path / "davenet.pth")
    with contextlib.chdir(root):
        module, p = params("audio_features", "")
        p = type(p)(**{**p.__dict__, "davenet_weights": tmp_path / "davenet.pth"})
        stats = mcn_corpus.run_local(module, p, "audio_features")
    assert stats["shards_skipped"] == 0  # new weights: a new fingerprint for every shard
    record = stats["record"]["davenet"]
    assert record["sha256"] == hashlib.sha256((tmp_path / "davenet.pth").read_bytes()).hexdigest()
    emb = dataset.read_arrays(root / "data/mcn/features/audio/embeddings")
    ok = emb["status"] == "ok"
    assert emb["embedding"].shape[1] == 1024 and np.abs(emb["embedding"][ok]).sum(1).min() > 0
    assert not emb["embedding"][~ok].any()
