"""The report a researcher opens: one self-contained HTML page and its Markdown twin.

Per paper (a folder of `reports/`, titled in params), the page shows every metric of every metrics
file with its change since the metrics last changed in Git (computed by DVC's own `metrics diff`
code), the pictures the stages made (embedded as previews at most 520 px wide, so the page needs
no server and no other file; each links to its full-size file beside the page), the
training curves (DVCLive's TSVs drawn as inline SVG), and, behind each number, its lineage tree
down to the source (`links.py`). The only script on the page opens the tree a link points to.

The comparison is against *the newest commit whose metrics differ from these*, not HEAD: before a
retraining is committed that is HEAD; after it, HEAD holds these very values and the baseline is
still the commit before. So re-running the stage on a committed workspace gives the same bytes, as
every output must. Everything below `report_inputs` is pure: values in, text out.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.lineage.graph import Pipeline, overlaps
from stages.lineage.links import tree_markdown

PICTURE, CURVE = ".png", ".tsv"
PREVIEW_WIDTH = 520  # px: the widest a picture is shown; the full one is a link away
CURVE_FIRST_COLUMN = "step"  # DVCLive's TSVs, and any other per-step curve a stage writes
TABLE_FIRST_COLUMN = "measure"  # a comparison table a stage writes: one measure per row, text cells


@dataclass(frozen=True)
class Baseline:
    commit: str | None  # None: no earlier commit has different metrics (or no Git)
    values: dict[str, dict[str, Any]]  # metrics file -> nested values at that commit


# --- what the report reads -------------------------------------------------------------------


def output_files(root: Path, pipeline: Pipeline, suffix: str) -> list[str]:
    """Files with `suffix` among the pipeline's outputs (an output directory: the files in it)."""
    found = set()
    for stage in pipeline.stages.values():
        for out in stage.outs:
            path = root / out.path
            if path.is_file() and path.suffix == suffix:
                found.add(out.path)
            elif path.is_dir():
                found |= {f.relative_to(root).as_posix() for f in path.rglob(f"*{suffix}")}
    return sorted(found)


def read_curve(path: Path) -> tuple[list[str], list[list[float]]] | None:
    """A per-step curve (header starting with `step`), as columns; None for any other TSV."""
    lines = path.read_text().splitlines()
    if not lines or lines[0].split("\t")[0] != CURVE_FIRST_COLUMN:
        return None
    header = lines[0].split("\t")
    try:
        rows = [[float(x) for x in line.split("\t")] for line in lines[1:] if line]
    except ValueError:
        return None  # a table with text cells is not a curve
    if not rows or any(len(r) != len(header) for r in rows):
        return None
    return header, [list(c) for c in zip(*rows, strict=True)]


def read_table(path: Path) -> tuple[list[str], list[list[str]]] | None:
    """A comparison table (header starting with `measure`), as rows of text; None for any other
    TSV."""
    lines = path.read_text().splitlines()
    if not lines or lines[0].split("\t")[0] != TABLE_FIRST_COLUMN:
        return None
    header, rows = lines[0].split("\t"), [line.split("\t") for line in lines[1:] if line]
    if any(len(r) != len(header) for r in rows):
        return None
    return header, rows


def preview_png(data: bytes) -> bytes:
    """The picture as the page embeds it: at most PREVIEW_WIDTH wide and, where smaller, in 256
    colours; the smallest of those encodings (PIL's, deterministic), so the page stays small
    enough for Git while showing what the figure shows."""
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    if image.width > PREVIEW_WIDTH:
        height = round(image.height * PREVIEW_WIDTH / image.width)
        image = image.resize((PREVIEW_WIDTH, height), Image.Resampling.LANCZOS)
    encodings = [data, _png(image)]
    if image.mode in ("RGB", "RGBA"):
        encodings.append(_png(image.convert("RGB").quantize(256)))
    return min(encodings, key=len)


