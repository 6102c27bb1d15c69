"""Pure pieces of the MCN feature stages: log-mel front end, windows, pooling, words, shards."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE

import numpy as np
import pyarrow as pa
import pytest
import scipy.signal

from stages.common import dataset
from stages.common.errors import StageError
from stages.mcn import shards
from stages.mcn.audio_features import clip_window, log_mel
from stages.mcn.corpus import Corpus, check_source, read_clip_table, tokenize
from stages.mcn.text_features import caption_matrix
from stages.mcn.video_pipeline import pool_clip


def reference_log_mel(wave: np.ndarray) -> np.ndarray:
    """The MCN front end written out with numpy/scipy only (no librosa STFT)."""
    import librosa

    y = wave.astype(np.float64) - wave.mean()
    y = np.append(y[:1], y[1:] - 0.97 * y[:-1])
    padded = np.pad(y, 200)  # centred frames, zero padding (librosa >= 0.10's default)
    n = 1 + len(y) // 160
    frames = np.stack([padded[i * 160 : i * 160 + 400] for i in range(n)], axis=1)
    spectrum = np.fft.rfft(frames * scipy.signal.windows.hamming(400)[:, None], axis=0)
    mel = librosa.filters.mel(sr=16000, n_fft=400, n_mels=40, fmin=20) @ np.abs(spectrum) ** 2
    db = 10 * np.log10(np.maximum(mel, 1e-10)) - 10 * np.log10(mel.max())
    return np.maximum(db, -80.0)


def test_log_mel_matches_a_written_out_reference():
    rng = np.random.default_rng(0)
    wave = 0.1 * rng.standard_normal(16000) + np.sin(np.arange(16000) / 16000 * 2 * np.pi * 700)
    got = log_mel(wave.astype(np.float32))
    assert got.shape == (40, 101) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference_log_mel(wave.astype(np.float32)), atol=1e-3)
    assert got.max() == 0.0 and got.min() >= -80.0


def test_a_tone_lands_in_its_mel_band():
    import librosa

    t = np.arange(32000) / 16000
    got = log_mel(np.sin(2 * np.pi * 1500 * t).astype(np.float32))
    centres = librosa.mel_frequencies(42, fmin=20, fmax=8000)[1:-1]
    assert abs(centres[np.argmax(got[:, 100])] - 1500) < 150


def test_clip_window_crops_pads_and_counts():
    spec = np.arange(40 * 500, dtype=np.float32).reshape(40, 500) + 1
    window, first, n = clip_window(spec, 1.0, 2.5, 200)
    assert (first, n) == (100, 150)
    np.testing.assert_array_equal(window[:, :150], spec[:, 100:250])
    assert not window[:, 150:].any()
    assert clip_window(spec, 1.0, 9.0, 200)[2] == 200  # cropped to the window
    assert clip_window(spec, 4.9, 6.0, 200)[1:] == (490, 10)  # cut at the end of the audio
    assert clip_window(spec, 7.0, 8.0, 200)[2] == 0  # past the end: empty


def test_pool_clip_max_pools_seconds_inclusive_then_normalises():
    features = np.zeros((5, 2048), np.float16)
    features[1, 0], features[2, 0], features[2, 1], features[3, 1] = 0.6, 0.2, 0.8, 0.3
    pooled, lo, hi, empty = pool_clip(features, 1.4, 2.9)  # seconds int(1.4)=1 .. int(2.9)=2
    assert (lo, hi, empty) == (1, 3, False)
    np.testing.assert_allclose(pooled[:2], [0.6, 0.8], atol=1e-3)  # (0.6, 0.8) has norm 1
    assert pool_clip(features, 3.0, 9.0)[1:3] == (3, 5)  # clipped at the video's end
    pooled, lo, hi, empty = pool_clip(features, 7.0, 8.0)
    assert empty and not pooled.any() and lo == hi


def test_tokens_follow_the_regex_and_keep_case():
    assert tokenize("Now, don't stop—the RED ball's 2nd bounce!") == [
        "Now",
        "don't",
        "stop",
        "the",
        "RED",
        "ball's",
        "2nd",
        "bounce",
    ]


def test_caption_matrix_drops_unknown_words_and_keeps_twenty():
    vocab = {"a": 0, "b": 1}
    vectors = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    matrix, words = caption_matrix("a x b a", vocab, vectors)
    assert words == ["a", "b", "a"] and matrix.shape == (20, 2)
    np.testing.assert_array_equal(matrix[:3], vectors[[0, 1, 0]])
    assert not matrix[3:].any()
    assert len(caption_matrix(" ".join(["a"] * 30), vocab, vectors)[1]) == 20
    matrix, words = caption_matrix("nothing known", vocab, vectors)
    assert words == [] and not matrix.any()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("video,start,end,caption\nv1,0,2,hi\nv2,x,3,yo\n", "line 3: start: not a finite"),
        ("video,start,end,caption\nv1,3,2,hi\n", "line 2: end: end before start"),
        ("video,start,end,caption\nv1,-1,2,hi\n", "line 2: start: not a finite time >= 0: '-1'"),
        ("video,start,end,caption\nv1,0,inf,hi\n", "line 2: end: not a finite time >= 0: 'inf'"),
        ("video,start,end,caption\nv1,0,nan,hi\n", "line 2: end: not a finite"),
        ("video,start,end,caption\n\nv1,0,1,hi\n,0,1,yo\n", "line 4: video: empty video id"),
        ('video,start,end,caption\nv1,0,1,"two\nlines"\nv1,x,1,hi\n', "line 4: start"),
        ("video,start,end,caption\nv1,0,1,hi\nv1,0,1,a,b\n", "line 3: 5 fields where the"),
        ("video,start,end,caption\nv1,0,1,hi\nv1,0,1\n", "line 3: 3 fields where the"),
        ("video,start,caption\nv1,0,hi\n", "clip table lacks columns ['end']"),
        ("video,start,end,end\nv1,0,1,2\n", "line 1: repeated column names ['end']"),
        (b"video,start,end,caption\nv1,0,1,\xff\n", "not UTF-8 text"),
    ],
)
def test_clip_table_errors_name_the_line_and_field(tmp_path, rows, message):
    """CSV rows are named by the file's line (header = line 1); a ragged row is refused."""
    path = tmp_path / "clips.csv"
    path.write_bytes(rows if isinstance(rows, bytes) else rows.encode())
    with pytest.raises(StageError) as error:
        read_clip_table(path)
    assert str(error.value).startswith(f"{path}: {message}")


