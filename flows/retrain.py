"""`retrain`: the scheduled rerun of training and evaluation targets, compared and recorded in Git.

    python -m flows.retrain [--workspace .] [--force] [--commit] [TARGET ...]

Runs `reproduce`'s steps on the targets (under the same one-writer slot), then compares every
metric with the last commit (`dvc metrics diff --json`) and publishes the comparison as a table
artifact. With `commit`, it commits dvc.lock and every output kept in Git (metrics, stats, plots,
the lineage report; only those that changed, and nothing else the user may have staged) with a
message naming the flow run, so
`git log dvc.lock` records every retraining and `dvc metrics diff HEAD~1` shows what it changed.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows import dvc_cli
from flows.reproduce import RunSummary, run_locked, slug, workspace_writer
from stages.lineage.graph import load_pipeline, porcelain_paths


@task(cache_policy=NO_CACHE)
def compare_metrics(workspace: str) -> list[dict[str, Any]]:
    """Every metric, last commit against workspace (`--all`: unchanged ones too)."""
    if not dvc_cli.has_commit(workspace):
        return []
    done = dvc_cli.dvc(workspace, "metrics", "diff", "--all", "--json")
    if not done.ok:
        raise RuntimeError(f"dvc metrics diff failed:\n{done.tail()}")
    return dvc_cli.metrics_rows(done.output)


def commit_message(run_name: str, run_id: str, summary: RunSummary, rows: list[dict]) -> str:
    changed = [r for r in rows if r["old"] != r["new"]]
    lines = [
        f"retrain: flow run {run_name} ({run_id})",
        "",
        f"Stages re-run: {', '.join(summary.ran) or 'none'}.",
        f"Targets: {', '.join(summary.targets) or 'the whole pipeline'}.",
    ]
    if changed:
        lines += ["", "Metrics changed (last commit -> this one):"]
        lines += [f"- {r['file']}: {r['metric']}: {r['old']} -> {r['new']}" for r in changed]
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
    """Commit dvc.lock and the outputs kept in Git (metrics, stats, plots, the lineage report)
    if they changed; returns the new commit."""
    pipeline = load_pipeline(workspace, git=False)
    paths = changed_paths(workspace, ["dvc.lock", *pipeline.git_outputs()])
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
    with workspace_writer(workspace):
        summary = run_locked(workspace, targets or [], force)
        if summary.failure:
            raise RuntimeError(f"dvc repro failed in {workspace}:\n{summary.failure}")
        rows = compare_metrics(workspace)
        create_table_artifact(
            rows,
            key=f"retrain-metrics-{slug(workspace)}",
            description="every metric: last commit (old) against this run (new)",
        )
        committed = None
        if commit:
            message = commit_message(flow_run.get_name(), flow_run.get_id(), summary, rows)
            committed = commit_results(workspace, message)
    return {**asdict(summary), "metrics": rows, "commit": committed}


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