def _png(image: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


# --- the baseline: the newest commit whose metrics differ -------------------------------------


def git_values(root: Path, revs: Iterable[str], files: list[str]) -> dict[str, dict[str, dict]]:
    """{rev: {file: parsed JSON}} for each of `files` at each rev (absent files left out)."""
    revs = list(revs)
    queries = [f"{rev}:{file}" for rev in revs for file in files]
    done = subprocess.run(
        ["git", "cat-file", "--batch"], cwd=root, input=("\n".join(queries) + "\n").encode(),
        capture_output=True, check=True,
    )  # fmt: skip
    out, at = done.stdout, 0
    values: dict[str, dict[str, dict]] = {rev: {} for rev in revs}
    for query in queries:
        end = out.index(b"\n", at)
        header = out[at:end].split()
        at = end + 1
        if header[-1] == b"missing":
            continue
        size = int(header[2])
        rev, file = query.split(":", 1)
        # one DVC cannot parse either gets no old value
        with contextlib.suppress(json.JSONDecodeError):
            values[rev][file] = json.loads(out[at : at + size])
        at += size + 1
    return values


def find_baseline(root: Path, files: list[str], current: Mapping[str, Any], depth: int) -> Baseline:
    """The newest of the last `depth` commits touching `files` whose values differ from
    `current`: the state a reader compares these metrics with."""
    log = subprocess.run(
        ["git", "log", f"-n{depth}", "--format=%H", "--", *files],
        cwd=root, capture_output=True, text=True, check=False,
    )  # fmt: skip
    revs = log.stdout.split() if log.returncode == 0 else []
    if not revs:
        return Baseline(None, {})
    for rev, values in git_values(root, revs, files).items():
        if values != dict(current):
            return Baseline(rev, values)
    return Baseline(None, {})


def metrics_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, dict[str, dict]]:
    """{file: {key: {"old", "new", "diff"}}}, unchanged keys included: DVC's own diff."""
    from dvc.utils.diff import diff

    wrap = lambda values: {f: {"data": v} for f, v in values.items()}  # noqa: E731
    return diff(wrap(old), wrap(new), with_unchanged=True)


# --- formatting ------------------------------------------------------------------------------


def number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value, sort_keys=True)


def change(row: Mapping[str, Any]) -> str:
    """The change column: a signed difference, "new" for a metric the baseline lacks, blank
    without a baseline."""
    if "old" not in row:
        return ""
    if "diff" in row:
        return "0" if row["diff"] == 0 else f"{row['diff']:+.4g}"
    if row["old"] is None:
        return "new"
    return "" if row["old"] == row["new"] else "changed"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def paper_of(path: str, papers: Mapping[str, str]) -> str:
    """The folder of `papers` holding `path` (the longest one), or '' when none does."""
    found = [folder for folder in papers if overlaps(folder, path)]
    return max(found, key=len) if found else ""


# --- the page as one dict, then Markdown and HTML from it ---------------------------------------


def build(
    audit: Mapping[str, Any],
    values: Mapping[str, dict[str, Any]],
    baseline: Baseline,
    pictures: Mapping[str, bytes],
    curves: Mapping[str, tuple[list[str], list[list[float]]]],
    tables: Mapping[str, tuple[list[str], list[list[str]]]],
    papers: Mapping[str, str],
) -> dict[str, Any]:
    """Everything the page shows, grouped by paper, in a stable order."""
    diff = metrics_diff(baseline.values, {f: values[f] for f in values})
    trees = {m["metrics_file"]: m for m in audit["metrics"]}
    sections = []
    for folder, title in [*papers.items(), ("", "Other outputs")]:
        files = [f for f in sorted(values) if paper_of(f, papers) == folder]
        rows = [
            {"file": f, "key": key, "anchor": f"lineage-{slug(f)}"}
            | (cells if baseline.commit else {"new": cells["new"]})
            for f in files
            for key, cells in sorted(diff.get(f, {}).items())
            if cells.get("new") is not None
        ]
        section = {
            "id": slug(folder) or "other",
            "title": title,
            "rows": rows,
            "pictures": [p for p in sorted(pictures) if paper_of(p, papers) == folder],
            "curves": [c for c in sorted(curves) if paper_of(c, papers) == folder],
            "tables": [t for t in sorted(tables) if paper_of(t, papers) == folder],
            "lineage": [
                {"file": f, "anchor": f"lineage-{slug(f)}", **trees[f]} for f in files if f in trees
            ],
        }
        if rows or section["pictures"] or section["curves"] or section["tables"]:
            sections.append(section)
    return {
        "current": audit["current"],
        "baseline": baseline.commit,
        "sections": sections,
        "pictures": dict(pictures),
        "curves": dict(curves),
        "tables": dict(tables),
    }


def _status(page: Mapping[str, Any]) -> str:
    return (
        "every number below is current: its inputs, params, code and models match dvc.lock"
        if page["current"]
        else "**STALE**: some numbers below no longer match their inputs (see their lineage)"
    )


