"""Prefect flows on a real toy DVC project, under `prefect_test_harness`, plus pure helpers."""

from __future__ import annotations

import json
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.settings import PREFECT_HOME, temporary_settings
from prefect.testing.utilities import prefect_test_harness

from flows import dvc_cli
from flows.reproduce import ReproFailed, RunSummary, is_transient, reproduce, slug, summary_markdown
from flows.retrain import changed_inputs, commit_message, retrain
from tests.dvc_toy import ROOT, build_toy, git

# --- pure helpers ----------------------------------------------------------------------------


def test_parse_status_takes_the_json_line_after_warnings() -> None:
    out = 'WARNING: something\n{"prep": [{"changed deps": {"raw/a.txt": "modified"}}]}\n'
    assert dvc_cli.parse_status(out) == {"prep": [{"changed deps": {"raw/a.txt": "modified"}}]}
    assert dvc_cli.parse_status("{}\n") == {}
    with pytest.raises(ValueError, match="no JSON"):
        dvc_cli.parse_status("ERROR: broken")


def test_stages_run_from_repro_output() -> None:
    out = (
        "Running stage 'prep':\n> python step.py prep\nStage 'other' didn't change, skipping\n"
        "Running stage 'feat@video':\n> run\n"
    )
    assert dvc_cli.stages_run(out) == ["prep", "feat@video"]


def test_lock_and_metrics_rows() -> None:
    lock = """
schema: '2.0'
stages:
  a:
    cmd: run a
    deps:
    - {path: raw, hash: md5, md5: 1.dir, size: 10, nfiles: 2}
    outs:
    - {path: out.json, hash: md5, md5: '2', size: 3}
"""
    assert dvc_cli.lock_rows(lock) == [
        {"stage": "a", "kind": "dep", "path": "raw", "md5": "1.dir", "size": 10, "nfiles": 2},
        {"stage": "a", "kind": "out", "path": "out.json", "md5": "2", "size": 3, "nfiles": None},
    ]
    diff = '{"r.json": {"acc": {"old": 0.5, "new": 0.75, "diff": 0.25}}}'
    assert dvc_cli.metrics_rows(diff) == [
        {"file": "r.json", "metric": "acc", "old": 0.5, "new": 0.75, "change": 0.25}
    ]


def test_slug_is_a_valid_artifact_key_and_unique_per_path(tmp_path: Path) -> None:
    a, b = tmp_path / "My Work_space", tmp_path / "other" / "My Work_space"
    assert slug(a).startswith("my-work-space-")
    assert slug(a) != slug(b) and slug(a) == slug(str(a))
    assert all(c.islower() or c.isdigit() or c == "-" for c in slug(a))


def test_the_features_cluster_has_no_public_dashboard_and_needs_its_credentials() -> None:
    from flows.features import task_runner

    quiet = task_runner(None, workers=2, gpus_per_worker=0).cluster_kwargs
    assert quiet["dashboard_address"] is None  # LocalCluster's default: ':8787', every interface
    assert quiet["host"] == "127.0.0.1" and quiet["security"] is True  # mutual TLS, temporary
    asked = task_runner(None, workers=2, gpus_per_worker=0, dashboard=8790).cluster_kwargs
    assert asked == {**quiet, "dashboard_address": "127.0.0.1:8790"}


def test_only_stage_errors_are_not_retried() -> None:
    def state(exc: BaseException | None) -> SimpleNamespace:
        def result() -> None:
            if exc:
                raise exc

        return SimpleNamespace(result=result)

    def failed(code: int) -> ReproFailed:
        out = f"ERROR: failed to reproduce 's': failed to run: x, exited with {code}"
        return ReproFailed(dvc_cli.Done(("dvc",), 1, out))

    assert is_transient(None, None, state(failed(1)))
    assert not is_transient(None, None, state(failed(2)))
    assert is_transient(None, None, state(OSError("disk full")))
    assert not is_transient(None, None, state(None))


