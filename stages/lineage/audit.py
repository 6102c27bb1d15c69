"""Lineage audit: which data, models, code and parameters produced a metric, and the reverse.

    python -m stages.lineage file reports/motionmnist/stats.json  # chain of one metrics file
    python -m stages.lineage metric videos_per_split.train         # a metric by (dotted) name
    python -m stages.lineage data data/motionmnist                 # models and metrics below a path

Each answer starts with the chain as a tree, metric first: the stage that wrote it, the model it
read (hash, training step, code digest, checked against the training stage's dvc.lock entry and
today's code), the training stage and its params, the data below it, down to the source (raw data,
`dvc add`ed or not, or a stand-in generator); then every stage with every dependency and hash.
Add `--json` for machine-readable output and `--fail-stale` to exit 1 when any link has changed
since dvc.lock was written. Every answer is first built as one JSON-able dict, and the markdown is
rendered from that dict, so the two forms always agree. The `report` stage (`report.py`) writes the
same answers for every metrics file into `reports/lineage.md` and the HTML report.

The module keeps the conventions of `run_stage` (one-line `StageError`s, exit status 2) but has
subcommands, so it parses its own arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from stages.common.errors import StageError
from stages.lineage.graph import (
    Entry,
    Pipeline,
    chain,
    downstream,
    find_metric,
    load_pipeline,
    metrics_depending_on,
    overlaps,
    producer_of_metric,
    producers,
    read_metrics,
    readers,
)
from stages.lineage.links import metric_tree, model_line, tree_markdown
from stages.lineage.models import describe_models

STAGE = "lineage"  # the name in error lines
EXIT_STALE, EXIT_STAGE_ERROR = 1, 2

# --- answers as dicts (pure) -----------------------------------------------------------------


def stage_dict(pipeline: Pipeline, name: str) -> dict[str, Any]:
    record = pipeline.stages[name]

    def entry(e: Entry, kind: str) -> dict[str, Any]:
        made_by = [p for p in producers(pipeline, e.path) if p != name] if kind == "dep" else []
        return {
            "path": e.path, "md5": e.md5, "size": e.size, "nfiles": e.nfiles,
            "status": e.status, "from": ", ".join(made_by) or None,
        }  # fmt: skip

    return {
        "name": name,
        "cmd": record.cmd,
        "changes": record.changes(),
        "deps": [entry(e, "dep") for e in record.deps],
        "outs": [entry(e, "out") for e in record.outs],
        "params": [
            {"file": p.file, "key": p.key, "value": p.value, "status": p.status}
            for p in record.params
        ],
        "metrics": list(record.metrics),
    }


def git_dict(pipeline: Pipeline, paths: Iterable[str]) -> dict[str, Any]:
    wanted = set(paths) | {"dvc.yaml", "dvc.lock"}
    return {"commit": pipeline.git_commit, "uncommitted": sorted(set(pipeline.git_dirty) & wanted)}


def audit_file(
    pipeline: Pipeline, path: str, models: Mapping[str, dict], *, git: bool = True
) -> dict[str, Any]:
    """The chain behind one metrics file: as a tree (metric -> model -> data -> source), and
    stage by stage with every dependency, raw inputs first."""
    stage = producer_of_metric(pipeline, path)
    names = chain(pipeline, stage)
    stages = [stage_dict(pipeline, n) for n in names]
    tree = metric_tree(pipeline, path, stage, models, pipeline.added)
    answer: dict[str, Any] = {
        "metrics_file": path,
        "stage": stage,
        "chain": names,
        "current": not tree["stale"],
        "stale": tree["stale"],
        "tree": tree,
        "stages": stages,
    }
    if git:
        touched = {e["path"] for s in stages for e in s["deps"] + s["outs"]}
        touched |= {p["file"] for s in stages for p in s["params"]}
        answer["git"] = git_dict(pipeline, touched)
    return answer


def audit_metric(
    pipeline: Pipeline, name: str, values: dict[str, dict[str, Any]], models: Mapping[str, dict]
) -> dict:
    hits = find_metric(values, name)
    found = [{"value": v, **audit_file(pipeline, path, models)} for path, v in sorted(hits.items())]
    return {"metric": name, "current": all(f["current"] for f in found), "found_in": found}


def audit_data(pipeline: Pipeline, path: str, models: Mapping[str, dict]) -> dict[str, Any]:
    """Every model and every metrics file downstream of `path`."""
    found = metrics_depending_on(pipeline, path)
    metrics = [
        {
            "metrics_file": metric,
            "stage": producer_of_metric(pipeline, metric),
            "via": via,
            "current": not audit_file(pipeline, metric, models, git=False)["stale"],
        }
        for metric, via in found.items()
    ]
    affected = downstream(pipeline, set(producers(pipeline, path)) | readers(pipeline, path))
    below = [
        m for f, m in sorted(models.items())
        if m["stage"] in affected and not overlaps(f, path)
    ]  # fmt: skip
    return {
        "path": path,
        "current": all(m["current"] for m in metrics) and not any(m["problems"] for m in below),
        "models": below,
        "metrics": metrics,
    }


def audit_all(pipeline: Pipeline, models: Mapping[str, dict]) -> dict[str, Any]:
    """Every metrics file with its chain, and each stage feeding one once, in pipeline order."""
    files = [audit_file(pipeline, m, models, git=False) for m in pipeline.metrics_files()]
    feeding = {n for f in files for n in f["chain"]}
    order = [n for n in chain_all(pipeline) if n in feeding]
    return {
        "metrics": [
            {k: f[k] for k in ("metrics_file", "stage", "chain", "current", "tree")} for f in files
        ],
        "current": all(f["current"] for f in files),
        "stages": [stage_dict(pipeline, n) for n in order],
    }


def chain_all(pipeline: Pipeline) -> list[str]:
    """All stages in one topological order (ties by name)."""
    seen: list[str] = []
    for name in sorted(pipeline.stages):
        seen += [n for n in chain(pipeline, name) if n not in seen]
    return seen


# --- markdown --------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text.replace("|", "\\|").replace("\n", " ")


def _num(value: int | None) -> str:
    return "" if value is None else str(value)


def _verdict(changes: list[str]) -> str:
    return "current" if not changes else "**STALE** — " + "; ".join(changes)


def stage_markdown(s: dict[str, Any]) -> list[str]:
    lines = [
        f"### Stage `{s['name']}`",
        "",
        f"- command: `{s['cmd']}`",
        f"- status: {_verdict(s['changes'])}",
        "",
        "| | path | md5 (dvc.lock) | size | files | from stage | on disk |",
        "|---|---|---|--:|--:|---|---|",
    ]
    for kind in ("deps", "outs"):
        for e in s[kind]:
            source = e["from"] or ("input" if kind == "deps" else "")
            metric = " (metric)" if e["path"] in s["metrics"] else ""
            lines.append(
                f"| {kind[:-1]} | {_cell(e['path'])}{metric} | {e['md5'] or ''} | "
                f"{_num(e['size'])} | {_num(e['nfiles'])} | {source} | {e['status']} |"
            )
    if s["params"]:
        lines += ["", "| params file | key | value | now |", "|---|---|---|---|"]
        lines += [
            f"| {p['file']} | {_cell(p['key'])} | {_cell(p['value'])} | {p['status']} |"
            for p in s["params"]
        ]
    return [*lines, ""]


def _git_lines(git: dict[str, Any]) -> list[str]:
    commit = git["commit"] or "none (no commit yet)"
    lines = [f"- Git commit: `{commit}`"]
    if git["uncommitted"]:
        lines.append(f"- uncommitted changes in: {', '.join(git['uncommitted'])}")
    return lines


def file_markdown(a: dict[str, Any], heading: str = "#") -> list[str]:
    overall = (
        "current" if a["current"] else "**STALE**: something changed since dvc.lock was written"
    )
    lines = [f"{heading} Lineage of `{a['metrics_file']}`", ""]
    if "value" in a:
        lines.append(f"- value: `{_cell(a['value'])}`")
    lines += [
        f"- produced by stage `{a['stage']}`",
        f"- chain (inputs first): {' → '.join(f'`{n}`' for n in a['chain'])}",
        f"- status: {overall}",
    ]
    lines += _git_lines(a["git"]) if "git" in a else []
    lines += ["", f"{heading}# Chain (metric first, down to the source)", ""]
    lines += tree_markdown(a["tree"])
    lines += ["", f"{heading}# Stage by stage (inputs first)", ""]
    for s in a["stages"]:
        lines += stage_markdown(s)
    return lines


def to_markdown(answer: dict[str, Any]) -> str:
    if "found_in" in answer:
        lines = [f"# Metric `{answer['metric']}`", ""]
        for hit in answer["found_in"]:
            lines += file_markdown(hit, "##")
    elif "path" in answer:
        lines = [f"# Models and metrics downstream of `{answer['path']}`", ""]
        lines += ["## Models", ""] + [f"- {model_line(m)}" for m in answer["models"]]
        lines += ["", "## Metrics", ""]
        lines += ["| metrics file | stage | reads it directly | status |", "|---|---|---|---|"]
        lines += [
            f"| {m['metrics_file']} | {m['stage']} | {', '.join(m['via'])} | "
            f"{'current' if m['current'] else '**STALE**'} |"
            for m in answer["metrics"]
        ]
        lines.append("")
    elif "metrics_file" in answer:
        lines = file_markdown(answer)
    else:
        lines = report_markdown(answer)
    return "\n".join(lines)


def report_markdown(report: dict[str, Any]) -> list[str]:
    status = (
        "every stage below is current: its inputs, parameters and outputs match dvc.lock"
        if report["current"]
        else "**STALE**: some inputs changed since dvc.lock was written (see the stages below)"
    )
    lines = [
        "# Lineage of every metric",
        "",
        "Written by the `report` stage (`python -m stages.lineage.report`) from dvc.lock, with",
        "every hash checked against the files on disk; the Git commit is the one that contains",
        f"this file. Status: {status}.",
        "",
        "| metrics file | stage | chain (inputs first) | status |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {m['metrics_file']} | {m['stage']} | {' → '.join(m['chain'])} | "
        f"{'current' if m['current'] else '**STALE**'} |"
        for m in report["metrics"]
    ]
    lines += ["", "## Stages", ""]
    for s in report["stages"]:
        lines += stage_markdown(s)
    return lines


def render(answer: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return json.dumps(answer, indent=2, sort_keys=True) + "\n"
    return to_markdown(answer).rstrip("\n") + "\n"


# --- command line ----------------------------------------------------------------------------


def run_command(args: argparse.Namespace) -> dict[str, Any]:
    pipeline = load_pipeline(args.root)
    models = all_models(pipeline, args.root)
    if args.command == "file":
        return audit_file(pipeline, Path(args.target).as_posix(), models)
    if args.command == "metric":
        values = read_metrics(args.root, pipeline.metrics_files())
        return audit_metric(pipeline, args.target, values, models)
    return audit_data(pipeline, Path(args.target).as_posix().rstrip("/"), models)


def all_models(pipeline: Pipeline, root: Path) -> dict[str, dict]:
    """Every model file the pipeline writes, with its record checked (see `models.py`)."""
    return describe_models(
        pipeline, root, [o.path for s in pipeline.stages.values() for o in s.outs]
    )


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="python -m stages.lineage", description=__doc__.split("\n")[0]
    )
    cli.add_argument("--root", type=Path, default=Path("."), help="DVC repository root (.)")
    cli.add_argument("--traceback", action="store_true", help="show tracebacks of errors")
    sub = cli.add_subparsers(dest="command", required=True)
    for name, target, text in (
        ("file", "metrics_file", "the chain behind a metrics file"),
        ("metric", "name", "the chain behind a metric: dotted key, or FILE:KEY"),
        ("data", "path", "the metrics that depend on a data (or code) path"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("target", metavar=target)
        cmd.add_argument("--json", action="store_true", help="JSON instead of markdown")
        cmd.add_argument("--fail-stale", action="store_true", help="exit 1 if anything is stale")
    return cli


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result = run_command(args)
    except StageError as exc:
        if args.traceback or os.environ.get("STAGES_TRACEBACK") == "1":
            raise
        print(f"{STAGE}: error: {exc}", file=sys.stderr)
        return EXIT_STAGE_ERROR
    sys.stdout.write(render(result, args.json))
    return EXIT_STALE if args.fail_stale and not result["current"] else 0
