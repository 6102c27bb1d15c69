"""dvc.yaml and params.yaml follow the project's conventions, for every stage that exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml

from stages.common.params import load_section

REPO = Path(__file__).resolve().parents[1]
PIPELINE = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
COMMAND = re.compile(r"^python -m stages\.(\w+)(\s|$)")


def stage_modules() -> list[tuple[str, str]]:
    pairs = []
    for name, stage in PIPELINE.items():
        match = COMMAND.match(stage["cmd"])
        assert match, f"{name}: command should be `python -m stages.<module>`, got {stage['cmd']!r}"
        pairs.append((name, match.group(1)))
    return pairs


def entries(stage: dict, key: str) -> dict[str, dict]:
    """A dvc.yaml list of paths or {path: options} as {path: options}."""
    out = {}
    for item in stage.get(key, []):
        out.update({k: v or {} for k, v in item.items()} if isinstance(item, dict) else {item: {}})
    return out


@pytest.mark.parametrize(("name", "module"), stage_modules())
def test_stage_depends_on_its_code_and_declares_its_outputs(name, module):
    stage = PIPELINE[name]
    deps = set(stage.get("deps", []))
    assert f"stages/{module}.py" in deps, f"{name}: its module must be a dependency"
    assert "stages/common" in deps, f"{name}: the shared package must be a dependency"
    for key in ("outs", "metrics", "plots"):
        for path in entries(stage, key):
            assert path.startswith(("data/", "reports/")), f"{name}: {key} {path} misplaced"
    for key in ("metrics", "plots"):
        for path, options in entries(stage, key).items():
            assert options.get("cache") is False, f"{name}: {path} should be cache: false (in Git)"


@pytest.mark.parametrize(("name", "module"), stage_modules())
def test_params_section_parses_into_the_stage_params(name, module):
    stage_module = importlib.import_module(f"stages.{module}")
    if not hasattr(stage_module, "Params"):
        pytest.skip(f"stages.{module} takes no params")
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
