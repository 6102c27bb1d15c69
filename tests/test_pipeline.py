"""dvc.yaml, params.yaml and the package layout follow the project's conventions, every stage."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import json
import re
import typing
from dataclasses import MISSING
from pathlib import Path

import pytest
import yaml

from stages.common.closure import ROOT, import_closure, imported_modules
from stages.common.params import load_section

REPO = Path(__file__).resolve().parents[1]
assert REPO == ROOT
PIPELINE = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
COMMAND = re.compile(r"^python -m (stages(?:\.\w+)+)(\s|$)")
AREAS = ("gameplay", "lipspeech", "motionmnist", "mcn", "lineage")


def resolve(text: str) -> str:
    """dvc.yaml's `${section.key}` templates filled from params.yaml, as DVC does."""

    def value(match: re.Match) -> str:
        if match.group(1).startswith("item."):  # a matrix stage's variant: kept as written
            return match.group(0)
        node = PARAMS
        for key in match.group(1).split("."):
            node = node[key]
        return str(node)

    return re.sub(r"\$\{([\w.]+)\}", value, text)


def stage_modules() -> list[tuple[str, str]]:
    pairs = []
    for name, stage in PIPELINE.items():
        match = COMMAND.match(stage["cmd"])
        assert match, f"{name}: command should be `python -m stages.<area>.<module>`"
        module = match.group(1)
        if (REPO / module.replace(".", "/") / "__main__.py").is_file():
            module += ".__main__"
        pairs.append((name, module))
    return pairs


def entries(stage: dict, key: str) -> dict[str, dict]:
    """A dvc.yaml list of paths or {path: options} as {resolved path: options}."""
    out = {}
    for item in stage.get(key, []):
        pairs = item.items() if isinstance(item, dict) else [(item, None)]
        out.update({resolve(k): v or {} for k, v in pairs})
    return out


@pytest.mark.parametrize(("name", "module"), stage_modules())
def test_deps_list_exactly_the_import_closure(name, module):
    """A code change must re-run exactly the stages that import the changed file."""
    code = [p for p in entries(PIPELINE[name], "deps") if p.startswith("stages/")]
    closure = [p.relative_to(REPO).as_posix() for p in import_closure(module)]
    missing, extra = set(closure) - set(code), set(code) - set(closure)
    assert not missing and not extra, (
        f"{name}: deps should list the import closure of {module} "
        f"(missing {sorted(missing)}, not imported {sorted(extra)}); "
        f"`python -m stages.common.closure {module}` prints it"
    )


def test_closure_walk_catches_a_removed_dependency(tmp_path):
    """The check above is not vacuous: an import the deps do not list is found."""
    pkg = tmp_path / "stages" / "toy"
    pkg.mkdir(parents=True)
    (pkg / "stage.py").write_text("from stages.toy import helper\n")
    (pkg / "helper.py").write_text("def f():\n    from stages.toy.deep import g\n")
    (pkg / "deep.py").write_text("g = 1\n")
    closure = import_closure("stages.toy.stage", tmp_path)
    assert [p.name for p in closure] == ["stage.py", "deep.py", "helper.py"]


@pytest.mark.parametrize(("name", "module"), stage_modules())
def test_stage_declares_its_outputs_in_their_places(name, module):
    stage = PIPELINE[name]
    for key in ("outs", "metrics", "plots"):
        for path in entries(stage, key):
            assert path.startswith(("data/", "reports/", "models/", "checkpoints/")), (
                f"{name}: {key} {path} misplaced"
            )
    for key in ("metrics", "plots"):
        for path, options in entries(stage, key).items():
            assert options.get("cache") is False, f"{name}: {path} should be cache: false (in Git)"


@pytest.mark.parametrize(("name", "module"), stage_modules())
def test_params_section_parses_into_the_stage_params(name, module):
    if module.endswith(".__main__"):
        pytest.skip(f"{module} parses its own arguments")
    stage_module = importlib.import_module(module)
    if not hasattr(stage_module, "Params"):
        pytest.skip(f"{module} takes no params")
    load_section(stage_module.Params, name, REPO / "params.yaml")
    listed = PIPELINE[name].get("params", [])
    declared = {p if isinstance(p, str) else next(iter(p)) for p in listed}
    assert name in declared, f"{name}: its params section must be listed under params"