def test_parquet_clip_table_rows_are_numbered_from_one(tmp_path):
    import pandas as pd

    path = tmp_path / "clips.parquet"
    pd.DataFrame(
        {"video": ["a", "b"], "start": [0.0, 1.0], "end": [1.0, float("inf")], "caption": ["", ""]}
    ).to_parquet(path)
    with pytest.raises(StageError, match=r"clips\.parquet: row 2: end: not a finite time"):
        read_clip_table(path)
    path.write_text("not parquet")
    with pytest.raises(StageError, match="cannot read the clip table"):
        read_clip_table(path)


def test_a_csv_clip_table_reads_like_before(tmp_path):
    path = tmp_path / "clips.csv"
    path.write_text('video,start,end,caption\n007,0.1,2.5,"a, b"\n\nx,3,4,\n')
    table = read_clip_table(path)
    assert table["video"].tolist() == ["007", "x"] and table["caption"].tolist() == ["a, b", ""]
    assert table["start"].tolist() == [0.1, 3.0] and table["end"].dtype == np.float64


SCHEMA = dataset.SampleSchema("t", "test", (dataset.Column("x", pa.int64(), "x"),))


def test_a_shard_is_complete_only_with_its_fingerprint_and_files(tmp_path):
    manifest = shards.write_shard(
        tmp_path, "c-00000", "abc", {"t": (SCHEMA, {"x": [1, 2]})}, {"weights": "random seed 1"}
    )
    assert manifest["tables"]["t"]["rows"] == 2
    assert shards.is_complete(tmp_path, "c-00000", "abc")
    assert not shards.is_complete(tmp_path, "c-00000", "other")
    assert dataset.read_arrays(tmp_path / "t")["x"].tolist() == [1, 2]
    (tmp_path / "t" / "part-c-00000.parquet").write_bytes(b"half")
    assert not shards.is_complete(tmp_path, "c-00000", "abc")  # truncated file: redo
    stored = json.loads((tmp_path / "done" / "part-c-00000.json").read_text())
    assert stored["weights"] == "random seed 1" and "seconds" not in stored


