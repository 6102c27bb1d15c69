"""A stage's code: the project files its module imports, directly or through other project files.

DVC re-runs a stage when one of its `deps` changes, so a stage's `deps` must list exactly this
closure (a test checks every stage in dvc.yaml), and anything that caches work by a code digest
(MCN shards, training resume state) digests the same files, so no edit can hide behind a stale
digest. Imports are read with `ast`, not executed: a function-level import counts too. Importing
`stages.a.b` runs `stages/__init__.py` and `stages/a/__init__.py` first, so those (and what they
import: the CPU kernel pins) are part of every closure.

    python -m stages.common.closure stages.mcn.video_features   # the deps lines for dvc.yaml
"""

from __future__ import annotations

import ast
import hashlib
import sys
from pathlib import Path

PACKAGE = "stages"
ROOT = Path(__file__).resolve().parents[2]


def module_file(module: str, root: Path = ROOT) -> Path | None:
    """The file of dotted project module `module`; None for a package or another library."""
    path = root.joinpath(*module.split(".")).with_suffix(".py")
    return path if path.is_file() else None


def imported_modules(path: Path) -> set[str]:
    """Project modules that `path` imports (in `from stages.x import y`, y may be a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").split(".")[0] == PACKAGE
        ):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def files_run_by_import(module: str, root: Path = ROOT) -> list[Path]:
    """The `__init__.py` of each enclosing package, then the module's own file (if it is one)."""
    parts = module.split(".")
    inits = [root.joinpath(*parts[:i], "__init__.py") for i in range(1, len(parts) + 1)]
    own = module_file(module, root)
    return [p for p in inits if p.is_file()] + ([own] if own else [])


def import_closure(module: str, root: Path = ROOT) -> list[Path]:
    """Every project file that importing `module` reads, its own file first, the rest sorted."""
    first = module_file(module, root)
    if first is None:
        raise ValueError(f"{module}: not a module file under {root / PACKAGE}")
    seen: set[Path] = set()
    todo = [first, *files_run_by_import(module, root)]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path):
            todo.extend(p for p in files_run_by_import(name, root) if p not in seen)
    return [first, *sorted(seen - {first})]


def code_digest(module: str, root: Path = ROOT) -> str:
    """sha256 over the relative paths and bytes of `module`'s import closure."""
    digest = hashlib.sha256()
    for path in import_closure(module, root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


if __name__ == "__main__":
    for name in sys.argv[1:] or [sys.exit("usage: python -m stages.common.closure MODULE ...")]:
        for path in import_closure(name):
            print(f"      - {path.relative_to(ROOT).as_posix()}")
