"""End to end on a tiny stand-in: the DVC path and the Prefect/Dask flow, failures, resume."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.common import dataset
from stages.common.params import load_section
from stages.mcn import corpus as mcn_corpus
from stages.mcn.corpus import tokenize

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

STAGES = ("video_features", "audio_features", "text_features")
PARAMS = """
base: {seed: 5}
mcn_sample:
  train: {videos: 2, clips_per_video: 2, no_audio: 0}
  eval_close: {videos: 1, clips_per_video: 1, no_audio: 0}
  eval_shifted: {videos: 2, clips_per_video: 1, no_audio: 1}
  width: 64
  height: 48
  fps: 10
  sample_rate: 16000
  min_clip_seconds: 1.0
  max_clip_seconds: 2.0
  edge_cases: true
  out: &sample data/mcn/sample
  metrics: reports/mcn/sample.json
  stats: reports/mcn/sample.stats.json
  preview: reports/mcn/sample_preview.png
video_features:
  source: *sample
  corpora: &c
    - {name: train, clips: &train data/mcn/sample/clips/train,
       videos: data/mcn/sample/videos/train, audio_window: 300}
    - {name: eval_close, clips: data/mcn/sample/clips/eval_close,
       videos: data/mcn/sample/videos/eval_close, audio_window: 300}
    - {name: eval_shifted, clips: data/mcn/sample/clips/eval_shifted,
       videos: data/mcn/sample/videos/eval_shifted, audio_window: 200}
  weights: null
  short_side: 64
  batch_size: 4
  chunk_seconds: 2
  decode_workers: 1
  device: cpu
  threads: 2  # Dask workers run with OMP_NUM_THREADS=1: the stage must not depend on it
  videos_per_shard: 2
  out: data/mcn/features/video
  metrics: reports/mcn/video_features.json
  stats: reports/mcn/video_features.stats.json
audio_features:
  source: *sample
  corpora: *c
  davenet_weights: null
  device: cpu
  batch_size: 32
  threads: 2
  videos_per_shard: 2
  out: data/mcn/features/audio
  metrics: reports/mcn/audio_features.json
  stats: reports/mcn/audio_features.stats.json
word2vec:
  clips: *train
  training: {vector_size: 300, epochs: 5, window: 5, min_count: 1, skip_gram: true, negative: 5}
  out: &w2v models/word2vec.bin
  metrics: reports/mcn/word2vec.json
  stats: reports/mcn/word2vec.stats.json
text_features:
  source: *sample
  corpora: *c
  word2vec: *w2v
  videos_per_shard: 2
  out: data/mcn/features/text
  metrics: reports/mcn/text_features.json
  stats: reports/mcn/text_features.stats.json
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
    """A folder with the tiny corpus, its word2vec and the three stages run the DVC way."""
    from stages.mcn import sample as mcn_sample
    from stages.mcn import word2vec

    root = tmp_path_factory.mktemp("mcn")
    with contextlib.chdir(root):
        Path("params.yaml").write_text(PARAMS)
        mcn_sample.main(load_section(mcn_sample.Params, "mcn_sample", Path("params.yaml")))
        word2vec.main(load_section(word2vec.Params, "word2vec", Path("params.yaml")))
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
    shutil.copytree(root / "models", other / "models")
    (other / "params.yaml").write_text(PARAMS)
    # a temporary Prefect server of its own, stopped before pytest closes its output capture
    with contextlib.chdir(other), prefect_test_harness(server_startup_timeout=180):
        stats = features.run(list(STAGES), "params.yaml", workers=2)
    assert all(s["shards_skipped"] == 0 for s in stats.values())
    assert digests(other / "data/mcn/features") == digests(root / "data/mcn/features")


def test_metrics_hold_results_and_a_rerun_changes_no_report(workspace):
    root, _ = workspace
    reports = root / "reports/mcn"
    files = [p for p in reports.glob("*.json") if not p.name.endswith(".stats.json")]
    metrics = {p.name: json.loads(p.read_text()) for p in files}
    seconds = len(dataset.read_arrays(root / "data/mcn/features/video/seconds")["second"])
    assert metrics["video_features.json"] == {
        "videos": 7,
        "frame_features": seconds,
        "clips": 9,
        "failures": 2,
    }
    assert metrics["audio_features.json"] == {"videos": 7, "clips": 9, "failures": 2}
    assert metrics["text_features.json"]["captions"] == 9
    assert set(metrics["word2vec.json"]) == {"vocabulary", "dim", "captions", "tokens"}
    assert metrics["sample.json"]["train"] == {"videos": 4, "clips": 6}
    with contextlib.chdir(root):
        for stage in STAGES:  # the default params again (an earlier test may have changed them)
            run(stage)
        before = digests(reports)
        for stage in STAGES:
            run(stage)
    assert digests(reports) == before  # timings and skipped shards go to the run log only


