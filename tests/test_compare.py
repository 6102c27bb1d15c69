"""The tolerance check between a recorded and a rebuilt output."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from stages.common import compare, dataset

SCHEMA = dataset.SampleSchema(
    name="toy/v1",
    doc="toy",
    columns=(
        dataset.Column("label", pa.string(), "a label"),
        dataset.ArrayColumn("feature", "float16", (4,), "a feature"),
    ),
)


def write(folder, labels, features):
    folder.mkdir()
    shard = dataset.ShardFile(folder / "part-00000.parquet", SCHEMA)
    shard.write({"label": np.array(labels), "feature": np.asarray(features, np.float16)})
    shard.close()
    return folder


def test_one_float16_step_agrees_and_more_or_other_labels_do_not(tmp_path):
    base = np.linspace(-3, 3, 8, dtype=np.float16).reshape(2, 4)
    recorded = write(tmp_path / "a", ["x", "y"], base)
    step = base.copy()
    step[0, 0] = np.nextafter(step[0, 0], np.float16(10))  # one float16 step, as kernels differ
    assert compare.compare(recorded, write(tmp_path / "b", ["x", "y"], step)) == []
    far = base + np.float16(0.05)
    assert compare.compare(recorded, write(tmp_path / "c", ["x", "y"], far)) != []
    assert compare.compare(recorded, write(tmp_path / "d", ["x", "z"], base)) != []


def test_float64_tolerance_is_relative_to_the_largest_value(tmp_path):
    a = np.array([1.0, 2.0, 1e-20])
    assert compare.close(a, a + 1e-14)  # the PCA's cross-CPU difference
    assert not compare.close(a, a + 1e-6)
    assert not compare.close(a, a.astype(np.float32).astype(np.float64) + 1e-3)
    assert not compare.close(np.array([1, 2]), np.array([1, 3]))  # integers exactly


def test_npz_and_other_files(tmp_path):
    np.savez(tmp_path / "a.npz", basis=np.eye(3))
    np.savez(tmp_path / "b.npz", basis=np.eye(3) + 1e-15)
    np.savez(tmp_path / "c.npz", basis=np.eye(3) * 2)
    assert compare.compare(tmp_path / "a.npz", tmp_path / "b.npz") == []
    assert compare.compare(tmp_path / "a.npz", tmp_path / "c.npz")
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "b.json").write_text("{ }")
    assert compare.main([str(tmp_path / "a.json"), str(tmp_path / "a.json")]) == 0
    assert compare.main([str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 1
    assert compare.main([str(tmp_path / "gone"), str(tmp_path / "b.json")]) == 2


def test_word2vec_vectors_and_shard_manifests(tmp_path):
    from gensim.models import KeyedVectors

    def vectors(name, values, words=("a", "b")):
        kv = KeyedVectors(vector_size=3)
        kv.add_vectors(list(words), np.asarray(values, np.float32))
        kv.save_word2vec_format(tmp_path / name, binary=True)
        return tmp_path / name

    base = vectors("a.bin", [[1, 2, 3], [4, 5, 6]])
    ulp = np.nextafter(np.float32(6), np.float32(7))
    assert compare.compare(base, vectors("b.bin", [[1, 2, 3], [4, 5, ulp]])) == []
    assert compare.compare(base, vectors("c.bin", [[1, 2, 3], [4, 5, 7]]))
    assert compare.compare(base, vectors("d.bin", [[1, 2, 3], [4, 5, 6]], ("a", "c")))
    done = tmp_path / "x" / "done"
    done.mkdir(parents=True)
    (done / "m.json").write_text('{"files": [{"bytes": 10, "path": "t"}], "key": "k"}')
    other = tmp_path / "y" / "done"
    other.mkdir(parents=True)
    (other / "m.json").write_text('{"files": [{"bytes": 12, "path": "t"}], "key": "k"}')
    assert compare.compare(done / "m.json", other / "m.json") == []
    (other / "m.json").write_text('{"files": [{"bytes": 10, "path": "u"}], "key": "k"}')
    assert compare.compare(done / "m.json", other / "m.json")