def test_summary_and_commit_message() -> None:
    quiet = RunSummary("/w", [], {})
    assert "up to date" in summary_markdown(quiet) and quiet.up_to_date
    failed = RunSummary("/w", ["train"], {"train": []}, ["prep"], "boom", "m", "p")
    text = summary_markdown(failed)
    assert "FAILED" in text and "boom" in text and "stages re-run: prep" in text
    rows = [
        {"file": "r.json", "metric": "acc", "old": 0.5, "new": 0.75, "change": 0.25},
        {"file": "r.json", "metric": "n", "old": 3, "new": 3, "change": 0},
    ]
    ran = RunSummary("/w", [], {}, ["train"])
    message = commit_message("brave-fox", "1234", ran, rows, [])
    assert message.splitlines()[0] == "retrain: flow run brave-fox (1234)"
    assert "- r.json: acc: 0.5 -> 0.75" in message and "r.json: n" not in message
    worse = [{**rows[0], "new": 0.25, "better": "higher", "worse_by": 0.5}]
    message = commit_message("brave-fox", "1234", ran, rows, worse)
    assert message.splitlines()[0] == "retrain: flow run brave-fox (1234): 1 REGRESSION"
    assert "- r.json:acc: 0.5 -> 0.25 (50.0% worse; higher is better)" in message


def test_changed_inputs_name_each_path_and_param() -> None:
    status = {
        "train": [{"changed deps": {"params.yaml": {"train.lr": "modified"}, "d": "deleted"}}],
        "prep": ["changed command", {"changed outs": {"data/p.txt": "not in cache"}}],
    }
    assert changed_inputs(status) == [
        "prep: changed command",
        "prep: changed outs: data/p.txt (not in cache)",
        "train: changed deps: params.yaml:train.lr (modified)",
        "train: changed deps: d (deleted)",
    ]


# --- flows under the test harness ------------------------------------------------------------


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    home = tmp_path_factory.mktemp("prefect-home")  # nothing leaks into ~/.prefect
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", str(ROOT))  # the toy's report stage imports `stages`
        with temporary_settings({PREFECT_HOME: home}), prefect_test_harness(180):
            yield


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_toy(tmp_path_factory.mktemp("toy"))


@pytest.fixture
def stale(built: Path, tmp_path: Path) -> Path:
    """A copy of the toy project whose raw input changed since the last commit."""
    copy = tmp_path / "toy"
    shutil.copytree(built, copy, symlinks=True)
    (copy / "raw/a.txt").write_text("1 2 3 4\n")
    return copy


def artifacts(key: str) -> list[object]:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )


@pytest.mark.slow
def test_reproduce_runs_stale_stages_and_publishes_artifacts(harness: None, stale: Path) -> None:
    summary = reproduce(workspace=str(stale))
    assert summary["stale"].keys() == {"prep"}
    assert summary["ran"] == ["prep", "train", "evaluate", "report"]
    assert dvc_cli.parse_status(dvc_cli.dvc(stale, "status", "--json").output) == {}
    (markdown,) = artifacts(f"dvc-repro-{slug(stale)}")
    assert "stages re-run: prep, train, evaluate, report" in markdown.data
    # train.json's byte count went from 12 to 16: the metrics diff against HEAD shows it
    assert re.search(r"\| reports/train.json \| bytes +\| 12 +\| 16 ", markdown.data)
    (table,) = artifacts(f"dvc-lock-{slug(stale)}")
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert rows == dvc_cli.lock_rows((stale / "dvc.lock").read_text())
    # and again: nothing is stale now, so nothing runs and dvc.lock is untouched
    lock = (stale / "dvc.lock").read_bytes()
    again = reproduce(workspace=str(stale))
    assert again["ran"] == [] and again["stale"] == {}
    assert (stale / "dvc.lock").read_bytes() == lock


@pytest.mark.slow
def test_overlapping_runs_take_turns(harness: None, stale: Path) -> None:
    results: list[dict] = []
    runs = [threading.Thread(target=lambda: results.append(reproduce(str(stale)))) for _ in "ab"]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=600)
    assert len(results) == 2
    # one run reproduced; the other waited for the writer slot, then found nothing stale (DVC's
    # lock alone would let both see `prep` stale, and the second repro would merely skip it)
    waited, first = sorted(results, key=lambda r: len(r["ran"]))
    assert first["ran"] == ["prep", "train", "evaluate", "report"]
    assert waited["ran"] == [] and waited["stale"] == {}


