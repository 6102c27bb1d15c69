"""The sample-dataset contract: round trips, shape metadata, sharding, atomicity, determinism."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.common import dataset
from stages.common.atomic import atomic_dir
from stages.common.errors import StageError

SCHEMA = dataset.SampleSchema(
    name="toy/v1",
    doc="a toy dataset",
    columns=(
        dataset.Column("id", pa.int64(), "row id"),
        dataset.Column("label", pa.string(), "a label"),
        dataset.ArrayColumn("image", "uint8", (3, 4, 5), "an image"),
        dataset.ArrayColumn("vector", "float32", (7,), "a vector"),
    ),
    metadata={"version": 1},
)


def batch(lo: int, n: int) -> dict:
    ids = np.arange(lo, lo + n)
    return {
        "id": ids,
        "label": [f"row{i}" for i in ids],
        "image": (np.arange(n * 60).reshape(n, 3, 4, 5) + lo).astype(np.uint8),
        "vector": np.random.default_rng(lo).standard_normal((n, 7)).astype(np.float32),
    }


def write(directory, batches, shard_rows=10):
    with atomic_dir(directory) as tmp, dataset.ShardWriter(tmp, SCHEMA, shard_rows=shard_rows) as w:
        for b in batches:
            w.write(b)
    return w


def test_round_trip_restores_arrays_and_shards_by_rows(tmp_path):
    parts = [batch(0, 7), batch(7, 9), batch(16, 8)]
    writer = write(tmp_path / "ds", parts)
    assert (writer.rows, writer.shards) == (24, 3)
    assert [p.name for p in dataset.shard_paths(tmp_path / "ds")] == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    got = dataset.read_arrays(tmp_path / "ds")
    for name in ("id", "image", "vector"):
        np.testing.assert_array_equal(got[name], np.concatenate([p[name] for p in parts]))
    assert got["image"].shape == (24, 3, 4, 5) and got["image"].dtype == np.uint8
    assert list(got["label"][:2]) == ["row0", "row1"]
    assert dataset.count_rows(tmp_path / "ds") == 24


def test_schema_metadata_documents_shapes_for_any_parquet_reader(tmp_path):
    write(tmp_path / "ds", [batch(0, 3)])
    schema = pq.read_schema(dataset.shard_paths(tmp_path / "ds")[0])
    image = schema.field("image")
    assert json.loads(image.metadata[b"shape"]) == [3, 4, 5]
    assert image.metadata[b"dtype"] == b"|u1"
    assert schema.field("vector").metadata[b"dtype"] == b"<f4"
    assert image.type == pa.binary(60)
    assert dataset.describe(tmp_path / "ds") == {
        "name": "toy/v1",
        "doc": "a toy dataset",
        "metadata": {"version": 1},
    }
    # Plain pyarrow + numpy rebuild an array without our reader.
    raw = pq.read_table(dataset.shard_paths(tmp_path / "ds")[0]).column("vector")[1].as_py()
    np.testing.assert_array_equal(np.frombuffer(raw, "<f4"), batch(0, 3)["vector"][1])


def test_iter_batches_yields_row_groups_in_order(tmp_path):
    write(tmp_path / "ds", [batch(0, 4), batch(4, 4), batch(8, 4)], shard_rows=100)
    ids = [b["id"].tolist() for b in dataset.iter_batches(tmp_path / "ds", columns=["id"])]
    assert ids == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]


def test_wrong_array_shape_or_dtype_is_rejected(tmp_path):
    bad = batch(0, 2) | {"image": np.zeros((2, 3, 4, 6), np.uint8)}
    with pytest.raises(ValueError, match=r"toy/v1.image: expected"):
        SCHEMA.table(bad)
    with pytest.raises(ValueError, match="missing columns"):
        SCHEMA.table({"id": [1]})


def test_failed_write_keeps_the_previous_dataset(tmp_path):
    write(tmp_path / "ds", [batch(0, 5)])
    before = {p.name: p.read_bytes() for p in dataset.shard_paths(tmp_path / "ds")}
    with (
        pytest.raises(RuntimeError),
        atomic_dir(tmp_path / "ds") as tmp,
        dataset.ShardWriter(tmp, SCHEMA, shard_rows=2) as writer,
    ):
        writer.write(batch(100, 3))
        raise RuntimeError("crash half way")
    after = {p.name: p.read_bytes() for p in dataset.shard_paths(tmp_path / "ds")}
    assert after == before
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temporary left behind


def test_same_rows_give_identical_bytes(tmp_path):
    write(tmp_path / "a", [batch(0, 12)])
    write(tmp_path / "b", [batch(0, 12)])
    a, b = dataset.shard_paths(tmp_path / "a"), dataset.shard_paths(tmp_path / "b")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


def test_empty_dataset_still_has_a_schema(tmp_path):
    write(tmp_path / "ds", [])
    assert dataset.count_rows(tmp_path / "ds") == 0
    assert dataset.read_arrays(tmp_path / "ds")["image"].shape == (0, 3, 4, 5)


def test_missing_dataset_names_the_directory(tmp_path):
    with pytest.raises(StageError, match="dataset directory not found"):
        dataset.read_arrays(tmp_path / "nope")
