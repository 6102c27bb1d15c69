"""The `report` stage: the lineage audit of every metrics file, and the report a researcher opens.

    python -m stages.lineage.report     # params.yaml's `report` section

Writes `report.lineage` (every metrics file with its chain, then every stage feeding one, with
every hash), `report.html` (one self-contained page: per paper the metrics with their change, the
comparison tables (TSVs whose first column is `measure`), the pictures, the training curves and
each number's lineage; see `page.py`) and `report.markdown` (its twin). It runs last in dvc.yaml
and depends on everything it reads: every metrics file, table, picture, curve and model file of
the pipeline (never on dvc.lock, which DVC rewrites after each stage); it refuses to run when
dvc.yaml forgets one, since the page would then go stale silently.
Its outputs hold no timestamp and no HEAD commit (see `page.py` for the comparison's baseline),
so the same lock, files and history give the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.common.atomic import atomic_file
from stages.common.cli import run_stage
from stages.common.errors import StageError
from stages.lineage import page
from stages.lineage.audit import all_models, audit_all, render
from stages.lineage.graph import Pipeline, load_pipeline, overlaps

STAGE = "report"


@dataclass(frozen=True)
class Paper:
    folder: str  # a folder of reports: its metrics, pictures and curves make one section
    title: str


@dataclass(frozen=True)
class Params:
    lineage: Path  # the full audit, Markdown
    html: Path  # the page
    markdown: Path  # its twin
    papers: list[Paper]
    history: int  # how many commits back to look for the comparison's baseline


@dataclass(frozen=True)
class Inputs:
    """Everything the report reads besides the metrics files, each found once."""

    models: dict[str, dict]  # model file -> its record, checked (`models.py`)
    pictures: list[str]
    curves: dict[str, tuple[list[str], list[list[float]]]]  # TSV -> header, columns
    tables: dict[str, tuple[list[str], list[list[str]]]]  # TSV -> header, rows

    def paths(self, pipeline: Pipeline) -> list[str]:
        return sorted(
            {*pipeline.metrics_files(), *self.pictures, *self.curves, *self.tables, *self.models}
        )


def find_inputs(pipeline: Pipeline, root: Path) -> Inputs:
    tsvs = page.output_files(root, pipeline, page.CURVE)
    curves = {c: curve for c in tsvs if (curve := page.read_curve(root / c)) is not None}
    tables = {t: table for t in tsvs if (table := page.read_table(root / t)) is not None}
    pictures = page.output_files(root, pipeline, page.PICTURE)
    return Inputs(all_models(pipeline, root), pictures, curves, tables)


def missing_deps(pipeline: Pipeline, inputs: list[str], stage: str = STAGE) -> list[str]:
    """Inputs the report stage does not depend on: the report would go stale silently."""
    if stage not in pipeline.stages:
        return []
    deps = [e.path for e in pipeline.stages[stage].deps]
    own = [e.path for e in pipeline.stages[stage].outs]
    return [
        p for p in inputs
        if not any(overlaps(d, p) for d in deps) and not any(overlaps(o, p) for o in own)
    ]  # fmt: skip


def build_report(params: Params, root: Path = Path(".")) -> dict[str, Any]:
    pipeline = load_pipeline(root, git=False)
    inputs = find_inputs(pipeline, root)
    missing = missing_deps(pipeline, inputs.paths(pipeline))
    if missing:
        raise StageError(
            root / "dvc.yaml",
            f"stage '{STAGE}' must list every file it reports among its deps; missing: "
            + ", ".join(missing),
        )
    audit = audit_all(pipeline, inputs.models)
    files = [f for f in pipeline.metrics_files() if (root / f).is_file()]
    values = {f: _read_json(root / f) for f in files}
    baseline = page.find_baseline(root, files, values, params.history)
    pictures = {p: (root / p).read_bytes() for p in inputs.pictures}
    papers = {p.folder.rstrip("/"): p.title for p in params.papers}
    report = page.build(audit, values, baseline, pictures, inputs.curves, inputs.tables, papers)
    outputs = {
        params.lineage: render(audit, as_json=False),
        params.html: page.to_html(report, params.html.as_posix()),
        params.markdown: page.to_markdown(report, params.markdown.as_posix()),
    }
    for path, text in outputs.items():
        with atomic_file(root / path, "w") as handle:
            handle.write(text)
    return {"audit": audit, "page": report}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise StageError(path, f"metrics file does not parse: {exc}") from None
    if not isinstance(data, dict):
        raise StageError(path, "a metrics file must hold a JSON object")
    return data


def main(params: Params) -> dict[str, Any]:
    """Write the lineage audit, the HTML report and its Markdown twin."""
    built = build_report(params)
    state = "current" if built["audit"]["current"] else "STALE"
    sections = built["page"]["sections"]
    print(
        f"{STAGE}: {len(built['audit']['metrics'])} metrics files ({state}), "
        f"{sum(len(s['rows']) for s in sections)} metrics in {len(sections)} sections, "
        f"{len(built['page']['pictures'])} pictures, {len(built['page']['curves'])} curves "
        f"-> {params.html}, {params.markdown}, {params.lineage}"
    )
    return {}


if __name__ == "__main__":
    run_stage(STAGE, Params, main)