@pytest.mark.slow
def test_stage_error_fails_the_flow_once_with_the_failure_in_the_artifact(
    harness: None, stale: Path
) -> None:
    dvc_yaml = stale / "dvc.yaml"
    bad = 'python -c "import sys; sys.exit(2)"'
    dvc_yaml.write_text(dvc_yaml.read_text().replace("cmd: python step.py prep", f"cmd: {bad}"))
    state = reproduce(workspace=str(stale), return_state=True)
    assert state.is_failed()
    (markdown,) = artifacts(f"dvc-repro-{slug(stale)}")
    assert "FAILED" in markdown.data and "exited with 2" in markdown.data
    with get_client(sync_client=True) as client:
        flow_run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        repro = [t for t in client.read_task_runs(flow_run_filter=flow_run) if "repro" in t.name]
    assert [t.run_count for t in repro] == [1]  # a StageError is not retried


@pytest.mark.slow
def test_retrain_commits_lock_and_metrics_naming_the_run(harness: None, stale: Path) -> None:
    (stale / "notes.txt").write_text("staged by the user, not part of the retraining\n")
    git(stale, "add", "notes.txt")
    result = retrain(workspace=str(stale), targets=["evaluate", "report"], commit=True)
    by_name = {(r["file"], r["metric"]): (r["old"], r["new"]) for r in result["metrics"]}
    assert by_name[("reports/train.json", "bytes")] == (12, 16)
    assert by_name[("reports/eval.json", "score")] == (0.12, 0.16)
    assert by_name[("reports/other.json", "files")] == (2, 2)
    assert result["regressions"] == []  # nested.acc, the watched metric, did not move
    head = git(stale, "log", "-1", "--format=%H%n%B")
    assert head.splitlines()[0] == result["commit"]
    assert "retrain: flow run " in head and "reports/train.json: bytes: 12 -> 16" in head
    assert "REGRESSION" not in head
    committed = git(stale, "show", "--name-only", "--format=", "HEAD").split()
    assert sorted(committed) == [
        "dvc.lock", "reports/eval.json", "reports/index.html", "reports/index.md",
        "reports/lineage.md", "reports/train.json",
    ]  # fmt: skip
    assert "A  notes.txt" in git(stale, "status", "--porcelain")  # still staged, not committed
    (table,) = artifacts(f"retrain-metrics-{slug(stale)}")
    assert "reports/train.json" in str(table.data)
    (markdown,) = artifacts(f"retrain-{slug(stale)}")
    assert "- prep: changed deps: raw/a.txt (modified)" in markdown.data
    assert "| reports/eval.json | score | 0.12 | 0.16 |" in markdown.data
    assert "- none" in markdown.data.split("## Regressions")[1].split("##")[0]
    assert (stale / "reports/index.html").as_uri() in markdown.data


def test_regressions_follow_the_watched_direction_and_threshold() -> None:
    from flows.retrain import Params, Watch, regressions

    rows = [
        {"file": "r.json", "metric": "acc", "old": 0.5, "new": 0.25, "change": -0.25},
        {"file": "r.json", "metric": "mse", "old": 2.0, "new": 2.1, "change": 0.1},
        {"file": "r.json", "metric": "nmi", "old": 0.9, "new": 0.95, "change": 0.05},
    ]
    watch = [
        Watch("r.json:acc", "higher"),
        Watch("r.json:mse", "lower"),
        Watch("r.json:nmi", "lower"),
    ]
    flagged = regressions(rows, Params(0.04, "index.html", watch))
    # acc fell by 50%, mse rose by 5%, nmi (watched as lower-is-better) rose by 5.6%
    assert [(r["metric"], round(r["worse_by"], 3)) for r in flagged] == [
        ("acc", 0.5), ("mse", 0.05), ("nmi", 0.056),
    ]  # fmt: skip
    assert [r["metric"] for r in regressions(rows, Params(0.055, "index.html", watch))] == [
        "acc", "nmi",
    ]  # fmt: skip
    assert regressions(rows, None) == []


@pytest.mark.slow
def test_retrain_without_the_flag_leaves_git_alone(harness: None, stale: Path) -> None:
    before = git(stale, "rev-parse", "HEAD")
    result = retrain(workspace=str(stale), targets=["train"])
    assert result["commit"] is None and result["ran"] == ["prep", "train"]
    assert git(stale, "rev-parse", "HEAD") == before
