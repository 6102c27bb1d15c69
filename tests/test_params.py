"""Typed params: a typo or a wrong type fails with the key's name instead of a silent default."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from stages.common.cli import in_params_file
from stages.common.errors import StageError
from stages.common.params import load_section, load_yaml
from stages.common.workers import worker_count


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


@pytest.mark.parametrize("section", ["[1, 2]", "3", "just words"])
def test_a_section_that_is_not_a_mapping_is_one_error(tmp_path, section):
    path = write(tmp_path, f"base: {{seed: 1}}\ns: {section}\n")
    with pytest.raises(StageError, match=r"params.yaml: s: expected a mapping of keys"):
        load_section(Params, "s", path)


def test_errors_name_the_params_file_actually_read():
    """Stages name keys as 'params.yaml: key'; after --params other.yaml the message says so."""
    error = StageError("params.yaml: motionmnist.max_angle", "must be in (0, 360]")
    assert in_params_file(error, Path("params.yaml")) == str(error)
    assert in_params_file(error, Path("lab/other.yaml")) == (
        "lab/other.yaml: motionmnist.max_angle: must be in (0, 360]"
    )
    recording = StageError("data/params.yaml.mp4", "corrupt")  # a file, not a key: untouched
    assert in_params_file(recording, Path("other.yaml")) == str(recording)


@pytest.mark.parametrize("requested", [-1, 10**5, True])
def test_worker_counts_out_of_range_are_one_error_naming_the_key(requested):
    with pytest.raises(StageError, match=r"params.yaml: x.workers: must be 0 \(one per core\)"):
        worker_count(requested, 8, "x.workers")


def test_pools_never_outnumber_their_jobs():
    cores = len(os.sched_getaffinity(0))
    assert worker_count(0) == cores
    assert worker_count(0, jobs=1) == 1
    assert worker_count(2 * cores, jobs=3) == min(2 * cores, 3)
    assert worker_count(1, jobs=0) == 1


def test_a_key_given_twice_is_refused_naming_its_line(tmp_path):
    """PyYAML keeps the last of two equal keys silently: a pasted section would lose values."""
    path = tmp_path / "params.yaml"
    path.write_text("base:\n  seed: 0\ns:\n  a: 1\n  b: 2\n  a: 3\n")
    with pytest.raises(StageError, match=r"params\.yaml: line 6: key 'a' appears twice"):
        load_yaml(path)
    path.write_text("base:\n  seed: 0\ns:\n  a: 1\nt:\n  a: 1\n")  # the same key in two sections
    assert load_yaml(path)["t"] == {"a": 1}
