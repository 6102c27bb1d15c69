"""`reproduce`: `dvc repro` when `dvc status` says something is stale, one DVC writer at a time.

    python -m flows.reproduce [--workspace .] [--force] [TARGET ...]   # one run, temporary server

One writer per workspace, twice over: the flow holds a Prefect global concurrency limit of one
slot named after the workspace (created on first use), so overlapping flow runs queue in Prefect;
and every DVC call waits for DVC's own lock, so a user's manual `dvc repro` is waited for too.
Transient failures (a killed process, a full disk, a network filesystem hiccup) are retried; a
stage that exits with status 2 reported a `StageError` (bad input or params) and is not.

After the run the flow publishes a markdown artifact (stages found stale, stages re-run, failures,
`dvc metrics diff` and `dvc params diff` against the last commit) and a table artifact of the
resulting dvc.lock hashes, both under keys named after the workspace.
"""

from __future__ import annotations

import argparse
import hashlib
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists

from flows import dvc_cli

STAGE_ERROR_EXIT = "exited with 2"  # how `dvc repro` reports a stage's StageError


class ReproFailed(RuntimeError):
    """`dvc repro` exited non-zero; `output` is what it printed."""

    def __init__(self, done: dvc_cli.Done) -> None:
        self.output = done.output
        super().__init__(f"dvc repro exited with {done.returncode}:\n{done.tail()}")


def is_transient(_task: Any, _run: Any, state: Any) -> bool:
    """Retry unless a stage reported bad input or params (exit 2): retrying cannot fix those."""
    try:
        state.result()
    except ReproFailed as exc:
        return STAGE_ERROR_EXIT not in exc.output
    except Exception:
        return True
    return False


@dataclass
class RunSummary:
    """What one `reproduce` run found and did; JSON-able, returned by the flow."""

    workspace: str
    targets: list[str]
    stale: dict[str, Any]
    ran: list[str] = field(default_factory=list)
    failure: str | None = None
    metrics_diff: str = ""
    params_diff: str = ""

    @property
    def up_to_date(self) -> bool:
        return not self.stale and not self.ran and self.failure is None


def slug(workspace: str | Path) -> str:
    """Artifact keys and limit names allow lowercase letters, digits and dashes only."""
    path = Path(workspace).resolve()
    name = re.sub(r"[^a-z0-9]+", "-", path.name.lower()).strip("-") or "root"
    return f"{name}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"


@contextmanager
def workspace_writer(workspace: str | Path) -> Iterator[None]:
    """Hold the one writer slot of `workspace` (a Prefect global concurrency limit of 1)."""
    name = f"dvc-writer-{slug(workspace)}"
    # suppress: another run may have created it first
    with get_client(sync_client=True) as client, suppress(ObjectAlreadyExists):
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    # strict: a limit that vanished must stop the run, not let it write unguarded
    with concurrency(name, occupy=1, strict=True):
        yield


# NO_CACHE on every DVC task: the answer depends on the workspace, not on the arguments
@task(retries=2, retry_delay_seconds=15, cache_policy=NO_CACHE)
def dvc_status(workspace: str, targets: Sequence[str]) -> dict[str, Any]:
    # --with-deps: `dvc repro TARGET` re-runs stale upstream stages too, so look at them as well
    with_deps = ["--with-deps", *targets] if targets else []
    done = dvc_cli.dvc(workspace, "status", "--json", *with_deps)
    if not done.ok:
        raise RuntimeError(f"dvc status failed:\n{done.tail()}")
    return dvc_cli.parse_status(done.output)


@task(retries=2, retry_delay_seconds=30, retry_condition_fn=is_transient, cache_policy=NO_CACHE)
def dvc_repro(workspace: str, targets: Sequence[str], force: bool) -> list[str]:
    done = dvc_cli.dvc(workspace, "repro", *(["--force"] if force else []), *targets)
    get_run_logger().info("dvc repro output:\n%s", done.tail())
    if not done.ok:
        raise ReproFailed(done)
    return dvc_cli.stages_run(done.output)


