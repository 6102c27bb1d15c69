"""The lineage of a metrics file as one tree: metric -> stage -> model or data -> ... -> source.

`audit_file` lists every stage of a chain with every dependency (the full record); this is the
view a researcher reads first. Each stage node names its own code module, its parameter values and
its inputs; an input is a *model* (a file with a training record, see `models.py`), *data* made by
another stage, or *raw* data no stage makes (tracked by `dvc add` or not). A stage with no stage
upstream is the chain's *source*: it reads raw data, or, for the embedded stand-ins, synthesises
its output from its code and parameters alone. A stage reached twice (a diamond) is written out
the first time and referred to after that.

Everything here is pure: a `Pipeline`, the model descriptions and the set of `dvc add`ed paths in,
JSON-able dicts out, rendered to markdown or HTML by the callers.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from stages.lineage.graph import OK, Pipeline, StageRecord, overlaps, producers

CODE_SUFFIX = ".py"


def is_code(pipeline: Pipeline, path: str) -> bool:
    """A source file no stage writes: the project's code, tracked by Git."""
    return path.endswith(CODE_SUFFIX) and not producers(pipeline, path)


def is_path(value: Any, record: StageRecord) -> bool:
    """Whether a parameter value is one of the stage's own paths (shown as its inputs and
    outputs already, so the parameter list keeps to the values that shape the result)."""
    return isinstance(value, str) and any(
        overlaps(value.rstrip("/"), e.path) for e in (*record.deps, *record.outs)
    )


def stage_tree(
    pipeline: Pipeline,
    name: str,
    models: Mapping[str, dict[str, Any]],
    added: Collection[str],
    seen: set[str] | None = None,
) -> dict[str, Any]:
    """The node of stage `name` with everything upstream of it (see the module docstring)."""
    seen = set() if seen is None else seen
    if name in seen:
        return {"kind": "stage", "name": name, "seen": True}
    seen.add(name)
    record = pipeline.stages[name]
    code = [e.path for e in record.deps if is_code(pipeline, e.path)]
    inputs = []
    for dep in record.deps:
        if dep.path in code:
            continue
        made_by = [p for p in producers(pipeline, dep.path) if p != name]
        in_dep = [models[m] for m in sorted(models) if overlaps(m, dep.path)]
        kind = "model" if in_dep else ("data" if made_by else "raw")
        node: dict[str, Any] = {
            "kind": kind,
            "path": dep.path,
            "md5": dep.md5,
            "nfiles": dep.nfiles,
            "status": dep.status,
            "from": [stage_tree(pipeline, p, models, added, seen) for p in made_by],
        }
        if in_dep:
            node["models"] = in_dep
        if kind == "raw":
            node["dvc_added"] = any(overlaps(a, dep.path) for a in added)
        inputs.append(node)
    return {
        "kind": "stage",
        "name": name,
        "cmd": record.cmd,
        "changes": record.changes(),
        "code": code,
        "params": {p.key: p.value for p in record.params if not is_path(p.value, record)},
        "source": not any(i["from"] for i in inputs),
        "inputs": inputs,
    }


def metric_tree(
    pipeline: Pipeline,
    metrics_file: str,
    stage: str,
    models: Mapping[str, dict[str, Any]],
    added: Collection[str],
) -> dict[str, Any]:
    tree = stage_tree(pipeline, stage, models, added)
    return {"kind": "metric", "path": metrics_file, "stage": tree, "stale": stale_links(tree)}


def stale_links(node: Mapping[str, Any]) -> list[str]:
    """Every link of the tree that is not current, one phrase each (empty: all current): the
    stages' own changes (their deps, params, outputs) and the models' disagreements."""
    found = []
    if node["kind"] == "metric":
        return stale_links(node["stage"])
    if node["kind"] == "stage":
        found += [f"{node['name']}: {c}" for c in node.get("changes", [])]
        for child in node.get("inputs", []):
            found += stale_links(child)
        return found
    for model in node.get("models", []):
        found += [f"{model['path']}: {p}" for p in model["problems"]]
    for upstream in node["from"]:
        found += stale_links(upstream)
    return found


# --- markdown --------------------------------------------------------------------------------


def _short(md5: str | None) -> str:
    return f"`{md5[:8]}…{'.dir' if md5.endswith('.dir') else ''}`" if md5 else "(not locked)"


def _params(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def model_line(model: Mapping[str, Any]) -> str:
    where = " ".join(x for x in (model.get("device"), model.get("precision")) if x)
    verdict = (
        "record agrees with dvc.lock and today's code"
        if not model["problems"]
        else "**STALE**: " + "; ".join(model["problems"])
    )
    return (
        f"`{model['path']}`: step {model['step']}, code `{model['code'][:12]}`"
        f"{f', {where}' if where else ''}; {verdict}"
    )


def tree_markdown(node: Mapping[str, Any], depth: int = 0) -> list[str]:
    pad = "  " * depth
    if node["kind"] == "metric":
        return tree_markdown(node["stage"], depth)
    if node["kind"] == "stage":
        if node.get("seen"):
            return [f"{pad}- stage `{node['name']}` (see above)"]
        state = "current" if not node["changes"] else "**STALE**: " + "; ".join(node["changes"])
        lines = [f"{pad}- stage `{node['name']}`: {state}; {code_phrase(node)}"]
        if node["params"]:
            lines.append(f"{pad}  - params: {_params(node['params'])}")
        if node["source"]:
            what = (
                "reads raw data"
                if any(i["kind"] == "raw" for i in node["inputs"])
                else "no data inputs: its output comes from its code, params and packages"
            )
            lines.append(f"{pad}  - source of the chain: {what}")
        for child in node["inputs"]:
            lines += tree_markdown(child, depth + 1)
        return lines
    state = "" if node["status"] == OK else f" **{node['status'].upper()}**"
    files = f" ({_files(node['nfiles'])})" if node["nfiles"] else ""
    extra = ""
    if node["kind"] == "raw":
        extra = " — added with `dvc add`" if node["dvc_added"] else " — not produced by any stage"
    head = f"{pad}- {node['kind']} `{node['path']}` {_short(node['md5'])}{files}{state}{extra}"
    models = node.get("models", [])
    if [m["path"] for m in models] == [node["path"]]:  # the dep is one model file: one line
        lines = [f"{head}: {model_line(models[0]).split(': ', 1)[1]}"]
    else:
        lines = [head] + [f"{pad}  - model {model_line(m)}" for m in models]
    for upstream in node["from"]:
        lines += tree_markdown(upstream, depth + 1)
    return lines


def code_phrase(node: Mapping[str, Any]) -> str:
    """ "code `stages/a/b.py` + 12 files": the module the stage runs, and its import closure."""
    modules = {c: c.removesuffix(CODE_SUFFIX).replace("/", ".") for c in node["code"]}
    own = [c for c, m in modules.items() if f"-m {m} " in f"{node['cmd']} "]
    if not own:
        return f"code: {_files(len(node['code']))}"
    return f"code `{own[0]}` + {_files(len(node['code']) - 1)}"


def _files(count: int) -> str:
    return f"{count} file{'' if count == 1 else 's'}"
