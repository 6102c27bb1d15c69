"""The MotionMNIST comparison table (issue 18): cells from the evaluate stages' metrics files,
dashes where a measure does not apply, bad keys refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stages.common.errors import StageError
from stages.common.params import load_section
from stages.motionmnist import compare as cmp
from tests.stage_cli import REPO


def params(tmp_path: Path, keys: list[list[str]]) -> cmp.Params:
    (tmp_path / "a.json").write_text(json.dumps({"nmi": 0.91234, "steps": 7}))
    (tmp_path / "b.json").write_text(json.dumps({"dynamic_nmi": 1.0}))
    families = [cmp.Family("A", tmp_path / "a.json"), cmp.Family("B", tmp_path / "b.json")]
    measures = [cmp.Measure(f"m{i}", "" if i else ">= 0.9", k) for i, k in enumerate(keys)]
    return cmp.Params(families, measures, tmp_path / "out" / "table.tsv")


def test_the_table_holds_each_familys_number_or_a_dash(tmp_path: Path) -> None:
    p = params(tmp_path, [["nmi", "dynamic_nmi"], ["steps", ""]])
    cmp.main(p)
    assert p.table.read_text().splitlines() == [
        "measure\tA\tB\tgoal",
        "m0\t0.912\t1.000\t>= 0.9",
        "m1\t7\t–\t–",
    ]


def test_a_missing_key_or_file_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(StageError, match=r"measures\[1\]\.keys.*a\.json holds no number 'nmx'"):
        cmp.main(params(tmp_path, [["nmi", ""], ["nmx", ""]]))
    with pytest.raises(StageError, match=r"measures\[0\]\.keys.*1 keys for 2 families"):
        cmp.main(params(tmp_path, [["nmi"]]))
    p = params(tmp_path, [["nmi", ""]])
    (tmp_path / "b.json").unlink()
    with pytest.raises(StageError, match=r"b\.json.*not found"):
        cmp.main(p)
    assert not p.table.exists()


def test_the_repos_measures_name_keys_its_evaluate_stages_write() -> None:
    """Every key params.yaml names is in the committed metrics file of its family."""
    p = load_section(cmp.Params, cmp.STAGE, REPO / "params.yaml")
    metrics = [json.loads((REPO / f.metrics).read_text()) for f in p.families]
    for measure in p.measures:
        assert len(measure.keys) == len(p.families)
        for key, values in zip(measure.keys, metrics, strict=True):
            assert not key or key in values, (measure.name, key)