def test_no_output_is_declared_twice():
    seen: dict[str, str] = {}
    for name, stage in PIPELINE.items():
        for key in ("outs", "metrics", "plots"):
            for path in entries(stage, key):
                assert path not in seen, f"{path} declared by {seen.get(path)} and {name}"
                seen[path] = name


def python_files(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def test_areas_never_import_each_other_and_common_imports_no_area():
    for path in python_files("stages"):
        parts = path.relative_to(REPO / "stages").parts
        own = parts[0] if len(parts) > 1 else None
        for module in imported_modules(path):
            target = module.split(".")[1] if module.count(".") else None
            if target in AREAS:
                assert target == own, f"{path.relative_to(REPO)} imports area {target}"


def test_area_package_inits_hold_only_a_docstring():
    """Importing an area runs nothing; only `stages/__init__.py` acts (it pins CPU kernels)."""
    for path in python_files("stages"):
        if path.name == "__init__.py" and path.parent != REPO / "stages":
            body = ast.parse(path.read_text()).body
            docstring_only = all(
                isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body
            )
            assert docstring_only, f"{path.relative_to(REPO)} should hold only a docstring"


def test_no_module_holds_a_data_or_reports_path():
    """Paths are params fields, written once in params.yaml."""
    literal = re.compile(r"""["'](data|reports|models|checkpoints)/""")
    for path in python_files("stages"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            assert not literal.search(code), f"{path.relative_to(REPO)}:{number}: {line.strip()}"


def numbers(obj: object) -> int:
    if isinstance(obj, dict):
        return sum(numbers(v) for v in obj.values())
    if isinstance(obj, list):
        return sum(numbers(v) for v in obj)
    return int(isinstance(obj, int | float) and not isinstance(obj, bool))


def declared_metrics() -> list[str]:
    return sorted(path for stage in PIPELINE.values() for path in entries(stage, "metrics"))


@pytest.mark.parametrize("path", declared_metrics())
def test_metrics_files_hold_a_few_results_and_no_timings(path):
    """`dvc metrics show` stays one short row per stage; timings live in logs/, never in Git."""
    metrics = json.loads((REPO / path).read_text())
    assert 0 < numbers(metrics) <= 8, f"{path}: {numbers(metrics)} numbers; move stats beside it"
    flat = json.dumps(metrics)
    timing = re.search(r'"(seconds|\w*_per_second|elapsed\w*|wall\w*|workers)"', flat)
    assert not timing, f"{path} holds a timing, {timing and timing.group(1)}: the run log's job"


@pytest.mark.parametrize("name", sorted(PIPELINE))
def test_stats_are_outputs_beside_the_metrics_not_metrics(name):
    stage = PIPELINE[name]
    for path in entries(stage, "metrics"):
        assert not path.endswith(".stats.json"), f"{name}: {path} is descriptive, not a metric"
    for path, options in entries(stage, "outs").items():
        if path.endswith(".stats.json"):
            assert options.get("cache") is False, f"{name}: {path} belongs in Git (cache: false)"


@pytest.mark.parametrize(("name", "module"), stage_modules())
def test_params_dataclasses_carry_no_defaults(name, module):
    """A default lives once, in params.yaml: a code default could silently disagree with it."""
    if module.endswith(".__main__"):
        pytest.skip(f"{module} parses its own arguments")

    def defaults(cls: type, prefix: str) -> list[str]:
        found, hints = [], typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if field.default is not MISSING or field.default_factory is not MISSING:
                found.append(prefix + field.name)
            if dataclasses.is_dataclass(hints[field.name]):
                found += defaults(hints[field.name], f"{prefix}{field.name}.")
        return found

    assert defaults(importlib.import_module(module).Params, f"{name}.") == []


@pytest.mark.parametrize("name", sorted(PIPELINE))
def test_every_output_persists_so_a_failed_run_keeps_the_last_good_one(name):
    """DVC deletes non-persistent outputs before it runs a stage; ours replace them atomically."""
    stage = PIPELINE[name]
    for key in ("outs", "metrics", "plots"):
        for path, options in entries(stage, key).items():
            assert options.get("persist") is True, f"{name}: {path} needs persist: true"
