"""Sample datasets: directories of zstd Parquet shards with array columns.

The one data contract of the pipeline. A dataset is a directory `part-00000.parquet`,
`part-00001.parquet`, ... with one schema. Scalar columns are plain Arrow columns. An array column
holds one fixed-size value per sample: the array's bytes in C order, as Arrow `fixed_size_binary`,
with its shape and numpy dtype string in the field metadata (`shape`, `dtype`); the whole schema is
described in the schema metadata (`stages.schema`, JSON). Any Parquet reader loads it, and
`np.frombuffer(value, dtype).reshape(shape)` rebuilds an array.

Why binary and not Arrow fixed-size lists: Parquet encodes a list element by element with
repetition and definition levels. For MotionMNIST videos (81,920 uint8 each) that measured here
~850 videos/s written and ~1,000 read per core, against ~7,300 written and ~28,800 read as
fixed-size binary, which is also 1.5x smaller (`benchmarks/parquet_arrays.py`).

Writes go through `atomic_dir`: a dataset directory is either the complete old one or the complete
new one. Shards are written one at a time, so memory stays bounded by one shard's batch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stages.common.errors import StageError

SCHEMA_KEY = b"stages.schema"
SHARD_PATTERN = "part-{:05d}.parquet"


@dataclass(frozen=True)
class Column:
    """A scalar column: one value per sample."""

    name: str
    type: pa.DataType
    doc: str


@dataclass(frozen=True)
class ArrayColumn:
    """An array column: one `shape` array of `dtype` per sample, stored as a fixed-size list."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    doc: str

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize

    @property
    def type(self) -> pa.DataType:
        return pa.binary(self.nbytes)


@dataclass(frozen=True)
class SampleSchema:
    """The documented schema of a sample dataset."""

    name: str
    doc: str
    columns: tuple[Column | ArrayColumn, ...]
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def arrays(self) -> dict[str, ArrayColumn]:
        return {c.name: c for c in self.columns if isinstance(c, ArrayColumn)}

    def arrow(self) -> pa.Schema:
        fields = []
        for col in self.columns:
            meta = {"doc": col.doc}
            if isinstance(col, ArrayColumn):
                meta |= {"shape": json.dumps(list(col.shape)), "dtype": np.dtype(col.dtype).str}
            fields.append(pa.field(col.name, col.type, nullable=False, metadata=meta))
        described = {"name": self.name, "doc": self.doc, "metadata": dict(self.metadata)}
        return pa.schema(fields, metadata={SCHEMA_KEY: json.dumps(described, sort_keys=True)})

    def table(self, columns: Mapping[str, Any]) -> pa.Table:
        """Build a table from numpy arrays / sequences, checking every column's shape and dtype."""
        missing = [c.name for c in self.columns if c.name not in columns]
        extra = sorted(set(columns) - {c.name for c in self.columns})
        if missing or extra:
            raise ValueError(f"{self.name}: missing columns {missing}, unexpected columns {extra}")
        arrays = []
        rows = None
        for col in self.columns:
            value = columns[col.name]
            if isinstance(col, ArrayColumn):
                value = np.asarray(value)
                if value.shape[1:] != col.shape or value.dtype != np.dtype(col.dtype):
                    raise ValueError(
                        f"{self.name}.{col.name}: expected (n, {col.shape}) {col.dtype}, "
                        f"got {value.shape} {value.dtype}"
                    )
                data = pa.py_buffer(np.ascontiguousarray(value))
                arr = pa.FixedSizeBinaryArray.from_buffers(col.type, len(value), [None, data])
            else:
                arr = pa.array(value, type=col.type)
            if rows is not None and len(arr) != rows:
                raise ValueError(f"{self.name}.{col.name}: {len(arr)} rows, expected {rows}")
            rows = len(arr)
            arrays.append(arr)
        return pa.Table.from_arrays(arrays, schema=self.arrow())


def check_compression_level(level: int, key: str) -> None:
    """zstd has levels 1 to 22: anything else is a params typo (1e9 made pyarrow hang)."""
    if not 1 <= level <= 22:
        raise StageError(f"params.yaml: {key}", f"zstd levels are 1 to 22, got {level}")


class ShardFile:
    """One shard, written row group by row group so memory stays at one batch.

    Array columns skip statistics and dictionaries (useless for pixels, and costly); the writer
    embeds no timestamps, so the same rows give the same bytes.
    """

    def __init__(
        self, path: str | Path, schema: SampleSchema, *, compression_level: int = 3
    ) -> None:
        self.path = Path(path)
        self.schema = schema
        self.rows = 0
        scalars = [c.name for c in schema.columns if isinstance(c, Column)]
        self._writer = pq.ParquetWriter(
            self.path,
            schema.arrow(),
            compression="zstd",
            compression_level=compression_level,
            use_dictionary=scalars,
            write_statistics=scalars,
        )

    def write(self, columns: Mapping[str, Any]) -> None:
        """Append one batch (numpy arrays or sequences per column) as one row group."""
        table = self.schema.table(columns)
        self._writer.write_table(table, row_group_size=max(len(table), 1))
        self.rows += len(table)

    def close(self) -> int:
        """Finish the file; returns its size in bytes."""
        self._writer.close()
        return self.path.stat().st_size


