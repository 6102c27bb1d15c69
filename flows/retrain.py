"""`retrain`: the scheduled rerun of training and evaluation targets, compared and recorded in Git.

    python -m flows.retrain [--workspace .] [--force] [--commit] [TARGET ...]

Runs `reproduce`'s steps on the targets (under the same one-writer slot; DVC runs one stage at a
time, and each training stage picks the GPU when there is one), then compares every metric with
the last commit (`dvc metrics diff --json`) and publishes a markdown artifact: which inputs changed
(`dvc status`: data, params, code), the params diff, the metrics that moved, the metrics that got
worse beyond the workspace's `retrain.threshold` (params.yaml, in the direction `retrain.watch`
says is better), and where the report and the lineage of every number are. With `commit`, it
commits dvc.lock and every output kept in Git (metrics, stats, plots, the report; only those that
changed, and nothing else the user may have staged; the params files too, so the commit's
dvc.lock and params agree) with a message naming the flow run and any
regression, so `git log dvc.lock` records every retraining and `dvc metrics diff HEAD~1` shows
what it changed.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows import dvc_cli
from flows.reproduce import RunSummary, run_locked, slug, workspace_writer
from stages.common.params import load_section, load_yaml
from stages.lineage.graph import load_pipeline, porcelain_paths

SECTION = "retrain"


@dataclass(frozen=True)
class Watch:
    metric: str  # FILE:KEY, as `python -m stages.lineage metric` takes it
    better: Literal["higher", "lower"]


@dataclass(frozen=True)
class Params:
    threshold: float  # a relative change for the worse beyond this is flagged (0.05: 5%)
    report: str  # the HTML report, linked from the artifact
    watch: list[Watch]


def load_params(workspace: str) -> Params | None:
    """The workspace's `retrain` section; None when its params.yaml has none."""
    path = Path(workspace) / "params.yaml"
    if not path.is_file() or SECTION not in load_yaml(path):
        return None
    return load_section(Params, SECTION, path)


def regressions(rows: list[dict[str, Any]], params: Params | None) -> list[dict[str, Any]]:
    """Watched metrics that got worse than the last commit by more than the threshold
    (relative to the old value; any worsening of an old value of 0)."""
    if params is None:
        return []
    by_name = {f"{r['file']}:{r['metric']}": r for r in rows}
    found = []
    for watch in params.watch:
        row = by_name.get(watch.metric)
        if row is None or not all(isinstance(row[k], int | float) for k in ("old", "new")):
            continue
        worse = row["old"] - row["new"] if watch.better == "higher" else row["new"] - row["old"]
        relative = worse / abs(row["old"]) if row["old"] else (float("inf") if worse > 0 else 0.0)
        if relative > params.threshold:
            found.append({**row, "better": watch.better, "worse_by": relative})
    return found


@task(cache_policy=NO_CACHE)
def compare_metrics(workspace: str) -> list[dict[str, Any]]:
    """Every metric, last commit against workspace (`--all`: unchanged ones too)."""
    if not dvc_cli.has_commit(workspace):
        return []
    done = dvc_cli.dvc(workspace, "metrics", "diff", "--all", "--json")
    if not done.ok:
        raise RuntimeError(f"dvc metrics diff failed:\n{done.tail()}")
    return dvc_cli.metrics_rows(done.output)


def commit_message(
    run_name: str, run_id: str, summary: RunSummary, rows: list[dict], flagged: list[dict]
) -> str:
    changed = [r for r in rows if r["old"] != r["new"]]
    title = f"retrain: flow run {run_name} ({run_id})"
    lines = [
        f"{title}: {len(flagged)} REGRESSION{'S' * (len(flagged) != 1)}" if flagged else title,
        "",
        f"Stages re-run: {', '.join(summary.ran) or 'none'}.",
        f"Targets: {', '.join(summary.targets) or 'the whole pipeline'}.",
    ]
    if flagged:
        lines += ["", "Regressions (worse than the last commit beyond the threshold):"]
        lines += [f"- {_regression(r)}" for r in flagged]
    if changed:
        lines += ["", "Metrics changed (last commit -> this one):"]
        lines += [f"- {r['file']}: {r['metric']}: {r['old']} -> {r['new']}" for r in changed]
    return "\n".join(lines) + "\n"


def _regression(r: dict[str, Any]) -> str:
    return (
        f"{r['file']}:{r['metric']}: {r['old']} -> {r['new']} "
        f"({r['worse_by']:.1%} worse; {r['better']} is better)"
    )


def changed_inputs(stale: dict[str, Any]) -> list[str]:
    """`dvc status --json` as lines: 'stage: changed deps: raw/a.txt (modified)'."""
    lines = []
    for stage, changes in sorted(stale.items()):
        for change in changes:
            if isinstance(change, str):  # "changed command", "always changed"
                lines.append(f"{stage}: {change}")
                continue
            for kind, items in change.items():
                for path, state in items.items():
                    if isinstance(state, dict):  # a params file: {key: state}
                        parts = [f"{path}:{key} ({s})" for key, s in state.items()]
                    else:
                        parts = [f"{path} ({state})"]
                    lines += [f"{stage}: {kind}: {part}" for part in parts]
    return lines