def test_remove_stale_keeps_exactly_what_the_manifests_list(tmp_path):
    kept = shards.write_shard(tmp_path, "c-00000", "f", {"t": (SCHEMA, {"x": [1]})}, {})
    old = {"t": (SCHEMA, {"x": [1]}), "windows-1000": (SCHEMA, {"x": [2]})}
    shards.write_shard(tmp_path, "c-00001", "f", old, {})  # a shard of an older plan
    (tmp_path / "embeddings").mkdir()
    (tmp_path / "embeddings" / "part-c-00000.parquet").write_bytes(b"")  # a table not made now
    removed = shards.remove_stale(tmp_path, [kept])
    assert sorted(Path(p).relative_to(tmp_path).as_posix() for p in removed) == [
        "done/part-c-00001.json",
        "embeddings",
        "embeddings/part-c-00000.parquet",
        "t/part-c-00001.parquet",
        "windows-1000",
        "windows-1000/part-c-00001.parquet",
    ]
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "done",
        "done/part-c-00000.json",
        "t",
        "t/part-c-00000.parquet",
    ]
    assert shards.is_complete(tmp_path, "c-00000", "f")


def test_remove_stale_deletes_only_temporaries_whose_writer_is_gone(tmp_path):
    """A temporary names its writer's host and pid: a live writer's (or another host's) stays."""
    kept = shards.write_shard(tmp_path, "c-00000", "f", {"t": (SCHEMA, {"x": [1]})}, {})
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], stdout=PIPE)
    dead_pid = int(ended.stdout)
    live = shards.temporary(tmp_path / "t" / "part-c-00001.parquet")  # this process: writing
    assert live.name == f".part-c-00001.parquet~{shards.HOST}~{os.getpid()}.tmp"
    abandoned = tmp_path / "t" / f".part-c-00002.parquet~{shards.HOST}~{dead_pid}.tmp"
    elsewhere = tmp_path / "done" / f".part-c-00003.json~{shards.HOST}-other~{dead_pid}.tmp"
    for path in (live, abandoned, elsewhere):
        path.write_bytes(b"")
    removed = shards.remove_stale(tmp_path, [kept])
    assert removed == [str(abandoned)]
    assert live.exists() and elsewhere.exists()


def test_a_failed_write_leaves_no_temporary(tmp_path):
    with pytest.raises(pa.ArrowInvalid):
        shards.write_shard(tmp_path, "c-00000", "f", {"t": (SCHEMA, {"x": ["not an int"]})}, {})
    assert [p.name for p in tmp_path.rglob("*")] == ["t"]


def test_fingerprint_is_stable_and_sensitive():
    assert shards.fingerprint("v1", {"a": 1, "b": [2]}) == shards.fingerprint(
        "v1", {"b": [2], "a": 1}
    )
    assert shards.fingerprint("v1", 1) != shards.fingerprint("v1", 2)


def test_shard_fingerprints_digest_the_whole_import_closure():
    """A change to the Parquet writer or the shard module must redo the shards it wrote."""
    from stages.common.closure import ROOT, import_closure

    for stage in ("video_features", "audio_features", "text_features"):
        files = {p.relative_to(ROOT).as_posix() for p in import_closure(f"stages.mcn.{stage}")}
        assert {"stages/common/dataset.py", "stages/mcn/shards.py"} <= files
        source = (ROOT / f"stages/mcn/{stage}.py").read_text()
        assert f'code_digest("stages.mcn.{stage}")' in source


