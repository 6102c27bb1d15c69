"""The report stage's page: its pure parts on known answers, then the page in headless Chromium, for
the toy project (built here) and for the project's own committed `reports/index.html`."""

from __future__ import annotations

import json
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from stages.common.params import load_section
from stages.lineage import page
from stages.lineage import report as report_stage
from stages.lineage.graph import flatten, load_pipeline
from tests import browser
from tests.dvc_toy import ROOT, build_toy, git

# --- pure parts ------------------------------------------------------------------------------


def test_list_html_nests_markdown_bullets() -> None:
    lines = ["- a `x`", "  - b", "    - **STALE** c", "  - d", "- e"]
    assert page.list_html(lines) == (
        "<ul><li>a <code>x</code><ul><li>b<ul><li>"
        '<strong class="stale">STALE</strong> c</li></ul></li><li>d</li></ul></li>'
        "<li>e</li></ul>"
    )


def test_curve_svg_maps_steps_and_values_onto_the_axes() -> None:
    svg = page.curve_svg("loss", ["step", "loss"], [[0.0, 10.0], [1.0, 3.0]])
    # x: 34 px (pad) to 360 - 8; y: the lowest value at 180 - 34 + 8, the highest at 16
    assert 'points="34.0,154.0 352.0,16.0"' in svg
    parser = HTMLParser()
    parser.feed(svg)  # well-formed enough for the HTML parser, no exception


def test_read_curve_takes_step_tables_only(tmp_path: Path) -> None:
    good = tmp_path / "good.tsv"
    good.write_text("step\tloss\n0\t1.5\n2\t0.5\n")
    assert page.read_curve(good) == (["step", "loss"], [[0.0, 2.0], [1.5, 0.5]])
    for name, text in {"words": "step\torder\n0\tAVT\n", "other": "order\tr10\nA\t1\n"}.items():
        path = tmp_path / f"{name}.tsv"
        path.write_text(text)
        assert page.read_curve(path) is None


def test_comparison_tables_are_read_and_shown_in_both_pages(tmp_path: Path) -> None:
    table = tmp_path / "t.tsv"
    table.write_text("measure\tA\tB\tgoal\nnmi\t0.900\t–\t>= 0.9\n")
    assert page.read_table(table) == (
        ["measure", "A", "B", "goal"],
        [["nmi", "0.900", "–", ">= 0.9"]],
    )
    for text in ("step\tloss\n0\t1\n", "measure\tA\nnmi\t1\t2\n"):  # a curve; a ragged row
        table.write_text(text)
        assert page.read_table(table) is None
    audit = {"current": True, "metrics": []}
    tables = {"r/p/t.tsv": (["measure", "A <b>"], [["nmi", "0.900"]])}
    built = page.build(audit, {}, page.Baseline(None, {}), {}, {}, tables, {"r/p": "Paper"})
    assert [s["tables"] for s in built["sections"]] == [["r/p/t.tsv"]]
    assert "| measure | A <b> |\n|---|--:|\n| nmi | 0.900 |" in page.to_markdown(built, "r/i.md")
    html = page.to_html(built, "r/i.html")
    assert "<th>A &lt;b&gt;</th>" in html and '<td>nmi</td><td class="n">0.900</td>' in html


def test_metrics_diff_is_dvcs_with_unchanged_keys() -> None:
    old = {"r.json": {"a": 1, "b": {"c": 2.5}}}
    new = {"r.json": {"a": 3, "b": {"c": 2.5}, "d": "x"}}
    assert page.metrics_diff(old, new) == {
        "r.json": {
            "a": {"old": 1, "new": 3, "diff": 2},
            "b.c": {"old": 2.5, "new": 2.5, "diff": 0.0},
            "d": {"old": None, "new": "x"},
        }
    }
    assert [page.change(r) for r in ({"old": 1, "new": 3, "diff": 2}, {"old": None, "new": 1})] == [
        "+2",
        "new",
    ]


