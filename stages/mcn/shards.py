"""Resumable, atomically written work shards for corpus-scale stages.

A stage splits its work into shards with a stable `key`. A shard's tables go to
`<root>/<table>/part-<key>.parquet` (so each table is an ordinary sample dataset readable with
`dataset.iter_batches`), each file written to a temporary name and renamed; the shard's manifest
`<root>/done/part-<key>.json` is written last. A shard counts as complete only when its manifest
exists, carries the same `fingerprint` (a digest of everything the shard's output depends on) and
every file it lists is there with the recorded size. So an interrupted run redoes only the shards
it had not finished, and a changed input or parameter redoes exactly the shards it touches.

Manifests hold no timings or host names: the same work gives byte-identical outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from stages.common import dataset
from stages.common.atomic import write_json

DONE = "done"


def fingerprint(*parts: Any) -> str:
    """sha256 of the JSON of `parts` (sorted keys): a stable digest of a shard's inputs."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def manifest_path(root: Path, key: str) -> Path:
    return root / DONE / f"part-{key}.json"


def table_path(root: Path, table: str, key: str) -> Path:
    return root / table / f"part-{key}.parquet"


def is_complete(root: Path, key: str, digest: str) -> bool:
    path = manifest_path(root, key)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("fingerprint") != digest:
        return False
    return all(
        (p := table_path(root, table, key)).is_file() and p.stat().st_size == info["bytes"]
        for table, info in manifest["tables"].items()
    )


def write_shard(
    root: Path,
    key: str,
    digest: str,
    tables: Mapping[str, tuple[dataset.SampleSchema, Mapping[str, Any]]],
    record: Mapping[str, Any],
) -> dict:
    """Write a shard's tables (schema, columns) and then its manifest; returns the manifest."""
    manifest_path(root, key).unlink(missing_ok=True)  # never a manifest over half-new files
    if root.is_dir():  # a table this shard no longer writes (e.g. embeddings without weights)
        for folder in root.iterdir():
            if folder.is_dir() and folder.name not in tables and folder.name != DONE:
                table_path(root, folder.name, key).unlink(missing_ok=True)
    written = {}
    for table, (schema, columns) in tables.items():
        path = table_path(root, table, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            shard = dataset.ShardFile(tmp, schema)
            shard.write(columns)
            size = shard.close()
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        written[table] = {"rows": shard.rows, "bytes": size}
    manifest = {"key": key, "fingerprint": digest, "tables": written, **record}
    write_json(manifest_path(root, key), manifest)
    return manifest


def read_manifests(root: Path, keys: Iterable[str]) -> list[dict]:
    return [json.loads(manifest_path(root, key).read_text()) for key in keys]


def remove_stale(root: Path, keys: Iterable[str]) -> list[str]:
    """Delete shard files whose key is not in `keys` (left by a run with another plan)."""
    keep = {f"part-{k}" for k in keys}
    removed = []
    if not root.is_dir():
        return removed
    for folder in (p for p in root.iterdir() if p.is_dir()):
        for path in folder.iterdir():
            leftover_tmp = path.name.startswith(".") and path.name.endswith(".tmp")
            if leftover_tmp or path.name.split(".")[0] not in keep:
                path.unlink()
                removed.append(str(path))
    return removed
