"""Pure pieces of the MCN feature stages: log-mel front end, windows, pooling, words, shards."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

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
    ("rows", "where"),
    [
        ("video,start,end,caption\nv1,0,2,hi\nv2,x,3,yo\n", "row 1: start"),
        ("video,start,end,caption\nv1,3,2,hi\n", "row 0: end"),
        ("video,start,end,caption\nv1,-1,2,hi\n", "row 0: start"),
        ("video,start,caption\nv1,0,hi\n", "lacks columns ['end']"),
    ],
)
def test_clip_table_errors_name_row_and_field(tmp_path, rows, where):
    path = tmp_path / "clips.csv"
    path.write_text(rows)
    with pytest.raises(StageError, match=where.replace("[", r"\[").replace("]", r"\]")):
        read_clip_table(path)


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


def test_remove_stale_keeps_only_planned_shards(tmp_path):
    for key in ("c-00000", "c-00001"):
        shards.write_shard(tmp_path, key, "f", {"t": (SCHEMA, {"x": [1]})}, {})
    (tmp_path / "t" / ".part-c-00000.parquet.9.tmp").write_bytes(b"")
    removed = shards.remove_stale(tmp_path, ["c-00000"])
    assert sorted(p.rsplit("/", 1)[1] for p in removed) == [
        ".part-c-00000.parquet.9.tmp",
        "part-c-00001.json",
        "part-c-00001.parquet",
    ]
    assert shards.is_complete(tmp_path, "c-00000", "f")


def test_a_rewritten_shard_drops_a_table_it_no_longer_writes(tmp_path):
    both = {"t": (SCHEMA, {"x": [1]}), "e": (SCHEMA, {"x": [2]})}
    shards.write_shard(tmp_path, "c-00000", "with", both, {})
    shards.write_shard(tmp_path, "c-00000", "without", {"t": (SCHEMA, {"x": [1]})}, {})
    assert not (tmp_path / "e" / "part-c-00000.parquet").exists()
    assert shards.is_complete(tmp_path, "c-00000", "without")


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
    check_source(tmp_path / "raw", (inside,), "video_features")
    outside = Corpus("c", tmp_path / "raw/clips.csv", tmp_path / "elsewhere", 1000)
    with pytest.raises(StageError, match=r"c\.videos"):
        check_source(tmp_path / "raw", (outside,), "video_features")


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