def _baseline(page: Mapping[str, Any]) -> str:
    commit = page["baseline"]
    return (
        f"changes are against commit `{commit[:12]}`, the newest whose metrics differ"
        if commit
        else "no earlier commit has different metrics, so no changes are shown"
    )


def to_markdown(page: Mapping[str, Any], relative_to: str) -> str:
    """The Markdown twin: the same tables and trees; pictures linked (relative to the page)."""
    up = Path(relative_to).parent
    lines = [
        "# Pipeline report",
        "",
        f"Written by the `report` stage. Status: {_status(page)}; {_baseline(page)}",
        "(`dvc metrics diff` semantics). Each value links to its lineage, metric first.",
        "",
    ]
    for s in page["sections"]:
        lines += [f"## {s['title']}", "", "| metrics file | metric | value | before | change |"]
        lines.append("|---|---|--:|--:|--:|")
        lines += [
            f"| {r['file']} | {r['key']} | [{number(r['new'])}](#{r['anchor']}) | "
            f"{'' if r.get('old') is None else number(r['old'])} | {change(r)} |"
            for r in s["rows"]
        ]
        lines.append("")
        for name in s["tables"]:
            header, rows = page["tables"][name]
            lines += [f"`{name}`:", "", "| " + " | ".join(header) + " |"]
            lines.append("|---" + "|--:" * (len(header) - 1) + "|")
            lines += ["| " + " | ".join(row) + " |" for row in rows] + [""]
        for picture in s["pictures"]:
            lines += [f"![{picture}]({_relative(picture, up)})", ""]
        if s["curves"]:
            lines += ["Training curves (drawn in the HTML page): "]
            lines += [f"[{c}]({_relative(c, up)})" for c in s["curves"]] + [""]
        for item in s["lineage"]:
            lines += [f'<a id="{item["anchor"]}"></a>', "", f"### Lineage of `{item['file']}`", ""]
            lines += [*tree_markdown(item["tree"]), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _relative(path: str, folder: Path) -> str:
    try:
        return Path(path).relative_to(folder).as_posix()
    except ValueError:
        return "../" * len(folder.parts) + path


STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:2px 8px}
td.n{text-align:right;font-variant-numeric:tabular-nums}th{background:#f3f3f3}
figure{display:inline-block;margin:.5em;vertical-align:top}figure img{max-width:520px}
figcaption,.curve text{font-size:12px;color:#555}code{font-size:90%}
details{margin:.3em 0}details ul{margin:.2em 0}summary{cursor:pointer}.stale{color:#b00}
.curve{display:inline-block;margin:.3em}.up{color:#070}.down{color:#b00}
"""

OPEN_TARGET = """
function openTarget(){const el=document.getElementById(location.hash.slice(1));
if(el&&el.tagName==="DETAILS"){el.open=true;el.scrollIntoView();}}
addEventListener("hashchange",openTarget);openTarget();
"""


def inline_markdown(text: str) -> str:
    """Our tree lines' Markdown (`code`, **bold**) as HTML."""
    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]*)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]*)\*\*", r'<strong class="stale">\1</strong>', text)


def list_html(lines: list[str]) -> str:
    """Nested Markdown bullets ("  " per level) as nested <ul>."""
    out, depth = [], -1
    for line in lines:
        level = (len(line) - len(line.lstrip(" "))) // 2
        item = inline_markdown(line.strip()[2:])
        if level > depth:
            out.append("<ul>" * (level - depth))
        else:
            out.append("</li>" + "</ul></li>" * (depth - level))
        out.append(f"<li>{item}")
        depth = level
    out.append("</li>" + "</ul></li>" * depth + "</ul>" if lines else "")
    return "".join(out)