def test_baseline_is_the_newest_commit_with_other_metrics_before_and_after_committing(
    tmp_path: Path,
) -> None:
    """So the committed page and a re-run of the stage on that commit agree byte for byte."""
    git(tmp_path, "init", "-q")
    metrics = tmp_path / "m.json"

    def commit(value: int) -> str:
        metrics.write_text(json.dumps({"a": value}))
        git(tmp_path, "add", "m.json")
        git(tmp_path, "commit", "-qm", f"a={value}")
        return git(tmp_path, "rev-parse", "HEAD").strip()

    first, second = commit(1), commit(2)
    assert page.find_baseline(tmp_path, ["m.json"], {"m.json": {"a": 2}}, 10) == page.Baseline(
        first, {"m.json": {"a": 1}}
    )
    retrained = {"m.json": {"a": 3}}
    before = page.find_baseline(tmp_path, ["m.json"], retrained, 10)
    assert before == page.Baseline(second, {"m.json": {"a": 2}})
    commit(3)  # the retraining is committed: the baseline stays where it was
    assert page.find_baseline(tmp_path, ["m.json"], retrained, 10) == before
    assert page.find_baseline(tmp_path, ["m.json"], {"m.json": {"a": 1}}, 1).commit is not None


def test_the_watched_metrics_of_retraining_exist() -> None:
    """A typo in params.yaml's `retrain.watch` would silently never flag anything."""
    from flows.retrain import load_params

    params = load_params(str(ROOT))
    assert params is not None and params.watch
    for watch in params.watch:
        file, _, key = watch.metric.partition(":")
        assert key in flatten(json.loads((ROOT / file).read_text())), watch.metric


# --- the page in Chromium ----------------------------------------------------------------------

needs_chromium = pytest.mark.skipif(
    not browser.available(), reason="Chromium missing: `make test` installs it (apt-get chromium)"
)


@pytest.fixture
def chromium(tmp_path: Path) -> browser.Page:
    tab = browser.Page(tmp_path / "profile")
    yield tab
    tab.close()


def rows_and_pictures(tab: browser.Page, url: str) -> tuple[set[tuple[str, str, str]], list]:
    tab.open(url)
    rows = tab.evaluate(
        "Array.from(document.querySelectorAll('tr')).filter(r => r.cells[0].tagName == 'TD')"
        ".map(r => Array.from(r.cells).map(c => c.innerText.trim()))"
    )
    pictures = tab.evaluate(
        "Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0])"
    )
    return {tuple(r[:3]) for r in rows if len(r) == 5}, pictures


def expected_rows(root: Path, files: list[str]) -> set[tuple[str, str, str]]:
    """Every non-null metric of every metrics file, as the page should show it."""
    found = set()
    for file in files:
        for key, value in flatten(json.loads((root / file).read_text())).items():
            if value is not None:
                found.add((file, key, page.number(value)))
    return found


@pytest.mark.slow
@needs_chromium
def test_toy_page_shows_every_metric_and_picture_and_unfolds_lineage(
    tmp_path: Path, chromium: browser.Page
) -> None:
    toy = build_toy(tmp_path / "toy")
    params = load_section(report_stage.Params, "report", toy / "params.yaml")
    pipeline = load_pipeline(toy, git=False)
    shown, pictures = rows_and_pictures(chromium, (toy / params.html).as_uri())
    assert shown == expected_rows(toy, pipeline.metrics_files())
    assert pictures == [["reports/picture.png", True]]
    assert chromium.evaluate("document.querySelectorAll('svg.curve polyline').length") == 1
    # a click on a number opens its lineage, which runs through the model down to the raw file
    anchor = "lineage-reports-eval-json"
    assert chromium.evaluate(f"document.getElementById('{anchor}').open") is False
    chromium.evaluate(f"document.querySelector('a[href=\"#{anchor}\"]').click()")
    assert chromium.evaluate(f"document.getElementById('{anchor}').open") is True
    text = chromium.evaluate(f"document.getElementById('{anchor}').innerText")
    assert "model models/model.pt" in text and "step 12" in text and "raw raw/a.txt" in text
    assert chromium.errors() == []
    chromium.screenshot(tmp_path / "toy.png")
    assert (tmp_path / "toy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@needs_chromium
def test_committed_report_shows_every_metric_and_every_picture_loads(
    tmp_path: Path, chromium: browser.Page
) -> None:
    """The project's own page, as committed: what a researcher opens after `git pull`."""
    params = load_section(report_stage.Params, "report", ROOT / "params.yaml")
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", str(params.html)], cwd=ROOT, capture_output=True
    )
    if tracked.returncode != 0:
        pytest.skip(f"{params.html} is not committed yet")
    pipeline = load_pipeline(ROOT, git=False)
    shown, pictures = rows_and_pictures(chromium, (ROOT / params.html).as_uri())
    assert shown == expected_rows(ROOT, pipeline.metrics_files())
    committed = {p for p in page.output_files(ROOT, pipeline, page.PICTURE)}
    assert {alt for alt, _ in pictures} == committed and all(ok for _, ok in pictures)
    assert chromium.errors() == []
    chromium.screenshot(tmp_path / "report.png")
