"""Lineage audit: pure graph questions on hand-made pipelines, then a real temporary DVC project
(tests/dvc_toy.py) with a model, whose chains run metric -> model -> data -> raw."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from stages.common.errors import StageError
from stages.common.params import load_section
from stages.lineage import audit as lineage
from stages.lineage import report as report_stage
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


def test_missing_report_deps_catches_a_forgotten_input() -> None:
    with_report = Pipeline(
        {**DIAMOND.stages, "report": record("report", ["reports/c.json"], ["reports/index.html"])}
    )
    inputs = [*with_report.metrics_files(), "reports/c.json", "models/m.pt"]
    assert report_stage.missing_deps(with_report, inputs) == [
        "reports/d.json", "reports/e.json", "models/m.pt",
    ]  # fmt: skip


def test_repo_report_stage_depends_on_everything_it_shows() -> None:
    """Catches a merge that adds a stage with metrics, pictures, curves or a model but forgets
    them in the report stage (only what is on disk can be checked: models live in DVC's cache)."""
    pipeline = load_pipeline(ROOT, git=False)
    assert "report" in pipeline.stages
    assert pipeline.metrics_files(), "the pipeline declares no metrics at all"
    inputs = report_stage.find_inputs(pipeline, ROOT).paths(pipeline)
    assert report_stage.missing_deps(pipeline, inputs) == []


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
    models = lineage.all_models(pipeline, built)
    answer = lineage.audit_file(pipeline, "reports/train.json", models)
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
    other = lineage.audit_file(pipeline, "reports/other.json", models)
    assert other["chain"] == ["other"]
    raw_dir = next(e for e in other["stages"][0]["deps"] if e["path"] == "raw/dir")
    assert raw_dir["md5"].endswith(".dir") and raw_dir["nfiles"] == 2 and raw_dir["size"] == 4


def report_params(root: Path) -> report_stage.Params:
    return load_section(report_stage.Params, "report", root / "params.yaml")


def test_report_stage_is_deterministic_and_not_stale_after_repro(built: Path) -> None:
    assert dvc(built, "status", "--json").strip() in ("{}", "")  # the dvc.lock trap avoided
    outputs = ["reports/lineage.md", "reports/index.html", "reports/index.md"]
    before = {o: (built / o).read_bytes() for o in outputs}
    report = before["reports/lineage.md"].decode()
    assert "reports/train.json | train | prep → train | current" in report
    assert "reports/eval.json | evaluate | prep → train → evaluate | current" in report
    assert "**STALE**" not in report
    report_stage.build_report(report_params(built), built)
    assert {o: (built / o).read_bytes() for o in outputs} == before


def test_changed_input_is_flagged_stale_like_dvc_status(project: Path) -> None:
    (project / "raw/a.txt").write_text("4 5 6\n")
    pipeline = load_pipeline(project)
    assert pipeline.stages["prep"].changes() == ["dep raw/a.txt: modified"]
    assert not pipeline.stages["other"].changes()
    stale = {n for n, s in pipeline.stages.items() if s.changes() and n != "report"}
    assert stale == set(json.loads(dvc(project, "status", "--json"))) - {"report"}
    models = lineage.all_models(pipeline, project)
    train = lineage.audit_file(pipeline, "reports/train.json", models)
    assert not train["current"] and train["stale"] == ["prep: dep raw/a.txt: modified"]
    assert lineage.audit_file(pipeline, "reports/other.json", models)["current"]
    text = lineage.render(train, as_json=False)
    assert "**STALE**" in text and "| dep | raw/a.txt |" in text
    assert "uncommitted changes in: raw/a.txt" in text
    # the CLI says so too, and --fail-stale turns it into an exit status
    args = ["--root", str(project), "file", "reports/train.json", "--fail-stale"]
    assert lineage.main(args) == lineage.EXIT_STALE


def test_report_of_a_stale_pipeline_says_so_per_metric(project: Path) -> None:
    (project / "raw/dir/z").write_text("new recording\n")
    audit = report_stage.build_report(report_params(project), project)["audit"]
    assert not audit["current"]
    assert {m["metrics_file"]: m["current"] for m in audit["metrics"]} == {
        "reports/eval.json": True,
        "reports/other.json": False,
        "reports/train.json": True,
    }
    text = (project / "reports/lineage.md").read_text()
    assert "| reports/other.json | other | other | **STALE** |" in text
    assert "**STALE** — dep raw/dir: modified" in text
    page = (project / "reports/index.md").read_text()
    assert "**STALE**: some numbers below no longer match their inputs" in page


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
    found = json.loads(capsys.readouterr().out)
    assert [(m["metrics_file"], m["via"]) for m in found["metrics"]] == [
        ("reports/other.json", ["other"])
    ]
    assert found["models"] == []
    assert lineage.main(["--root", str(built), "data", "step.py"]) == 0
    assert "reports/train.json | train | prep, train | current" in capsys.readouterr().out


def test_metric_chain_runs_through_the_model_to_the_raw_data(
    built: Path, capsys: pytest.CaptureFixture
) -> None:
    assert lineage.main(["--root", str(built), "metric", "score", "--json", "--fail-stale"]) == 0
    (hit,) = json.loads(capsys.readouterr().out)["found_in"]
    assert hit["value"] == 0.12 and hit["current"] and hit["stale"] == []
    evaluate = hit["tree"]["stage"]
    assert evaluate["name"] == "evaluate" and evaluate["code"] == ["step.py"]
    (model_dep,) = evaluate["inputs"]
    assert model_dep["kind"] == "model" and model_dep["path"] == "models/model.pt"
    (model,) = model_dep["models"]
    prep_md5 = hashlib.md5((built / "data/prep.txt").read_bytes()).hexdigest()
    assert model["step"] == 12 and model["inputs"] == {"data/prep.txt": prep_md5}
    assert model["stage"] == "train" and model["problems"] == []
    (train,) = model_dep["from"]
    assert train["name"] == "train" and train["params"] == {"train.lr": 0.1}
    (data,) = train["inputs"]
    assert (data["kind"], data["path"], data["md5"]) == ("data", "data/prep.txt", prep_md5)
    (prep,) = data["from"]
    (raw,) = prep["inputs"]
    assert prep["source"] and raw["kind"] == "raw" and raw["path"] == "raw/a.txt"
    assert raw["md5"] == hashlib.md5(b"1 2 3\n").hexdigest() and raw["dvc_added"] is False
    # the reverse: the raw file leads to the model and to both metrics computed from it
    assert lineage.main(["--root", str(built), "data", "raw/a.txt", "--json"]) == 0
    below = json.loads(capsys.readouterr().out)
    assert [m["path"] for m in below["models"]] == ["models/model.pt"]
    assert [m["metrics_file"] for m in below["metrics"]] == [
        "reports/eval.json", "reports/train.json",
    ]  # fmt: skip


def test_a_model_whose_record_disagrees_with_dvc_lock_is_a_stale_link(
    project: Path, capsys: pytest.CaptureFixture
) -> None:
    """A model file that DVC sees as current (committed by hand) but was trained on other data:
    only its record can tell, and the chain says so."""
    import torch

    model = project / "models/model.pt"
    record = torch.load(model, weights_only=True)
    torch.save({**record, "inputs": {"data/prep.txt": "0" * 32}}, model)
    dvc(project, "commit", "-f", "-q", "train", "evaluate")
    pipeline = load_pipeline(project)
    assert not pipeline.stages["train"].changes()  # DVC alone sees nothing wrong
    models = lineage.all_models(pipeline, project)
    answer = lineage.audit_file(pipeline, "reports/eval.json", models)
    assert answer["stale"] == [
        f"models/model.pt: trained on data/prep.txt {'0' * 32}, dvc.lock has "
        + hashlib.md5((project / "data/prep.txt").read_bytes()).hexdigest()
    ]
    args = ["--root", str(project), "metric", "reports/eval.json:score", "--fail-stale"]
    assert lineage.main(args) == lineage.EXIT_STALE
    assert "**STALE**: trained on data/prep.txt" in capsys.readouterr().out


def test_cli_errors_name_the_file(built: Path, capsys: pytest.CaptureFixture) -> None:
    assert lineage.main(["--root", str(built), "file", "data/prep.txt"]) == 2
    assert "lineage: error: data/prep.txt: not a metrics file" in capsys.readouterr().err


def test_report_refuses_a_report_stage_missing_an_input(project: Path) -> None:
    dvc_yaml = project / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text().replace(" models/model.pt,\n", "\n"))
    before = (project / "reports/index.html").read_text()
    with pytest.raises(StageError, match=r"missing: models/model\.pt"):
        report_stage.build_report(report_params(project), project)
    assert (project / "reports/index.html").read_text() == before