@task(cache_policy=NO_CACHE)
def dvc_diffs(workspace: str) -> tuple[str, str]:
    """`dvc metrics diff --md` and `dvc params diff --md` against the last commit."""
    if not dvc_cli.has_commit(workspace):
        return "no commit yet to compare with", "no commit yet to compare with"
    metrics = dvc_cli.dvc(workspace, "metrics", "diff", "--md")
    params = dvc_cli.dvc(workspace, "params", "diff", "--md")
    return _diff_text(metrics, "metric"), _diff_text(params, "parameter")


def _diff_text(done: dvc_cli.Done, what: str) -> str:
    if not done.ok:
        return f"`{' '.join(done.args[2:])}` failed:\n\n```\n{done.tail()}\n```"
    table = [line for line in done.output.splitlines() if line.startswith("|")]
    return "\n".join(table) if len(table) > 2 else f"no {what} changed since the last commit"


def summary_markdown(summary: RunSummary) -> str:
    targets = ", ".join(f"`{t}`" for t in summary.targets) or "the whole pipeline"
    if summary.up_to_date:
        verdict = "up to date: `dvc status` found nothing stale, nothing was run"
    elif summary.failure:
        verdict = "**FAILED**"
    else:
        verdict = "reproduced"
    lines = [
        f"# dvc repro: {verdict}",
        "",
        f"- workspace: `{summary.workspace}`",
        f"- targets: {targets}",
        f"- stale before the run: {', '.join(sorted(summary.stale)) or 'none'}",
        f"- stages re-run: {', '.join(summary.ran) or 'none'}",
    ]
    if summary.failure:
        lines += ["", "## Failure", "", "```", summary.failure.strip(), "```"]
    if not summary.up_to_date:
        lines += ["", "## Metrics (dvc metrics diff, last commit → workspace)", ""]
        lines += [summary.metrics_diff, "", "## Params (dvc params diff)", "", summary.params_diff]
    return "\n".join(lines) + "\n"


def run_locked(workspace: str, targets: Sequence[str], force: bool) -> RunSummary:
    """Status, repro and artifacts; the caller holds the workspace's writer slot."""
    summary = RunSummary(workspace, list(targets), dvc_status(workspace, targets))
    if summary.stale or force:
        state = dvc_repro(workspace, targets, force, return_state=True)
        if state.is_completed():
            summary.ran = state.result()
        else:
            exc = state.result(raise_on_failure=False)
            summary.failure = str(exc)
            summary.ran = dvc_cli.stages_run(getattr(exc, "output", ""))
        summary.metrics_diff, summary.params_diff = dvc_diffs(workspace)
    key = slug(workspace)
    create_markdown_artifact(
        summary_markdown(summary), key=f"dvc-repro-{key}", description=f"dvc repro in {workspace}"
    )
    lock = Path(workspace) / "dvc.lock"
    rows = dvc_cli.lock_rows(lock.read_text()) if lock.exists() else []
    create_table_artifact(rows, key=f"dvc-lock-{key}", description=f"{lock} after the run")
    return summary


@flow(name="reproduce")
def reproduce(workspace: str = ".", targets: list[str] | None = None, force: bool = False) -> dict:
    """Run `dvc repro` (on `targets`, or the whole pipeline) if anything is stale, or if `force`."""
    workspace = str(Path(workspace).resolve())
    with workspace_writer(workspace):
        summary = run_locked(workspace, targets or [], force)
    if summary.failure:
        raise RuntimeError(f"dvc repro failed in {workspace}:\n{summary.failure}")
    return asdict(summary)


def main() -> None:
    cli = argparse.ArgumentParser(prog="python -m flows.reproduce", description=reproduce.__doc__)
    cli.add_argument("targets", nargs="*", help="stages or dvc.yaml files (default: all)")
    cli.add_argument("--workspace", default=".", help="the DVC workspace (.)")
    cli.add_argument("--force", action="store_true", help="re-run the targets even if current")
    args = cli.parse_args()
    reproduce(workspace=args.workspace, targets=args.targets, force=args.force)


if __name__ == "__main__":
    main()
