"""Typed params: a typo or a wrong type fails with the key's name instead of a silent default."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from stages.common.errors import StageError
from stages.common.params import load_section


@dataclass(frozen=True)
class Inner:
    kind: Literal["a", "b"] = "a"
    path: Path | None = None


@dataclass(frozen=True)
class Params:
    seed: int
    inner: Inner
    rate: float = 1.0
    sizes: tuple[int, ...] = (1, 2)


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_section_is_merged_with_base_and_typed(tmp_path):
    path = write(
        tmp_path,
        "base: {seed: 7}\nstage:\n  inner: {kind: b, path: x/y}\n  rate: 2\n  sizes: [3, 4]\n",
    )
    params = load_section(Params, "stage", path)
    assert params == Params(seed=7, inner=Inner("b", Path("x/y")), rate=2.0, sizes=(3, 4))


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ("base: {seed: 1}\nstage: {inner: {}, rtae: 2}", "stage.rtae", "unknown key"),
        ("base: {seed: 1}\nstage: {inner: {kind: c}}", "stage.inner.kind", "expected one of"),
        ("base: {seed: 1}\nstage: {inner: {}, rate: fast}", "stage.rate", "expected float"),
        ("base: {seed: true}\nstage: {inner: {}}", "stage.seed", "expected int"),
        ("base: {seed: 1}\nstage: {rate: 1}", "stage.inner", "missing"),
        ("base: {seed: 1}\nother: {}", "params.yaml", "no 'stage' section"),
    ],
)
def test_bad_params_name_the_key(tmp_path, text, where, problem):
    with pytest.raises(StageError) as err:
        load_section(Params, "stage", write(tmp_path, text))
    assert where in err.value.where and problem in err.value.problem


def test_invalid_yaml_names_the_file(tmp_path):
    with pytest.raises(StageError, match="not valid YAML"):
        load_section(Params, "stage", write(tmp_path, "stage: [unclosed"))