def test_corpora_must_lie_inside_the_source_folder(tmp_path):
    inside = Corpus("c", tmp_path / "raw/clips.csv", tmp_path / "raw/videos", 1000)
    check_source(tmp_path / "raw", (inside,), "video_features", {"weights": None})
    outside = Corpus("c", tmp_path / "raw/clips.csv", tmp_path / "elsewhere", 1000)
    with pytest.raises(StageError, match=r"c\.videos"):
        check_source(tmp_path / "raw", (outside,), "video_features", {})
    weights = tmp_path / "weights/resnet152.pth"  # not a DVC dep unless inside source
    with pytest.raises(StageError, match=r"video_features\.weights: .*is outside"):
        check_source(tmp_path / "raw", (inside,), "video_features", {"weights": weights})
    check_source(tmp_path, (inside,), "video_features", {"weights": weights})


class _WritesMarker:
    """Unpickling this creates `marker`: what a hostile gensim `.save` file could do instead."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_a_pickled_vectors_file_is_refused_and_never_unpickled(tmp_path):
    from stages.mcn import text_features

    ran = tmp_path / "ran"
    hostile = pickle.dumps(_WritesMarker(ran))
    pickle.loads(hostile).close()  # the payload is live: loading it writes the marker
    assert ran.is_file()
    ran.unlink()
    # Through the stage's CLI: one line, exit 2, before any vectors are read or output written.
    (tmp_path / "vectors.kv").write_bytes(hostile)
    (tmp_path / "params.yaml").write_text(
        "text_features: {source: ., corpora: [], word2vec: vectors.kv, videos_per_shard: 1,"
        " out: out, metrics: m.json, stats: s.json}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "stages.mcn.text_features"],
        cwd=tmp_path,
        env={**os.environ, "STAGES_RUN_LOG": str(tmp_path / "logs")},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        "text_features: error: vectors.kv: expected word2vec vectors: "
        ".bin, .bin.gz, .txt, .txt.gz, .vec\n"
    )
    # Named like word2vec's formats, the bytes are parsed as word2vec, never unpickled.
    for name in ("vectors.kv", "vectors.bin", "vectors.txt"):
        (tmp_path / name).write_bytes(hostile)
        with pytest.raises(StageError, match="cannot read word vectors"):
            text_features.load_vectors(str(tmp_path / name))
    assert not ran.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "params.yaml",
        "vectors.bin",
        "vectors.kv",
        "vectors.txt",
    ]


class NotATensor:
    """Pickled into a weights file: `torch.load(weights_only=True)` must refuse to build it."""


def weights_file(path: Path, kind: str, build) -> Path:
    import torch

    state = build().state_dict()
    if kind == "text":
        path.write_text("hello, weights\n")
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "pickled object":
        torch.save({**state, "extra": NotATensor()}, path)
    elif kind == "wrapped":
        torch.save({"state_dict": state}, path)
    elif kind == "wrong shape":
        key = next(k for k, v in state.items() if v.ndim == 4)
        torch.save({**state, key: state[key][:1]}, path)
    elif kind == "missing key":
        torch.save({k: v for k, v in list(state.items())[1:]}, path)
    elif kind == "empty":
        path.write_bytes(b"")
    return path


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("text", "not a PyTorch weights file (KeyError"),
        ("empty", "not a PyTorch weights file (EOFError)"),
        ("tensor", "not a state_dict (parameter name -> tensor) but a Tensor"),
        (
            "pickled object",
            "torch.load(weights_only=True) refuses it (Unsupported global: GLOBAL "
            f"{__name__}.NotATensor): not a plain state_dict of tensors",
        ),
        (
            "wrapped",
            "not a state_dict (parameter name -> tensor): 'state_dict' holds a OrderedDict",
        ),
        ("wrong shape", "not a ResDavenet state_dict: 'conv1.weight' has shape [1, 1, 40, 1], not"),
        ("missing key", "not a ResDavenet state_dict: lacks 'conv1.weight'"),
    ],
)
def test_a_bad_davenet_weights_file_is_one_line(tmp_path, kind, problem):
    from stages.mcn.corpus import weights_record
    from stages.mcn.davenet import ResDavenet

    path = weights_file(tmp_path / "davenet.pth", kind, ResDavenet)
    with pytest.raises(StageError) as error:
        weights_record(path, 0, ResDavenet)
    assert str(error.value).startswith(f"{path}: {problem}")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("kind", ["text", "tensor", "pickled object", "wrong shape"])
def test_a_bad_resnet_weights_file_fails_before_any_work(tmp_path, kind):
    from stages.mcn import video_features
    from stages.mcn.resnet import resnet152

    path = weights_file(tmp_path / "resnet152.pth", kind, resnet152)
    params = video_features.Params(
        0, tmp_path, (), path, 224, 8, 32, 0, "cpu", 1, 1, *(tmp_path / n for n in "oms")
    )
    with pytest.raises(StageError, match=str(path)):
        video_features.prepare(params)


def test_good_weights_pass_the_check(tmp_path):
    import torch

    from stages.mcn.corpus import weights_record
    from stages.mcn.davenet import ResDavenet

    torch.save(ResDavenet().state_dict(), tmp_path / "davenet.pth")
    record = weights_record(tmp_path / "davenet.pth", 0, ResDavenet)
    assert record["weights"] == str(tmp_path / "davenet.pth")


def run_cli(stage: str, cwd: Path, section: dict) -> subprocess.CompletedProcess:
    import yaml

    (cwd / "params.yaml").write_text(yaml.safe_dump({"base": {"seed": 1}, stage: section}))
    return subprocess.run(
        [sys.executable, "-m", f"stages.mcn.{stage}", "--params", "params.yaml"],
        cwd=cwd,
        env={**os.environ, "STAGES_RUN_LOG": str(cwd / "logs")},
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize(
    ("clips", "weights", "where", "problem"),
    [
        (
            "video,start,end,caption\nv,0,1,a\nv,1,inf,b\n",
            None,
            "raw/clips.csv: line 3: end",
            "not a finite time >= 0: 'inf'",
        ),
        (
            "video,start,end,caption\nv,0,1,a,b\n",
            None,
            "raw/clips.csv: line 2",
            "5 fields where the header (line 1) has 4",
        ),
        (
            "video,start,end,caption\nv,0,1,a\n",
            "text",
            "raw/davenet.pth",
            "not a PyTorch weights file (KeyError: 101)",
        ),
    ],
)
def test_audio_features_cli_refuses_bad_input_in_one_line_writing_nothing(
    tmp_path, clips, weights, where, problem
):
    """Before: a traceback after the shard was computed (inf) or while reading (ragged, weights)."""
    (tmp_path / "raw/videos").mkdir(parents=True)
    (tmp_path / "raw/videos/v.mp4").write_bytes(b"not read: the stage stops before any work")
    (tmp_path / "raw/clips.csv").write_text(clips)
    if weights:
        (tmp_path / "raw/davenet.pth").write_text("hello, weights\n")
    section = {
        "source": "raw",
        "corpora": [
            {"name": "c", "clips": "raw/clips.csv", "videos": "raw/videos", "audio_window": 100}
        ],
        "davenet_weights": "raw/davenet.pth" if weights else None,
        "device": "cpu",
        "batch_size": 4,
        "threads": 1,
        "videos_per_shard": 1,
        "out": "out/audio",
        "metrics": "out/metrics.json",
        "stats": "out/stats.json",
    }
    done = run_cli("audio_features", tmp_path, section)
    assert (done.returncode, done.stderr) == (2, f"audio_features: error: {where}: {problem}\n")
    assert not (tmp_path / "out").exists()


def test_an_interrupted_shard_stage_says_what_it_had_replaced(monkeypatch):
    """Shards are replaced one by one: a Ctrl-C must not claim that nothing was replaced."""
    from types import SimpleNamespace

    from stages.common.errors import Interrupted
    from stages.mcn import corpus

    calls = iter([{"skipped": True}, {"skipped": False}, KeyboardInterrupt()])

    def run_shard(params, context, shard):
        result = next(calls)
        if isinstance(result, BaseException):
            raise result
        return result

    stage = SimpleNamespace(prepare=lambda p: None, run_shard=run_shard, finalize=None)
    monkeypatch.setattr(corpus, "plan", lambda corpora, per_shard: ["a", "b", "c", "d"])
    params = SimpleNamespace(corpora=(), videos_per_shard=1, out="data/x")
    with pytest.raises(Interrupted, match=r"^1 of 4 shards of data/x were rewritten before it, 1"):
        corpus.run_local(stage, params, "x")
