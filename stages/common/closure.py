"""A stage's code: the project files its module imports, directly or through other project files.

DVC re-runs a stage when one of its `deps` changes, so a stage's `deps` must list exactly this
closure (a test checks every stage in dvc.yaml), and anything that caches work by a code digest
(MCN shards, training resume state) digests the same files, so no edit can hide behind a stale
digest. Imports are read with `ast`, not executed: a function-level import counts too. Package
`__init__.py` files hold only a docstring (a test checks), so they are not part of any closure.

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


def import_closure(module: str, root: Path = ROOT) -> list[Path]:
    """Every project file that importing `module` reads, itself first, the rest sorted."""
    first = module_file(module, root)
    if first is None:
        raise ValueError(f"{module}: not a module file under {root / PACKAGE}")
    seen, todo = {first}, [first]
    while todo:
        for name in imported_modules(todo.pop()):
            path = module_file(name, root)
            if path is not None and path not in seen:
                seen.add(path)
                todo.append(path)
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