class ShardWriter:
    """Streams batches into consecutive shards `part-NNNNN.parquet` of at most `shard_rows` rows."""

    def __init__(
        self,
        directory: str | Path,
        schema: SampleSchema,
        *,
        shard_rows: int,
        compression_level: int = 3,
    ) -> None:
        self.directory = Path(directory)
        self.schema = schema
        self.shard_rows = shard_rows
        self.compression_level = compression_level
        self.shards = 0
        self.rows = 0
        self.bytes = 0
        self._current: ShardFile | None = None

    def write(self, columns: Mapping[str, Any]) -> None:
        n = len(next(iter(columns.values())))
        lo = 0
        while lo < n:
            if self._current is None:
                path = self.directory / SHARD_PATTERN.format(self.shards)
                self._current = ShardFile(
                    path, self.schema, compression_level=self.compression_level
                )
            take = min(n - lo, self.shard_rows - self._current.rows)
            self._current.write({k: v[lo : lo + take] for k, v in columns.items()})
            lo += take
            self.rows += take
            if self._current.rows == self.shard_rows:
                self._finish()

    def close(self) -> None:
        """Finish the last shard; an empty dataset still gets one (empty) shard with the schema."""
        if self._current is None and self.shards == 0:
            path = self.directory / SHARD_PATTERN.format(0)
            self._current = ShardFile(path, self.schema, compression_level=self.compression_level)
        if self._current is not None:
            self._finish()

    def _finish(self) -> None:
        assert self._current is not None
        self.bytes += self._current.close()
        self.shards += 1
        self._current = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()


# --- reading ---------------------------------------------------------------------------------


def shard_paths(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise StageError(directory, "dataset directory not found (run its stage first: dvc repro)")
    paths = sorted(directory.glob("part-*.parquet"))
    if not paths:
        raise StageError(directory, "no part-*.parquet shards in the dataset directory")
    return paths


def describe(directory: str | Path) -> dict[str, Any]:
    """The schema description a dataset was written with (name, doc, metadata)."""
    return describe_file(shard_paths(directory)[0])


def describe_file(path: str | Path) -> dict[str, Any]:
    """The schema description one Parquet file was written with."""
    meta = pq.read_schema(path).metadata or {}
    if SCHEMA_KEY not in meta:
        raise StageError(path, "not a stages sample dataset (no stages.schema metadata)")
    return json.loads(meta[SCHEMA_KEY])


def array_specs(schema: pa.Schema) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    specs = {}
    for f in schema:
        meta = f.metadata or {}
        if b"shape" in meta:
            specs[f.name] = (np.dtype(meta[b"dtype"].decode()), tuple(json.loads(meta[b"shape"])))
    return specs


def to_numpy(table: pa.Table) -> dict[str, Any]:
    """Columns of a table as numpy arrays; array columns get their recorded shape back."""
    specs = array_specs(table.schema)
    out: dict[str, Any] = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if name in specs:
            dtype, shape = specs[name]
            out[name] = _binary_to_numpy(column, dtype, shape)
        else:
            out[name] = column.to_numpy(zero_copy_only=False)
    return out


def _binary_to_numpy(column: pa.Array, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    nbytes = column.type.byte_width
    values = np.frombuffer(column.buffers()[1], np.uint8)
    values = values[column.offset * nbytes : (column.offset + len(column)) * nbytes]
    return values.view(dtype).reshape(len(column), *shape)


def iter_batches(
    directory: str | Path, columns: Sequence[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Yield the dataset row group by row group as numpy columns; memory stays at one row group."""
    for path in shard_paths(directory):
        file = pq.ParquetFile(path)
        for group in range(file.num_row_groups):
            yield to_numpy(file.read_row_group(group, columns=columns))


def read_arrays(directory: str | Path, columns: Sequence[str] | None = None) -> dict[str, Any]:
    """The whole dataset (or some columns of it) as numpy arrays, for data that fits in memory."""
    tables = [pq.read_table(path, columns=columns) for path in shard_paths(directory)]
    return to_numpy(pa.concat_tables(tables))


def column_names(directory: str | Path) -> list[str]:
    return pq.read_schema(shard_paths(directory)[0]).names


def count_rows(directory: str | Path) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in shard_paths(directory))
