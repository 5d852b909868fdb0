"""dvc.yaml declares every param key a stage script reads by name, so changing it reruns that stage.

A key missing from a stage's ``params`` is a silent stale cache: DVC reports the stage up to date and keeps the
artifacts made with the old value. Checked here: each ``params.SECTION.KEY`` a stage script names must be
declared as ``SECTION`` or ``SECTION.KEY``. The label-budget grid is left out: one script serves three modes and
reads some keys (the fresh reader's widths) in one mode only.
"""

import re
from pathlib import Path

import pytest
import yaml

from helpers import REPO

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
SINGLE = {name: stage for name, stage in STAGES.items() if "foreach" not in stage and "matrix" not in stage}


def keys_read(script: Path) -> set[str]:
    """``SECTION.KEY`` for each ``params.SECTION.KEY`` in the script."""
    return set(re.findall(r"\bparams\.([a-z_]+\.[a-z_]+)\b", script.read_text()))


def test_the_check_sees_the_stages_and_their_keys():
    assert {"fetch", "train-gan", "refine", "self-train", "evaluate"} <= set(SINGLE)
    assert "classifier.precision" in keys_read(REPO / "stages" / "train_gan.py")


@pytest.mark.parametrize("name", sorted(SINGLE))
def test_every_param_key_a_stage_reads_is_declared(name):
    stage = SINGLE[name]
    script = REPO / re.search(r"stages/\w+\.py", stage["cmd"]).group(0)
    declared = set(stage.get("params", []))
    missing = {key for key in keys_read(script) if key not in declared and key.split(".")[0] not in declared}
    assert not missing, f"dvc.yaml stage {name}: params lacks {sorted(missing)} ({script.name} reads them)"


# ---------------------------------------------------------------- params.yaml and targets say only what they change
def declared_params() -> set[str]:
    """Every section or SECTION.KEY some stage of dvc.yaml declares or interpolates (``${selftrain.start}``)."""
    interpolated = {name for name in re.findall(r"\$\{([a-z_]+\.[a-z_]+)\}", (REPO / "dvc.yaml").read_text())
                    if not name.startswith("item.")}  # foreach / matrix items, not params
    return interpolated | {entry for stage in STAGES.values() for entry in stage.get("do", stage).get("params", [])}


def leaves(tree: dict, prefix: str = "") -> dict:
    """``{"a.b.c": value}`` for every non-mapping value of a nested mapping."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(leaves(value, f"{prefix}{key}."))
        elif not isinstance(value, dict):
            flat[f"{prefix}{key}"] = value
    return flat


def test_every_param_dvc_yaml_declares_is_in_params_yaml():
    """DVC refuses to run a stage whose declared param is missing from params.yaml."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for entry in declared_params():
        section, _, key = entry.partition(".")
        assert section in params and (not key or key in params[section]), f"params.yaml lacks {entry}"


def test_params_yaml_restates_no_default_but_the_keys_dvc_tracks_one_by_one():
    from dataclasses import asdict

    from simcaptcha.config import Config

    defaults = leaves(asdict(Config()))
    one_by_one = {entry for entry in declared_params() if "." in entry}
    restated = {key for key, value in leaves(yaml.safe_load((REPO / "params.yaml").read_text())).items()
                if defaults.get(key) == value and key not in one_by_one}
    assert not restated, f"params.yaml restates config.py's defaults: {sorted(restated)}"


@pytest.mark.parametrize("target", sorted((REPO / "targets").glob("*.yaml")), ids=lambda path: path.stem)
def test_a_target_file_names_only_what_it_changes(target):
    from dataclasses import asdict

    from simcaptcha.cli import _deep_merge
    from simcaptcha.config import Config, parse_section

    base = yaml.safe_load((REPO / "params.yaml").read_text())
    effective = leaves(asdict(parse_section(Config, base, "")))
    overrides = leaves(yaml.safe_load(target.read_text()) or {})
    parse_section(Config, _deep_merge(base, yaml.safe_load(target.read_text()) or {}), "")  # valid as a whole
    # fetch is exempt: a target names where its captchas and labels come from in full, whatever the default target
    unchanged = {key for key, value in overrides.items()
                 if effective.get(key) == value and not key.startswith("fetch.")}
    assert not unchanged, f"{target.name} sets what params.yaml already has: {sorted(unchanged)}"


@pytest.mark.parametrize("path", ["params.yaml", "dvc.yaml",
                                  *sorted(f"targets/{p.name}" for p in (REPO / "targets").glob("*.yaml"))])
def test_configuration_holds_no_commit_hash(path):
    hashes = re.findall(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b", (REPO / path).read_text())
    assert not hashes, f"{path} quotes commit hashes {hashes}: history goes to docs/experiments.md"