def curve_svg(name: str, header: list[str], columns: list[list[float]]) -> str:
    """One curve per value column, on shared axes: 360 x 180 px, no library."""
    width, height, pad = 360, 180, 34
    steps = columns[0]
    series = columns[1:]
    lo = min(min(c) for c in series)
    hi = max(max(c) for c in series)
    span_x = (max(steps) - min(steps)) or 1.0
    span_y = (hi - lo) or 1.0
    x = lambda s: pad + (s - min(steps)) / span_x * (width - pad - 8)  # noqa: E731
    y = lambda v: height - pad + 8 - (v - lo) / span_y * (height - pad - 8)  # noqa: E731
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    lines = [
        f'<polyline fill="none" stroke="{colours[i % 4]}" stroke-width="1.5" points="'
        + " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in zip(steps, column, strict=True))
        + '"/>'
        for i, column in enumerate(series)
    ]
    labels = [
        f'<text x="{pad}" y="12">{html.escape(name)}</text>',
        f'<text x="2" y="{y(hi) + 4:.0f}">{hi:.3g}</text>',
        f'<text x="2" y="{y(lo):.0f}">{lo:.3g}</text>',
        f'<text x="{pad}" y="{height - 4}">step {min(steps):g}</text>',
        f'<text x="{width - 70}" y="{height - 4}">{max(steps):g}</text>',
    ]
    if len(series) > 1:
        labels += [
            f'<text x="{width - 120}" y="{24 + 12 * i}" fill="{colours[i % 4]}">'
            f"{html.escape(h)}</text>"
            for i, h in enumerate(header[1:])
        ]
    axes = f'<path d="M{pad} 16V{height - pad + 8}H{width - 8}" stroke="#999" fill="none"/>'
    return (
        f'<svg class="curve" role="img" width="{width}" height="{height}" '
        f'xmlns="http://www.w3.org/2000/svg">{axes}{"".join(lines)}{"".join(labels)}</svg>'
    )


def to_html(page: Mapping[str, Any], relative_to: str) -> str:
    """The page; `relative_to` is its own path, for the links to the full-size pictures."""
    esc = html.escape
    up = Path(relative_to).parent
    body = [
        "<h1>Pipeline report</h1>",
        f"<p>Written by the <code>report</code> stage. Status: "
        f"{inline_markdown(_status(page))}; {inline_markdown(_baseline(page))} "
        "(<code>dvc metrics diff</code> semantics). Click a value to unfold its lineage.</p>",
        "<nav><ul>"
        + "".join(f'<li><a href="#{s["id"]}">{esc(s["title"])}</a></li>' for s in page["sections"])
        + "</ul></nav>",
    ]
    for s in page["sections"]:
        body.append(f'<section id="{s["id"]}"><h2>{esc(s["title"])}</h2>')
        body.append(
            "<table><tr><th>metrics file</th><th>metric</th><th>value</th><th>before</th>"
            "<th>change</th></tr>"
        )
        for r in s["rows"]:
            old = "" if r.get("old") is None else number(r["old"])
            body.append(
                f"<tr><td>{esc(r['file'])}</td><td>{esc(r['key'])}</td>"
                f'<td class="n"><a href="#{r["anchor"]}">{esc(number(r["new"]))}</a></td>'
                f'<td class="n">{esc(old)}</td><td class="n">{esc(change(r))}</td></tr>'
            )
        body.append("</table>")
        for name in s["tables"]:
            header, rows = page["tables"][name]
            body.append(f"<h3>{esc(name)}</h3><table><tr>")
            body += [f"<th>{esc(h)}</th>" for h in header]
            for row in rows:
                cells = [f"<td>{esc(row[0])}</td>"] + [
                    f'<td class="n">{esc(c)}</td>' for c in row[1:]
                ]
                body.append("</tr><tr>" + "".join(cells))
            body.append("</tr></table>")
        for picture in s["pictures"]:
            data = base64.b64encode(preview_png(page["pictures"][picture])).decode()
            body.append(
                f'<figure><a href="{esc(_relative(picture, up))}"><img alt="{esc(picture)}" '
                f'src="data:image/png;base64,{data}"></a>'
                f"<figcaption>{esc(picture)}</figcaption></figure>"
            )
        if s["curves"]:
            body.append("<h3>Training curves</h3><div>")
            body += [curve_svg(c, *page["curves"][c]) for c in s["curves"]]
            body.append("</div>")
        body.append("<h3>Lineage</h3>")
        for item in s["lineage"]:
            state = "" if item["current"] else ' <strong class="stale">STALE</strong>'
            body.append(
                f'<details id="{item["anchor"]}"><summary><code>{esc(item["file"])}</code>'
                f"{state}</summary>{list_html(tree_markdown(item['tree']))}</details>"
            )
        body.append("</section>")
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width"><title>Pipeline report</title>'
        f"<style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + f"\n<script>{OPEN_TARGET}</script>\n</body></html>\n"
    )
