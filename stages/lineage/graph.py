"""The lineage of every metric: which stages, data, code and parameters produced it.

`load_pipeline` reads the pipeline through DVC's own API: the stages of `dvc.yaml` (templates and
`foreach`/`matrix` resolved by DVC), the hashes and parameter values `dvc.lock` recorded for each of
them, and the hashes of the files on disk now, computed by DVC's hashing (directory outputs get
DVC's `.dir` hash, cached in DVC's state database, so a second look is cheap). Each entry carries
its status, so stale lineage (an input changed since the lock was written) is never shown as
current.

Everything after loading is pure: `Pipeline` is plain data, and `chain`, `metrics_depending_on`
and `find_metric` answer the audit questions from it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from stages.common.errors import StageError

OK, MODIFIED, MISSING, NOT_LOCKED = "ok", "modified", "missing", "not in dvc.lock"
PARAM_NEW, PARAM_DELETED = "new", "deleted"


@dataclass(frozen=True)
class Entry:
    """A dependency or output of a stage, as `dvc.lock` recorded it and as it is on disk."""

    path: str  # relative to the repository root, POSIX separators
    md5: str | None  # from dvc.lock (`<hash>.dir` for a directory); None if never locked
    size: int | None
    nfiles: int | None  # directories only
    status: str  # OK, MODIFIED, MISSING or NOT_LOCKED


@dataclass(frozen=True)
class Param:
    """One parameter value a stage ran with (flattened key), and whether the file still says so."""

    file: str
    key: str
    value: Any  # the value in dvc.lock (or the current one for a new key)
    status: str  # OK, MODIFIED, PARAM_NEW or PARAM_DELETED


@dataclass(frozen=True)
class StageRecord:
    name: str
    cmd: str  # the command dvc.lock recorded (dvc.yaml's if the stage never ran)
    locked: bool
    cmd_changed: bool
    deps: tuple[Entry, ...]
    outs: tuple[Entry, ...]
    params: tuple[Param, ...]
    metrics: tuple[str, ...]  # outputs declared as metrics
    in_git: tuple[str, ...] = ()  # outputs with `cache: false`: metrics, stats, plots, reports

    def changes(self) -> list[str]:
        """What differs from dvc.lock, one phrase each; empty when the stage is current."""
        if not self.locked:
            return ["never run (no entry in dvc.lock)"]
        found = ["command changed"] if self.cmd_changed else []
        found += [f"dep {e.path}: {e.status}" for e in self.deps if e.status != OK]
        found += [f"param {p.file}:{p.key}: {p.status}" for p in self.params if p.status != OK]
        found += [f"out {e.path}: {e.status}" for e in self.outs if e.status != OK]
        return found


@dataclass(frozen=True)
class Pipeline:
    stages: Mapping[str, StageRecord]  # in DVC's order (dvc.yaml order)
    git_commit: str | None = None
    git_dirty: tuple[str, ...] = field(default=())  # audited files with uncommitted changes
    added: tuple[str, ...] = ()  # raw data tracked by `dvc add` (a .dvc file each)

    def metrics_files(self) -> list[str]:
        return sorted({m for s in self.stages.values() for m in s.metrics})

    def git_outputs(self) -> list[str]:
        """What the pipeline writes into Git (not DVC's cache): a rerun commits these."""
        return sorted({p for s in self.stages.values() for p in s.in_git})

    @functools.cached_property
    def dep_producers(self) -> dict[str, list[str]]:
        """`producers` of every dependency path, computed once (every audit question asks)."""
        outs = [(o.path, s.name) for s in self.stages.values() for o in s.outs]
        paths = {d.path for s in self.stages.values() for d in s.deps}
        found: dict[str, list[str]] = {}
        for path in paths:
            names = [name for out, name in outs if overlaps(out, path)]
            found[path] = list(dict.fromkeys(names))  # a stage once, in pipeline order
        return found

    @functools.cached_property
    def edges(self) -> dict[str, set[str]]:
        """For each stage, the stages whose outputs it depends on (computed once: every chain
        asks, and a stage lists its whole import closure as deps)."""
        return {
            s.name: {p for d in s.deps for p in producers(self, d.path) if p != s.name}
            for s in self.stages.values()
        }


# --- pure questions on a pipeline ------------------------------------------------------------


def overlaps(a: str, b: str) -> bool:
    """Whether two repository paths are the same or one lies inside the other (DVC's rule)."""
    pa, pb = PurePosixPath(a).as_posix(), PurePosixPath(b).as_posix()
    return pa == pb or pb.startswith(pa + "/") or pa.startswith(pb + "/")


def producers(pipeline: Pipeline, path: str) -> list[str]:
    """Stages with an output that is, contains or lies inside `path`."""
    known = pipeline.dep_producers
    if path in known:
        return known[path]
    return [s.name for s in pipeline.stages.values() if any(overlaps(o.path, path) for o in s.outs)]


def chain(pipeline: Pipeline, stage: str) -> list[str]:
    """`stage` and every stage upstream of it, raw inputs first (topological, ties by name)."""
    edges = pipeline.edges
    needed: set[str] = set()
    todo = [stage]
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(edges[name])
    return _toposort({n: edges[n] & needed for n in needed})


def downstream(pipeline: Pipeline, stages: Iterable[str]) -> set[str]:
    """The given stages and every stage that depends on them, directly or not."""
    edges = pipeline.edges
    found = set(stages)
    grew = True
    while grew:
        more = {n for n, ups in edges.items() if ups & found} - found
        found |= more
        grew = bool(more)
    return found


def _toposort(edges: Mapping[str, set[str]]) -> list[str]:
    order: list[str] = []
    done: set[str] = set()
    while len(done) < len(edges):
        ready = sorted(n for n, ups in edges.items() if n not in done and ups <= done)
        if not ready:  # DVC refuses cycles, so this means a hand-made Pipeline is wrong
            raise StageError("dvc.yaml", f"cycle among stages {sorted(set(edges) - done)}")
        order.append(ready[0])
        done.add(ready[0])
    return order


def producer_of_metric(pipeline: Pipeline, path: str) -> str:
    for s in pipeline.stages.values():
        if path in s.metrics:
            return s.name
    known = ", ".join(pipeline.metrics_files()) or "none"
    raise StageError(path, f"not a metrics file declared in dvc.yaml (declared: {known})")


def readers(pipeline: Pipeline, path: str) -> set[str]:
    """Stages with a dependency that is, contains or lies inside `path`."""
    return {s.name for s in pipeline.stages.values() if any(overlaps(d.path, path) for d in s.deps)}


def metrics_depending_on(pipeline: Pipeline, path: str) -> dict[str, list[str]]:
    """Metrics files whose chain uses `path` (a file or directory, input or intermediate).

    Returns {metrics file: [stages that read `path` directly]}.
    """
    readers_ = readers(pipeline, path)
    made_by = set(producers(pipeline, path))
    if not readers_ and not made_by:
        raise StageError(path, "no stage in dvc.yaml depends on or produces this path")
    affected = downstream(pipeline, readers_ | made_by)
    result = {}
    for s in pipeline.stages.values():
        if s.name in affected:
            direct = sorted(set(chain(pipeline, s.name)) & (readers_ | made_by))
            for metric in s.metrics:
                result[metric] = direct
    return dict(sorted(result.items()))


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys, like `dvc metrics show` and `dvc params diff` print them."""
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out |= flatten(value, f"{prefix}{key}.")
        return out
    return {prefix[:-1]: obj}


def find_metric(values: Mapping[str, Mapping[str, Any]], name: str) -> dict[str, Any]:
    """Files whose flattened metrics hold `name` (exact key, or `file:key`): {file: value}."""
    file, _, key = name.rpartition(":")
    hits = {
        path: flat[key]
        for path, flat in values.items()
        if key in flat and (not file or path == file)
    }
    if not hits:
        raise StageError(name, "no metrics file declares this metric (see: dvc metrics show)")
    return hits


def param_rows(file: str, locked: Mapping[str, Any], current: Mapping[str, Any]) -> list[Param]:
    """Flattened parameter values from dvc.lock, each compared with the current params file."""
    old, new = flatten(dict(locked)), flatten(dict(current))
    rows = [
        Param(
            file,
            k,
            v,
            OK if k in new and new[k] == v else (MODIFIED if k in new else PARAM_DELETED),
        )
        for k, v in old.items()
    ]
    rows += [Param(file, k, v, PARAM_NEW) for k, v in new.items() if k not in old]
    return sorted(rows, key=lambda p: p.key)


# --- loading from DVC ------------------------------------------------------------------------


def load_pipeline(root: str | Path = ".", *, git: bool = True) -> Pipeline:
    """Every stage of `root`'s dvc.yaml with its dvc.lock record, checked against the disk."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    root = Path(root).resolve()
    try:
        repo = Repo(str(root))
    except DvcException as exc:
        raise StageError(root, f"not a DVC repository: {exc}") from None
    with repo:
        try:
            dvc_stages = [s for s in repo.index.stages if s.cmd is not None]
            added = sorted(
                _relpath(repo, o) for s in repo.index.stages if s.cmd is None for o in s.outs
            )
        except DvcException as exc:
            raise StageError(root / "dvc.yaml", str(exc)) from None
        top_level = set(_top_level_metrics(repo))
        locks: dict[Path, dict[str, Any]] = {}
        records = {}
        for stage in dvc_stages:
            dvcfile = Path(stage.path)  # dvc.yaml; its lock file lies beside it
            lock_path = dvcfile.with_name("dvc.lock")
            if lock_path not in locks:
                locks[lock_path] = _read_lock(lock_path)
            where = dvcfile.parent.relative_to(root).as_posix()
            name = stage.name if where == "." else f"{where}/dvc.yaml:{stage.name}"
            records[name] = _record(repo, stage, name, locks[lock_path].get(stage.name), top_level)
        paths = {e.path for r in records.values() for e in r.deps + r.outs}
        paths |= {p.file for r in records.values() for p in r.params}
        audited = ["dvc.yaml", "dvc.lock", *sorted(paths)]
        commit, dirty = _git_state(repo, audited) if git else (None, ())
    return Pipeline(records, commit, dirty, tuple(added))


def _read_lock(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise StageError(path, f"not valid YAML: {exc}") from None
    stages = data.get("stages")
    if not isinstance(stages, dict):
        raise StageError(path, "no 'stages' mapping (not a DVC 3 lock file?)")
    return stages


def _top_level_metrics(repo: Any) -> Iterable[str]:
    # DVCLive declares its metrics at the top level of dvc.yaml; DVC's own collector resolves them.
    from dvc.repo.metrics.show import _collect_top_level_metrics

    return _collect_top_level_metrics(repo)


def _relpath(repo: Any, item: Any) -> str:
    return Path(item.fs_path).relative_to(repo.root_dir).as_posix()


def _entry(repo: Any, item: Any, locked: bool) -> Entry:
    path = _relpath(repo, item)
    hash_info = item.hash_info
    if not locked or hash_info is None or not hash_info.value:
        return Entry(path, None, None, None, NOT_LOCKED)
    if not item.exists:
        status = MISSING
    else:
        status = OK if item.get_hash().value == hash_info.value else MODIFIED
    meta = item.meta
    return Entry(path, hash_info.value, meta.size, meta.nfiles, status)


def _record(
    repo: Any, stage: Any, name: str, lock: dict | None, top_level: set[str]
) -> StageRecord:
    from dvc.dependency.param import ParamsDependency

    locked = lock is not None
    deps, params = [], []
    for dep in stage.deps:
        if isinstance(dep, ParamsDependency):
            file = _relpath(repo, dep)
            recorded = dep.hash_info.value if locked and dep.hash_info else {}
            params += param_rows(file, recorded or {}, dep.read_params())
        else:
            deps.append(_entry(repo, dep, locked))
    outs = [_entry(repo, out, locked) for out in stage.outs]
    metrics = {e.path for e, o in zip(outs, stage.outs, strict=True) if o.metric}
    metrics |= {m for m in top_level if any(overlaps(m, e.path) for e in outs)}
    return StageRecord(
        name=name,
        cmd=lock.get("cmd", "") if locked else stage.cmd,
        locked=locked,
        cmd_changed=locked and lock.get("cmd") != stage.cmd,
        deps=tuple(sorted(deps, key=lambda e: e.path)),
        outs=tuple(sorted(outs, key=lambda e: e.path)),
        params=tuple(params),
        metrics=tuple(sorted(metrics)),
        in_git=tuple(sorted(_relpath(repo, o) for o in stage.outs if not o.use_cache)),
    )


def _git_state(repo: Any, paths: list[str]) -> tuple[str | None, tuple[str, ...]]:
    """HEAD's commit and which of `paths` differ from it (untracked included)."""
    import subprocess

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=repo.root_dir, capture_output=True, text=True, check=False
        )
        return done.stdout if done.returncode == 0 else ""

    commit = git("rev-parse", "--verify", "--quiet", "HEAD").strip() or None
    status = git("status", "--porcelain=v1", "-z", "--untracked-files=all", "--", *paths)
    return commit, tuple(sorted(porcelain_paths(status)))


def porcelain_paths(status: str) -> set[str]:
    """Paths in `git status --porcelain=v1 -z` output ("XY path", a rename adds its old path)."""
    entries, paths = iter(status.split("\0")), set()
    for entry in entries:
        if len(entry) > 3:
            paths.add(entry[3:])
            if entry[0] in "RC":
                next(entries, None)  # the path it was renamed or copied from
    return paths


def read_metrics(root: str | Path, files: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Flattened values of each metrics file that exists (JSON or YAML, as DVC reads them)."""
    out = {}
    for file in files:
        path = Path(root) / file
        if not path.is_file():
            continue
        try:
            data = (
                json.loads(path.read_text())
                if path.suffix == ".json"
                else yaml.safe_load(path.read_text())
            )
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise StageError(path, f"metrics file does not parse: {exc}") from None
        out[file] = flatten(data) if isinstance(data, dict) else {}
    return out