def test_word2vec_is_byte_identical_and_read_back_exactly(workspace, tmp_path):
    from gensim.models import KeyedVectors

    from stages.mcn import word2vec

    root, _ = workspace
    with contextlib.chdir(root):
        p = load_section(word2vec.Params, "word2vec", Path("params.yaml"))
        elsewhere = {"out": tmp_path / "w.bin", "metrics": tmp_path / "m", "stats": tmp_path / "s"}
        word2vec.build(replace(p, **elsewhere))
    assert (tmp_path / "w.bin").read_bytes() == (root / "models/word2vec.bin").read_bytes()
    kv = KeyedVectors.load_word2vec_format(str(tmp_path / "w.bin"), binary=True)
    words = dataset.read_arrays(root / "data/mcn/features/text/words")
    row = int(np.argmax(words["n_words"]))
    for k, word in enumerate(words["tokens"][row].split()):
        np.testing.assert_array_equal(words["words"][row][k], kv[word])


def test_a_copy_of_the_corpus_elsewhere_gives_the_same_features(workspace, tmp_path):
    """Real data = params pointing at a dvc-added folder: here a copy of the stand-in."""
    root, _ = workspace
    raw = tmp_path / "raw/mcn"
    shutil.copytree(root / "data/mcn/sample", raw)
    text = PARAMS.replace("data/mcn/sample", str(raw))
    for folder in ("data/", "reports/", "models/"):
        text = text.replace(f" {folder}", f" {tmp_path}/{folder}")
    assert str(root) not in text and " data/" not in text
    (tmp_path / "params.yaml").write_text(text)
    from stages.mcn import word2vec

    word2vec.main(load_section(word2vec.Params, "word2vec", tmp_path / "params.yaml"))
    for stage in STAGES:
        module = importlib.import_module(f"stages.mcn.{stage}")
        module.main(load_section(module.Params, stage, tmp_path / "params.yaml"))
    assert (tmp_path / "models/word2vec.bin").read_bytes() == (
        root / "models/word2vec.bin"
    ).read_bytes()
    for stage in ("video", "audio", "text"):
        got, want = tmp_path / f"data/mcn/features/{stage}", root / f"data/mcn/features/{stage}"
        tables = [t.name for t in want.iterdir() if t.name != "done"]
        assert sorted(t.name for t in got.iterdir() if t.name != "done") == sorted(tables)
        for table in tables:
            a, b = dataset.read_arrays(got / table), dataset.read_arrays(want / table)
            if "message" in a:  # a failure message names the file
                a["message"] = np.array(
                    [m.replace(str(raw), "data/mcn/sample") for m in a["message"]]
                )
            assert a.keys() == b.keys()
            for column in b:
                np.testing.assert_array_equal(a[column], b[column], err_msg=f"{stage}/{table}")
            if stage != "text" and table != "failures":  # records name no path: same bytes
                assert digests(got / table) == digests(want / table)
    for name in ("video_features", "audio_features", "text_features", "word2vec"):
        got = json.loads((tmp_path / f"reports/mcn/{name}.json").read_text())
        assert got == json.loads((root / f"reports/mcn/{name}.json").read_text())


def test_davenet_weights_give_embeddings_and_a_recorded_hash(workspace, tmp_path):
    from stages.mcn.davenet import ResDavenet

    root, _ = workspace
    torch.manual_seed(0)
    weights = root / "data/mcn/sample/davenet.pth"  # inside `source`, the folder DVC tracks
    torch.save(ResDavenet().state_dict(), weights)
    try:
        with contextlib.chdir(root):
            module, p = params("audio_features", "")
            p = type(p)(**{**p.__dict__, "davenet_weights": weights.relative_to(root)})
            stats = mcn_corpus.run_local(module, p, "audio_features")
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    finally:
        weights.unlink()
    assert stats["shards_skipped"] == 0  # new weights: a new fingerprint for every shard
    record = json.loads((root / "reports/mcn/audio_features.stats.json").read_text())["record"]
    assert record["davenet"]["sha256"] == digest
    emb = dataset.read_arrays(root / "data/mcn/features/audio/embeddings")
    ok = emb["status"] == "ok"
    assert emb["embedding"].shape[1] == 1024 and np.abs(emb["embedding"][ok]).sum(1).min() > 0
    assert not emb["embedding"][~ok].any()


