"""Compare two builds of an output: bytes where they must agree, floats within a stated tolerance.

    python -m stages.common.compare RECORDED REBUILT     # files or output directories

On every x86-64-v3 CPU the pipeline's outputs are byte-identical (README, "Reproducibility"). On a
CPU where the float libraries cannot be pinned (no AVX2, or not x86-64), float results may differ
in their last bits; this command says whether a rebuilt output still agrees with the recorded one
(for example one fetched with `dvc get . PATH --rev COMMIT -o RECORDED`): integers, strings and
every other byte exactly (shard manifests but for the table sizes they record), float arrays
(Parquet array columns, npz arrays, word2vec vectors) within `RTOL` of their dtype, relative to
the largest magnitude of the array (one float16 step, about 1,000 float32 steps, ~10^7 float64
steps: the differences measured between kernels were 1, 1 and ~70 steps). Exit 0 when everything
agrees, 1 with one line per difference otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from stages.common.dataset import to_numpy

RTOL = {np.dtype(np.float16): 2e-3, np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-9}


def close(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal arrays, or float arrays of one shape and dtype within RTOL of their largest value."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype not in RTOL:
        return np.array_equal(a, b)
    scale = float(np.nanmax(np.abs(a), initial=0.0))
    same_nan = np.array_equal(np.isnan(a), np.isnan(b))
    return same_nan and np.allclose(a, b, rtol=0, atol=RTOL[a.dtype] * scale, equal_nan=True)


def compare_parquet(recorded: Path, rebuilt: Path) -> list[str]:
    old, new = pq.read_table(recorded), pq.read_table(rebuilt)
    if old.schema != new.schema or old.schema.metadata != new.schema.metadata:
        return [f"{rebuilt}: other schema than {recorded}"]
    if old.num_rows != new.num_rows:
        return [f"{rebuilt}: {new.num_rows} rows, {recorded} has {old.num_rows}"]
    a, b = to_numpy(old), to_numpy(new)
    return [f"{rebuilt}: column {k} differs beyond tolerance" for k in a if not close(a[k], b[k])]


def compare_npz(recorded: Path, rebuilt: Path) -> list[str]:
    with np.load(recorded) as old, np.load(rebuilt) as new:
        if sorted(old.files) != sorted(new.files):
            return [f"{rebuilt}: other arrays than {recorded}"]
        keys = [k for k in old.files if not close(old[k], new[k])]
        return [f"{rebuilt}: {k} differs beyond tolerance" for k in keys]


def compare_word2vec(recorded: Path, rebuilt: Path) -> list[str]:
    """word2vec binary files: the same words in the same order, vectors within tolerance."""
    from gensim.models import KeyedVectors

    old, new = (KeyedVectors.load_word2vec_format(p, binary=True) for p in (recorded, rebuilt))
    if old.index_to_key != new.index_to_key:
        return [f"{rebuilt}: other words than {recorded}"]
    return [] if close(old.vectors, new.vectors) else [f"{rebuilt}: vectors beyond tolerance"]


def compare_manifest(recorded: Path, rebuilt: Path) -> list[str]:
    """A shard manifest records its tables' sizes, which follow the float bytes: all else exact."""

    def without_sizes(obj: object) -> object:
        if isinstance(obj, dict):
            return {k: without_sizes(v) for k, v in obj.items() if k != "bytes"}
        return [without_sizes(v) for v in obj] if isinstance(obj, list) else obj

    old, new = (without_sizes(json.loads(p.read_text())) for p in (recorded, rebuilt))
    return [] if old == new else [f"{rebuilt}: manifest differs beyond table sizes"]


def compare_file(recorded: Path, rebuilt: Path) -> list[str]:
    if not rebuilt.is_file():
        return [f"{rebuilt}: missing"]
    if recorded.read_bytes() == rebuilt.read_bytes():
        return []
    if recorded.suffix == ".parquet":
        return compare_parquet(recorded, rebuilt)
    if recorded.suffix == ".npz":
        return compare_npz(recorded, rebuilt)
    if recorded.suffix == ".bin":
        return compare_word2vec(recorded, rebuilt)
    if recorded.suffix == ".json" and recorded.parent.name == "done":
        return compare_manifest(recorded, rebuilt)
    return [f"{rebuilt}: bytes differ ({recorded.suffix or 'no suffix'}: compared exactly)"]


def compare(recorded: Path, rebuilt: Path) -> list[str]:
    """Every difference beyond tolerance between two files or two directory trees."""
    if recorded.is_file():
        return compare_file(recorded, rebuilt)
    old = {p.relative_to(recorded) for p in recorded.rglob("*") if p.is_file()}
    new = {p.relative_to(rebuilt) for p in rebuilt.rglob("*") if p.is_file()}
    problems = [f"{rebuilt / p}: not in {recorded}" for p in sorted(new - old)]
    for path in sorted(old):
        problems += compare_file(recorded / path, rebuilt / path)
    return problems


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(prog="python -m stages.common.compare", description=__doc__)
    cli.add_argument("recorded", type=Path)
    cli.add_argument("rebuilt", type=Path)
    args = cli.parse_args(argv)
    if not args.recorded.exists():
        print(f"compare: error: {args.recorded}: not found", file=sys.stderr)
        return 2
    problems = compare(args.recorded, args.rebuilt)
    for line in problems:
        print(line)
    print(f"{args.rebuilt}: {'differs' if problems else 'agrees'} with {args.recorded}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
