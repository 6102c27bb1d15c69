"""Reading a stage's section of params.yaml into a typed, validated dataclass.

Each stage declares its parameters as a frozen dataclass. Unknown keys, missing keys and values of
the wrong type are `StageError`s naming the params key, so a typo in params.yaml fails at once
instead of silently falling back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from stages.common.errors import StageError

T = TypeVar("T")

PARAMS_FILE = Path("params.yaml")


def load_yaml(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """A params file; one with `extends: <file>` is that file with these values laid over it."""
    data = _read_yaml(Path(path))
    if "extends" not in data:
        return data
    base = Path(path).parent / str(data.pop("extends"))
    if base.resolve() == Path(path).resolve():
        raise StageError(path, "extends itself")
    return overlay(load_yaml(base), data)


def overlay(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` laid over it, mappings merged key by key."""
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = overlay(merged[key], value)
        else:
            merged[key] = value
    return merged


def set_arguments(path: str | Path) -> list[str]:
    """The values an `extends` file changes, as `dvc exp run` arguments (-S key=value ...)."""
    data = _read_yaml(Path(path))
    data.pop("extends", None)

    def leaves(obj: Any, prefix: str) -> list[str]:
        if isinstance(obj, dict):
            return [arg for k, v in obj.items() for arg in leaves(v, f"{prefix}{k}.")]
        # JSON is YAML, which is how DVC reads the value; compact, so no spaces split it
        return ["-S", f"{prefix[:-1]}={json.dumps(obj, separators=(',', ':'))}"]

    return leaves(data, "") if data else []


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping: PyYAML would keep the
    last value silently (a pasted section half overwritten), and DVC's own reader refuses it."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise StageError(
                    f"line {key_node.start_mark.line + 1}", f"key {key!r} appears twice"
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` strings as a mapping, each value read as YAML (`seed=1` is an int)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise StageError(f"--set {pair}", "expected key=value")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise StageError(f"--set {pair}", "the value is not valid YAML") from None
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path) as handle:
            data = yaml.load(handle, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except FileNotFoundError:
        raise StageError(path, "params file not found (run from the repository root)") from None
    except StageError as exc:
        raise StageError(path, str(exc)) from None
    except yaml.YAMLError as exc:
        raise StageError(path, f"not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise StageError(path, "expected a mapping of sections at the top level")
    return data


def load_section(
    cls: type[T],
    section: str,
    path: str | Path = PARAMS_FILE,
    overrides: dict[str, Any] | None = None,
) -> T:
    """Parse `section` of the params file into `cls`, with the shared `base` keys it declares;
    `overrides` (a DVC matrix stage's `--set key=value`) are laid over the section."""
    data = load_yaml(path)
    if section not in data:
        raise StageError(path, f"no '{section}' section")
    own = data[section] or {}
    if not isinstance(own, dict):
        raise StageError(f"{path}: {section}", f"expected a mapping of keys, got {own!r}")
    own = {**own, **(overrides or {})}
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    # `base` holds what many stages share; a stage takes the base keys it declares and ignores the
    # rest, while an unknown key in its own section is a typo and an error.
    shared = {k: v for k, v in (data.get("base") or {}).items() if k in known}
    return from_mapping(cls, shared | own, f"{path}: {section}")


def from_mapping(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from a mapping, recursing into nested dataclasses."""
    if not isinstance(data, dict):
        raise StageError(where, f"expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise StageError(
            f"{where}.{unknown[0]}", f"unknown key (known: {', '.join(sorted(fields))})"
        )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, field in fields.items():
        key = f"{where}.{name}"
        if name not in data:
            no_default = dataclasses.MISSING
            if field.default is no_default and field.default_factory is no_default:
                raise StageError(key, "missing")
            continue
        values[name] = _coerce(hints[name], data[name], key)
    return cls(**values)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(option, value, where)
            except StageError:
                continue
        raise StageError(where, f"expected {_name(hint)}, got {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise StageError(where, f"expected one of {list(typing.get_args(hint))}, got {value!r}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise StageError(where, f"expected a list, got {value!r}")
        (item,) = set(typing.get_args(hint)) - {Ellipsis}
        return origin(_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is Path and isinstance(value, str):
        return Path(value)
    if (
        isinstance(hint, type)
        and isinstance(value, hint)
        and not (hint is int and isinstance(value, bool))
    ):
        return value
    raise StageError(where, f"expected {_name(hint)}, got {value!r}")


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


if __name__ == "__main__":
    # python -m stages.common.params set-args params-gpu.yaml: the -S arguments for dvc exp run
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "set-args":
        sys.exit("usage: python -m stages.common.params set-args FILE")
    print(" ".join(set_arguments(sys.argv[2])))
