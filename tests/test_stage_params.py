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

REPO = Path(__file__).resolve().parents[1]
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