def retrain_markdown(
    run_name: str,
    summary: RunSummary,
    rows: list[dict],
    flagged: list[dict],
    params: Params | None,
) -> str:
    """The artifact: what changed going in, what the run did, what changed coming out."""
    moved = [r for r in rows if r["old"] != r["new"]]
    workspace = Path(summary.workspace)
    verdict = f"**{len(flagged)} regression(s) flagged**" if flagged else "no regression flagged"
    lines = [
        f"# retrain {run_name}: {verdict}",
        "",
        f"- workspace: `{summary.workspace}`",
        f"- targets: {', '.join(f'`{t}`' for t in summary.targets) or 'the whole pipeline'}",
        f"- stages re-run: {', '.join(summary.ran) or 'none'}",
        "",
        "## Inputs that changed (dvc status before the run)",
        "",
    ]
    lines += [f"- {line}" for line in changed_inputs(summary.stale)] or ["- none"]
    lines += ["", "## Params (dvc params diff, last commit → workspace)", "", summary.params_diff]
    lines += ["", "## Regressions", ""]
    if params is None:
        lines.append(f"not judged: the workspace's params.yaml has no `{SECTION}` section")
    else:
        lines.append(
            f"watched metrics worse than the last commit by more than {params.threshold:.0%}:"
        )
        lines += [""] + ([f"- **{_regression(r)}**" for r in flagged] or ["- none"])
    lines += ["", "## Metrics that changed (dvc metrics diff, last commit → workspace)", ""]
    if moved:
        lines += ["| file | metric | old | new | change |", "|---|---|--:|--:|--:|"]
        lines += [
            f"| {r['file']} | {r['metric']} | {r['old']} | {r['new']} | {r['change']} |"
            for r in moved
        ]
    else:
        lines.append(f"none of the {len(rows)} metrics changed")
    if params is not None:
        page = workspace / params.report
        lines += [
            "",
            "## Report and lineage",
            "",
            f"- report: [{params.report}]({page.as_uri()}) (every metric, its change, pictures, "
            "curves, and each number's lineage)",
            f"- lineage of a number: `python -m stages.lineage --root {workspace} metric FILE:KEY`",
        ]
    return "\n".join(lines) + "\n"


def changed_paths(workspace: str, paths: list[str]) -> list[str]:
    """Those of `paths` that Git sees as new or modified."""
    done = dvc_cli.git(
        workspace, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--", *paths
    )
    if not done.ok:
        raise RuntimeError(f"git status failed:\n{done.tail()}")
    return sorted(porcelain_paths(done.output))


@task(cache_policy=NO_CACHE)
def commit_results(workspace: str, message: str) -> str | None:
    """Commit dvc.lock, the params files and the outputs kept in Git (metrics, stats, plots,
    the report) if they changed; returns the new commit."""
    pipeline = load_pipeline(workspace, git=False)
    # the params files too: dvc.lock records the values the run used, and a commit whose lock
    # and params.yaml disagree would be stale the moment it is checked out
    params_files = sorted({p.file for s in pipeline.stages.values() for p in s.params})
    paths = changed_paths(workspace, ["dvc.lock", *params_files, *pipeline.git_outputs()])
    if not paths:
        get_run_logger().info("nothing to commit: dvc.lock and the metrics are as committed")
        return None
    for args in (("add", "--", *paths), ("commit", "--quiet", "-m", message, "--", *paths)):
        done = dvc_cli.git(workspace, *args)
        if not done.ok:
            raise RuntimeError(f"git {args[0]} failed:\n{done.tail()}")
    return dvc_cli.git(workspace, "rev-parse", "HEAD").output.strip()


@flow(name="retrain")
def retrain(
    workspace: str = ".",
    targets: list[str] | None = None,
    force: bool = False,
    commit: bool = False,
) -> dict:
    """Re-run training/evaluation targets, compare metrics with the last commit, maybe commit."""
    workspace = str(Path(workspace).resolve())
    params = load_params(workspace)
    with workspace_writer(workspace):
        summary = run_locked(workspace, targets or [], force)
        if summary.failure:
            raise RuntimeError(f"dvc repro failed in {workspace}:\n{summary.failure}")
        rows = compare_metrics(workspace)
        flagged = regressions(rows, params)
        key = slug(workspace)
        create_table_artifact(
            rows,
            key=f"retrain-metrics-{key}",
            description="every metric: last commit (old) against this run (new)",
        )
        create_markdown_artifact(
            retrain_markdown(flow_run.get_name() or "local", summary, rows, flagged, params),
            key=f"retrain-{key}",
            description=f"retraining in {workspace}: inputs, params and metrics that changed",
        )
        committed = None
        if commit:
            message = commit_message(flow_run.get_name(), flow_run.get_id(), summary, rows, flagged)
            committed = commit_results(workspace, message)
    return {**asdict(summary), "metrics": rows, "regressions": flagged, "commit": committed}


def main() -> None:
    cli = argparse.ArgumentParser(prog="python -m flows.retrain", description=retrain.__doc__)
    cli.add_argument("targets", nargs="*", help="training/evaluation stages (default: all)")
    cli.add_argument("--workspace", default=".", help="the DVC workspace (.)")
    cli.add_argument("--force", action="store_true", help="re-run the targets even if current")
    cli.add_argument("--commit", action="store_true", help="commit dvc.lock and the metrics")
    args = cli.parse_args()
    retrain(workspace=args.workspace, targets=args.targets, force=args.force, commit=args.commit)


if __name__ == "__main__":
    main()
