"""Resumable, atomically written work shards for corpus-scale stages.

A stage splits its work into shards with a stable `key`. A shard's tables go to
`<root>/<table>/part-<key>.parquet` (so each table is an ordinary sample dataset readable with
`dataset.iter_batches`), each file written to a temporary name and renamed; the shard's manifest
`<root>/done/part-<key>.json` is written last. A shard counts as complete only when its manifest
exists, carries the same `fingerprint` (a digest of everything the shard's output depends on) and
every file it lists is there with the recorded size. So an interrupted run redoes only the shards
it had not finished, and a changed input or parameter redoes exactly the shards it touches.
At the end of a run `remove_stale` leaves exactly the files the run's manifests list.

Every file is written under a temporary name that carries the writer's host and pid
(`.<name>~<host>~<pid>.tmp`), so `remove_stale` can prove a temporary abandoned (its writer, on
this host, is no longer running) and never deletes one another process is still writing.

Manifests hold no timings or host names: the same work gives byte-identical outputs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from stages.common import dataset

DONE = "done"
HOST = socket.gethostname()
TEMPORARY = re.compile(r"\..+~(?P<host>[^~]+)~(?P<pid>[1-9][0-9]{0,9})\.tmp")

T = TypeVar("T")


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
    written = {}
    for table, (schema, columns) in tables.items():
        path = table_path(root, table, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        written[table] = publish(path, functools.partial(write_table, schema=schema, data=columns))
    manifest = {"key": key, "fingerprint": digest, "tables": written, **record}
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"  # as atomic.write_json writes
    manifest_path(root, key).parent.mkdir(parents=True, exist_ok=True)
    publish(manifest_path(root, key), lambda tmp: tmp.write_text(text))
    return manifest


def write_table(path: Path, schema: dataset.SampleSchema, data: Mapping[str, Any]) -> dict:
    shard = dataset.ShardFile(path, schema)
    shard.write(data)
    size = shard.close()
    return {"rows": shard.rows, "bytes": size}


def temporary(path: Path) -> Path:
    """The hidden name `path` is written under before its rename: this writer's host and pid."""
    return path.with_name(f".{path.name}~{HOST}~{os.getpid()}.tmp")


def publish(path: Path, write: Callable[[Path], T]) -> T:
    """`write(temporary(path))`, then rename onto `path`; no temporary outlives a failure."""
    tmp = temporary(path)
    try:
        result = write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return result


def read_manifests(root: Path, keys: Iterable[str]) -> list[dict]:
    return [json.loads(manifest_path(root, key).read_text()) for key in keys]


def writer_alive(path: Path) -> bool:
    """Whether `path` is a temporary whose writer may still be running (then it must stay).

    Only a writer on this host can be checked; one on another (a shared file system under a Dask
    cluster) counts as alive. A recycled pid keeps a dead writer's file: garbage, never a loss.
    """
    match = TEMPORARY.fullmatch(path.name)
    if match is None:
        return False
    if match["host"] != HOST:
        return True
    try:
        os.kill(int(match["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale(root: Path, manifests: Iterable[Mapping[str, Any]]) -> list[str]:
    """Delete all under `root` but the files `manifests` list and live writers' temporaries.

    So the output holds exactly what the current plan and params produced: no shard of an older
    plan, no table they no longer make (`windows-1000` after `audio_window` became 500,
    `embeddings` without DaveNet weights), no manifest of a shard not planned now, no folder left
    empty, no temporary of a killed run. Returns the removed paths.
    """
    keep = set()
    for manifest in manifests:
        keep.add(manifest_path(root, manifest["key"]))
        keep.update(table_path(root, table, manifest["key"]) for table in manifest["tables"])
    removed = []
    for folder, dirs, files in os.walk(root, topdown=False):  # a folder's contents before it
        for name in files:
            path = Path(folder, name)
            if path not in keep and not writer_alive(path):
                path.unlink()
                removed.append(str(path))
        for name in dirs:
            path = Path(folder, name)
            if path.is_symlink():
                path.unlink()
            elif any(path.iterdir()):  # holds a kept file or a live writer's temporary
                continue
            else:
                path.rmdir()
            removed.append(str(path))
    return removed
