"""dvc.yaml's deps are exactly the library modules each stage runs, and its data paths are pipeline.py's.

A module a stage imports (directly or through another module) but does not list is a silent stale cache: edit
it and DVC calls the stage up to date. A listed module the stage never imports reruns it for nothing. The
imports are read from the source (every ``import`` statement, function-level ones included), so the check
follows the code as it changes.
"""

import ast
import re
from pathlib import Path

import pytest
import yaml

from helpers import REPO
from simcaptcha import pipeline

PACKAGE = REPO / "src" / "simcaptcha"
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def imported_modules(source: str, inside_package: bool) -> set[str]:
    """Names of the simcaptcha modules one file imports (``from .x``, ``from simcaptcha.x``, ``from . import x``)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("simcaptcha.")}
        elif isinstance(node, ast.ImportFrom):
            relative = inside_package and node.level == 1
            if relative or node.module == "simcaptcha" or (node.module or "").startswith("simcaptcha."):
                base = node.module if relative else (node.module or "").removeprefix("simcaptcha").lstrip(".")
                names |= {base.split(".")[0]} if base else {alias.name for alias in node.names}
    return {name for name in names if (PACKAGE / f"{name}.py").exists()}


def transitive_modules(script: Path) -> set[str]:
    """Every library module a stage script runs: its imports, their imports, and so on."""
    seen: set[str] = set()
    todo = imported_modules(script.read_text(), inside_package=False)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo |= imported_modules((PACKAGE / f"{name}.py").read_text(), inside_package=True)
    return seen


def stage_script(stage: dict) -> Path:
    command = stage["do"]["cmd"] if "do" in stage else stage["cmd"]
    return REPO / re.search(r"stages/\w+\.py", command).group(0)


def stage_deps(stage: dict) -> list[str]:
    return (stage["do"] if "do" in stage else stage)["deps"]


def listed_modules(stage: dict) -> set[str]:
    return {Path(dep).stem for dep in stage_deps(stage) if re.fullmatch(r"src/simcaptcha/\w+\.py", dep)}


def test_imports_are_read_from_every_form_of_import_statement():
    source = ("import simcaptcha.store\nfrom simcaptcha.config import load_config\nfrom simcaptcha import mask\n"
              "from . import distributed\nfrom .models import Reader\nimport numpy\n")
    assert imported_modules(source, inside_package=True) == {"store", "config", "mask", "distributed", "models"}
    assert imported_modules(source, inside_package=False) == {"store", "config", "mask"}


def test_transitive_imports_follow_the_library():
    assert {"reading", "models", "distributed", "machine", "reader_training", "checkpoints", "augment",
            "metrics"} <= transitive_modules(REPO / "stages" / "self_train.py")


def test_the_package_marker_runs_no_library_code():
    """``__init__.py`` runs on every import, so a stage would depend on it too: it must import nothing."""
    assert not imported_modules((PACKAGE / "__init__.py").read_text(), inside_package=True)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_are_exactly_the_modules_it_runs(name):
    stage = STAGES[name]
    script = stage_script(stage)
    assert f"{script.relative_to(REPO)}" in stage_deps(stage), f"dvc.yaml stage {name}: its script is not a dep"
    wanted, listed = transitive_modules(script), listed_modules(stage)
    missing = sorted(f"src/simcaptcha/{module}.py" for module in wanted - listed)
    assert not missing, f"dvc.yaml stage {name}: deps lack {missing}"
    assert not listed - wanted, f"dvc.yaml stage {name}: deps list modules it never imports: {sorted(listed - wanted)}"


def test_fontdata_is_a_dep_wherever_fonts_are_read():
    for name, stage in STAGES.items():
        if "fonts" in transitive_modules(stage_script(stage)):
            assert "src/simcaptcha/fontdata" in stage_deps(stage), f"dvc.yaml stage {name}: deps lack fontdata"


# ---------------------------------------------------------------- artifact paths: written once
def pipeline_paths() -> set[str]:
    """Every artifact path pipeline.py names under data/ or metrics/."""
    values = [value for value in vars(pipeline).values() if isinstance(value, Path)]
    values += [value for value in pipeline.READER_DATA.values()]
    return {value.as_posix() for value in values if value.parts[0] in ("data", "metrics")}


def dvc_paths() -> set[str]:
    """Every data/ path a stage of dvc.yaml reads or writes, ${...} templates left as they are."""
    paths = set()
    for stage in STAGES.values():
        body = stage.get("do", stage)
        for entry in body.get("deps", []) + body.get("outs", []):
            path = entry if isinstance(entry, str) else next(iter(entry))
            if path.startswith("data/"):
                paths.add(path)
    return paths


def test_every_dvc_data_path_is_a_pipeline_path_or_inside_one():
    known = pipeline_paths()
    strays = {path for path in dvc_paths()
              if not any(path == known_path or path.startswith(known_path + "/") for known_path in known)}
    assert not strays, f"dvc.yaml names data paths pipeline.py does not: {sorted(strays)}"


def test_every_pipeline_data_path_is_in_dvc_yaml():
    declared = dvc_paths()
    data_paths = {path for path in pipeline_paths() if path.startswith("data/")}
    unused = {path for path in data_paths
              if not any(dvc == path or dvc.startswith(path + "/") for dvc in declared)}
    assert not unused, f"pipeline.py names data paths no dvc.yaml stage declares: {sorted(unused)}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_each_stage_writes_the_metrics_file_dvc_yaml_declares(name):
    """``stage_metrics("x")`` writes metrics/x.json: it must be the stage's declared metrics file."""
    body = STAGES[name].get("do", STAGES[name])
    declared = {next(iter(entry)) for entry in body.get("metrics", [])}
    written = {f"metrics/{match}.json" for match in
               re.findall(r'stage_metrics\(f?"([^"]+)"\)', stage_script(STAGES[name]).read_text())}
    name_argument = "${key}" if "do" in STAGES[name] else STAGES[name]["cmd"].split()[-1]  # train_classifier.py NAME
    written = {path.replace("{name}", name_argument) for path in written}
    assert written == declared, f"dvc.yaml stage {name}: declares {sorted(declared)}, writes {sorted(written)}"
