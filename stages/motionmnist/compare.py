"""Stage `motionmnist_compare`: one table of the MotionMNIST video models (issue 18).

    python -m stages.motionmnist.compare [--params FILE]

Reads the evaluate stages' metrics files (MDBiGAN, the sequential VAE, the conditional MoCoGAN,
the convolutional DMM) and writes `table`: a TSV with one measure per row, one family per
column, and the goal. Which key of which family's metrics answers which measure is written once,
in params.yaml (`measures`); a family a measure does not apply to gets a dash. The report shows
the table in the MotionMNIST section (a TSV whose first column is `measure`).

Nothing is computed here: every cell is a number an evaluate stage measured, so the table's
lineage is theirs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.common.atomic import atomic_file
from stages.common.cli import run_stage
from stages.common.errors import StageError

STAGE = "motionmnist_compare"
NOT_APPLICABLE = "–"


@dataclass(frozen=True)
class Family:
    name: str  # the column's heading
    metrics: Path  # its evaluate stage's metrics file


@dataclass(frozen=True)
class Measure:
    name: str  # the row's heading
    goal: str  # as the issue states it; '' where there is none
    keys: list[str]  # per family, in `families` order: its metrics key, '' = does not apply


@dataclass(frozen=True)
class Params:
    families: list[Family]
    measures: list[Measure]
    table: Path


def cell(value: Any) -> str:
    """A number as the table shows it: integers whole, fractions to 3 decimals."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"not a number: {value!r}")
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def table_rows(
    families: list[str], measures: list[Measure], metrics: list[dict[str, Any]]
) -> list[list[str]]:
    """Header and rows: measure, one cell per family, goal. `metrics[i]` is family i's file."""
    rows = [["measure", *families, "goal"]]
    for measure in measures:
        cells = [
            NOT_APPLICABLE if not key else cell(values[key])
            for key, values in zip(measure.keys, metrics, strict=True)
        ]
        rows.append([measure.name, *cells, measure.goal or NOT_APPLICABLE])
    return rows


def check(params: Params) -> list[dict[str, Any]]:
    """Every metrics file read and every key found, before anything is written."""
    metrics = []
    for family in params.families:
        try:
            metrics.append(json.loads(family.metrics.read_text()))
        except FileNotFoundError:
            raise StageError(family.metrics, "not found (run its evaluate stage)") from None
        except json.JSONDecodeError as exc:
            raise StageError(family.metrics, f"does not parse: {exc}") from None
    for i, measure in enumerate(params.measures):
        where = f"params.yaml: {STAGE}.measures[{i}].keys"
        if len(measure.keys) != len(params.families):
            raise StageError(where, f"{len(measure.keys)} keys for {len(params.families)} families")
        for key, family, values in zip(measure.keys, params.families, metrics, strict=True):
            if key and not isinstance(values.get(key), int | float):
                raise StageError(where, f"{family.metrics} holds no number '{key}'")
    return metrics


def main(params: Params) -> dict[str, Any]:
    """Write the comparison table of the MotionMNIST video models."""
    metrics = check(params)
    rows = table_rows([f.name for f in params.families], params.measures, metrics)
    with atomic_file(params.table, "w") as handle:
        handle.writelines("\t".join(row) + "\n" for row in rows)
    return {}


if __name__ == "__main__":
    run_stage(STAGE, Params, main)