def test_a_video_changed_in_place_redoes_its_shard_only(workspace, tmp_path):
    """Same size, other bytes: the fingerprint held file sizes, so the shard used to be skipped."""
    root, _ = workspace
    for folder in ("data/mcn/sample", "data/mcn/features", "models"):
        shutil.copytree(root / folder, tmp_path / folder)
    with contextlib.chdir(tmp_path):
        for stage in ("video_features", "audio_features"):
            run(stage)  # the default params again (an earlier test may have changed them)
        (video,) = Path("data/mcn/sample/videos/eval_close").iterdir()
        data = bytearray(video.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 39] = bytes(b ^ 0x5A for b in data[middle : middle + 39])
        video.write_bytes(data)
        for stage, out in (("video_features", "video"), ("audio_features", "audio")):
            before = digests(Path("data/mcn/features", out, "done"))
            stats = run(stage)
            after = digests(Path("data/mcn/features", out, "done"))
            assert stats["shards_skipped"] == stats["shards"] - 1 == 3
            assert [k for k in after if after[k] != before[k]] == ["part-eval_close-00000.json"]


def test_a_changed_audio_window_leaves_only_the_new_tables(workspace, tmp_path):
    """audio_window 1000 -> 500 used to leave `windows-1000/` in the output (and its DVC hash)."""
    root, _ = workspace
    shutil.copytree(root / "data/mcn/sample", tmp_path / "data/mcn/sample")
    module = importlib.import_module("stages.mcn.audio_features")
    out = tmp_path / "data/mcn/features/audio"
    with contextlib.chdir(tmp_path):
        for window in (1000, 500):
            text = re.sub(r"audio_window: \d+", f"audio_window: {window}", PARAMS)
            Path("params.yaml").write_text(text)
            p = load_section(module.Params, "audio_features", Path("params.yaml"))
            stats = mcn_corpus.run_local(module, p, "audio_features")
    assert stats["shards_skipped"] == 0 and stats["stale_files_removed"] > 0
    assert sorted(p.name for p in out.iterdir()) == ["done", "failures", "videos", "windows-500"]
    listed = {
        f"{table}/part-{m['key']}.parquet"
        for m in (json.loads(p.read_text()) for p in (out / "done").iterdir())
        for table in m["tables"]
    }
    assert {str(p.relative_to(out)) for p in out.rglob("*.parquet")} == listed


def marked_processes(marker: str) -> dict[int, int]:
    """pid -> parent pid of every process whose environment holds `marker` (children inherit it)."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:  # not a process, gone, or not ours
            continue
        if marker.encode() in environ:
            found[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return found


def test_a_killed_video_stage_leaves_no_process_behind(workspace, tmp_path):
    """A decode worker, the fork server and the resource tracker used to outlive a SIGKILLed
    stage: the worker watched its parent, the fork server, which it kept alive itself."""
    root, _ = workspace
    shutil.copytree(root / "data/mcn/sample", tmp_path / "data/mcn/sample")
    (tmp_path / "params.yaml").write_text(PARAMS)
    token = uuid.uuid4().hex
    marker = f"MCN_TEST_MARKER={token}"  # inherited by every process the stage starts
    env = {"MCN_TEST_MARKER": token, "PYTHONPATH": str(ROOT), "STAGES_RUN_LOG": str(tmp_path)}
    stage = subprocess.Popen(
        [sys.executable, "-m", "stages.mcn.video_features", "--params", "params.yaml"],
        cwd=tmp_path,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300  # generous: loading the model on a busy machine
        while time.monotonic() < deadline and stage.poll() is None:
            found = marked_processes(marker)
            # a decode worker: a child of the fork server, itself a child of the stage
            if any(parent in found and parent != stage.pid for parent in found.values()):
                break
            time.sleep(0.1)
        assert stage.poll() is None, "the stage ended before its decode worker was seen"
        stage.kill()
        stage.wait()
        deadline = time.monotonic() + 120
        while marked_processes(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = marked_processes(marker)
        assert not left, f"processes left after the stage was killed: {sorted(left)}"
    finally:
        stage.kill()
        for pid in marked_processes(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
