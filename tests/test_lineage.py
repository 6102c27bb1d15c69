"""Lineage audit: pure graph questions on hand-made pipelines, then a real temporary DVC project."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from stages.common.errors import StageError
from stages.lineage import report as lineage
from stages.lineage.graph import (
    MISSING,
    MODIFIED,
    OK,
    PARAM_DELETED,
    PARAM_NEW,
    Entry,
    Pipeline,
    StageRecord,
    chain,
    downstream,
    find_metric,
    flatten,
    load_pipeline,
    metrics_depending_on,
    overlaps,
    param_rows,
    porcelain_paths,
)
from tests.dvc_toy import build_toy, dvc

ROOT = Path(__file__).resolve().parents[1]


def entry(path: str, status: str = OK) -> Entry:
    return Entry(path, "0" * 32, 1, None, status)


def record(
    name: str, deps: list[str], outs: list[str], metrics: tuple[str, ...] = ()
) -> StageRecord:
    return StageRecord(
        name, f"run {name}", True, False,
        tuple(entry(d) for d in deps), tuple(entry(o) for o in outs), (), metrics,
    )  # fmt: skip


# a diamond: raw -> a -> (b, c) -> d, plus an unrelated e reading raw/other
DIAMOND = Pipeline(
    {
        "d": record("d", ["data/b", "data/c/part"], ["reports/d.json"], ("reports/d.json",)),
        "b": record("b", ["data/a", "code/b.py"], ["data/b"]),
        "c": record("c", ["data/a"], ["data/c", "reports/c.json"], ("reports/c.json",)),
        "a": record("a", ["raw/in"], ["data/a"]),
        "e": record("e", ["raw/other"], ["reports/e.json"], ("reports/e.json",)),
    }
)


def test_overlaps_is_dvc_path_containment() -> None:
    assert overlaps("data/a", "data/a")
    assert overlaps("data/a", "data/a/part-0.parquet")
    assert overlaps("data/a/x", "data")
    assert not overlaps("data/a", "data/ab")
    assert not overlaps("data/a", "data/b")


def test_chain_lists_exactly_the_feeding_stages_inputs_first() -> None:
    assert chain(DIAMOND, "d") == ["a", "b", "c", "d"]
    assert chain(DIAMOND, "c") == ["a", "c"]
    assert chain(DIAMOND, "e") == ["e"]
    assert downstream(DIAMOND, ["b"]) == {"b", "d"}
    assert downstream(DIAMOND, ["a"]) == {"a", "b", "c", "d"}


def test_metrics_depending_on_a_path() -> None:
    assert metrics_depending_on(DIAMOND, "raw/in") == {
        "reports/c.json": ["a"],
        "reports/d.json": ["a"],
    }
    assert metrics_depending_on(DIAMOND, "code/b.py") == {"reports/d.json": ["b"]}
    # an intermediate output and a file inside an output directory both count
    assert metrics_depending_on(DIAMOND, "data/c/part") == {
        "reports/c.json": ["c"],
        "reports/d.json": ["c", "d"],
    }
    with pytest.raises(StageError, match="no stage"):
        metrics_depending_on(DIAMOND, "raw/unused")


def test_flatten_and_find_metric() -> None:
    flat = flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None})
    assert flat == {"a.b": 1, "a.c.d": [1, 2], "e": None}
    values = {"r/x.json": {"acc": 0.5, "loss": 1.0}, "r/y.json": {"acc": 0.7}}
    assert find_metric(values, "acc") == {"r/x.json": 0.5, "r/y.json": 0.7}
    assert find_metric(values, "r/y.json:acc") == {"r/y.json": 0.7}
    with pytest.raises(StageError, match="no metrics file"):
        find_metric(values, "r/y.json:loss")


def test_param_rows_compare_lock_with_file() -> None:
    rows = param_rows("p.yaml", {"s": {"a": 1, "b": 2, "c": 3}}, {"s": {"a": 1, "b": 5, "n": 0}})
    assert [(r.key, r.value, r.status) for r in rows] == [
        ("s.a", 1, OK),
        ("s.b", 2, MODIFIED),  # the value it ran with, not the new one
        ("s.c", 3, PARAM_DELETED),
        ("s.n", 0, PARAM_NEW),
    ]


def test_porcelain_paths_skip_the_old_name_of_a_rename() -> None:
    status = " M dvc.lock\0R  new.json\0old.json\0?? reports/x.json\0"
    assert porcelain_paths(status) == {"dvc.lock", "new.json", "reports/x.json"}


def test_changes_name_each_difference() -> None:
    stale = StageRecord(
        "s", "cmd", True, True, (entry("in", MODIFIED),), (entry("out", MISSING),), (), ()
    )
    assert stale.changes() == ["command changed", "dep in: modified", "out out: missing"]
    assert DIAMOND.stages["a"].changes() == []


def test_missing_report_deps_catches_a_forgotten_metrics_file() -> None:
    with_report = Pipeline(
        {**DIAMOND.stages, "lineage": record("lineage", ["reports/c.json"], ["reports/lineage.md"])}
    )
    assert lineage.missing_report_deps(with_report) == ["reports/d.json", "reports/e.json"]


def test_repo_lineage_stage_depends_on_every_metrics_file() -> None:
    """Catches a merge that adds a stage with metrics but forgets them in the lineage stage."""
    pipeline = load_pipeline(ROOT, git=False)
    assert "lineage" in pipeline.stages
    assert pipeline.metrics_files(), "the pipeline declares no metrics at all"
    assert lineage.missing_report_deps(pipeline) == []


# --- a real DVC project ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_toy(tmp_path_factory.mktemp("toy"))


@pytest.fixture
def project(built: Path, tmp_path: Path) -> Path:
    """A private copy of the built project, free to change."""
    copy = tmp_path / "toy"
    shutil.copytree(built, copy, symlinks=True)
    return copy


def test_current_project_reports_lock_hashes_and_disk_agree(built: Path) -> None:
    pipeline = load_pipeline(built)
    assert all(not s.changes() for s in pipeline.stages.values())
    answer = lineage.audit_file(pipeline, "reports/train.json")
    assert answer["current"] and answer["chain"] == ["prep", "train"]
    assert answer["git"]["commit"] and answer["git"]["uncommitted"] == []
    prep = answer["stages"][0]
    raw = next(e for e in prep["deps"] if e["path"] == "raw/a.txt")
    data = (built / "raw/a.txt").read_bytes()
    assert raw["md5"] == hashlib.md5(data).hexdigest() and raw["size"] == len(data)
    assert {p["key"]: p["value"] for p in prep["params"]} == {"base.seed": 1, "prep.scale": 2}
    train = answer["stages"][1]
    assert next(e for e in train["deps"] if e["path"] == "data/prep.txt")["from"] == "prep"
    # the other metric's chain is only its own stage, whose directory dep has DVC's .dir hash
    other = lineage.audit_file(pipeline, "reports/other.json")
    assert other["chain"] == ["other"]
    raw_dir = next(e for e in other["stages"][0]["deps"] if e["path"] == "raw/dir")
    assert raw_dir["md5"].endswith(".dir") and raw_dir["nfiles"] == 2 and raw_dir["size"] == 4


def test_lineage_stage_is_deterministic_and_not_stale_after_repro(built: Path) -> None:
    assert dvc(built, "status", "--json").strip() in ("{}", "")  # the dvc.lock trap avoided
    report = (built / "reports/lineage.md").read_text()
    assert "reports/train.json | train | prep → train | current" in report
    assert "**STALE**" not in report
    lineage.write_report(built, Path("reports/lineage.md"))
    assert (built / "reports/lineage.md").read_text() == report


def test_changed_input_is_flagged_stale_like_dvc_status(project: Path) -> None:
    (project / "raw/a.txt").write_text("4 5 6\n")
    pipeline = load_pipeline(project)
    assert pipeline.stages["prep"].changes() == ["dep raw/a.txt: modified"]
    assert not pipeline.stages["other"].changes()
    stale = {n for n, s in pipeline.stages.items() if s.changes() and n != "lineage"}
    assert stale == set(json.loads(dvc(project, "status", "--json"))) - {"lineage"}
    train = lineage.audit_file(pipeline, "reports/train.json")
    assert not train["current"]
    assert lineage.audit_file(pipeline, "reports/other.json")["current"]
    text = lineage.render(train, as_json=False)
    assert "**STALE**" in text and "| dep | raw/a.txt |" in text
    assert "uncommitted changes in: raw/a.txt" in text
    # the CLI says so too, and --fail-stale turns it into an exit status
    args = ["--root", str(project), "file", "reports/train.json", "--fail-stale"]
    assert lineage.main(args) == lineage.EXIT_STALE


def test_report_of_a_stale_pipeline_says_so_per_metric(project: Path) -> None:
    (project / "raw/dir/z").write_text("new recording\n")
    report = lineage.write_report(project, Path("reports/lineage.md"))
    assert not report["current"]
    assert {m["metrics_file"]: m["current"] for m in report["metrics"]} == {
        "reports/other.json": False,
        "reports/train.json": True,
    }
    text = (project / "reports/lineage.md").read_text()
    assert "| reports/other.json | other | other | **STALE** |" in text
    assert "**STALE** — dep raw/dir: modified" in text


def test_changed_param_and_hand_edited_metric_are_flagged(project: Path) -> None:
    (project / "params.yaml").write_text("base:\n  seed: 1\nprep:\n  scale: 2\ntrain:\n  lr: 0.2\n")
    (project / "reports/other.json").write_text('{"files": 99}')
    pipeline = load_pipeline(project)
    assert pipeline.stages["train"].changes() == ["param params.yaml:train.lr: modified"]
    assert pipeline.stages["other"].changes() == ["out reports/other.json: modified"]
    assert not pipeline.stages["prep"].changes()


def test_metric_and_data_questions_on_the_project(
    built: Path, capsys: pytest.CaptureFixture
) -> None:
    assert lineage.main(["--root", str(built), "metric", "nested.acc", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert [(h["metrics_file"], h["value"]) for h in answer["found_in"]] == [
        ("reports/train.json", 0.5)
    ]
    assert lineage.main(["--root", str(built), "data", "raw/dir/x", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)["metrics"]
    assert [(m["metrics_file"], m["via"]) for m in found] == [("reports/other.json", ["other"])]
    assert lineage.main(["--root", str(built), "data", "step.py"]) == 0
    assert "reports/train.json | train | prep, train | current" in capsys.readouterr().out


def test_cli_errors_name_the_file(built: Path, capsys: pytest.CaptureFixture) -> None:
    assert lineage.main(["--root", str(built), "file", "data/prep.txt"]) == 2
    assert "lineage: error: data/prep.txt: not a metrics file" in capsys.readouterr().err


def test_report_refuses_a_lineage_stage_missing_a_metrics_dep(project: Path) -> None:
    dvc_yaml = project / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text().replace(", reports/other.json]", "]"))
    before = (project / "reports/lineage.md").read_text()
    with pytest.raises(StageError, match=r"missing: reports/other\.json"):
        lineage.write_report(project, Path("reports/lineage.md"))
    assert (project / "reports/lineage.md").read_text() == before
