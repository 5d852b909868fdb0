"""Sweep: self-training variants side by side on a target's clone, one process per core (a GPU makes it quick).

Usage (after python benchmarks/run_target.py TARGET has run it in .cache/targets/NAME):
    python benchmarks/selftrain_sweep.py targets/hackmit2017.yaml VARIANTS [--name NAME] [--jobs N]
VARIANTS: a file, one variant a line: ``LABEL key=value ...`` with dotted params keys (``selftrain.rounds=16``);
``#`` starts a comment. Each variant copies the clone's inputs to self-train (binarized pools, augmented set,
readers, mask) and its params, applies its keys, retrains the synthetic reader when a ``classifier.`` key
changed, self-trains, and reads the labelled set with both readers. Real labels are only used to score.
The table goes to metrics/targets/NAME/selftrain-sweep.csv (best self-trained first) and is printed.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import yaml

from simcaptcha.cli import _deep_merge
from simcaptcha.machine import available_cores
from simcaptcha.store import write_csv

from ablation import EVALUATE_READER  # benchmarks/ is on sys.path when run as a script
from run_target import clone_env

ROOT = Path.cwd()
INPUTS = ["params.yaml", "data/binarized/labelled", "data/binarized/unlabelled", "data/augmented/anchors",
          "data/models", "data/mask"]


def parse_variants(path: Path) -> list[tuple[str, dict]]:
    """``LABEL key=value ...`` lines -> (label, {dotted key: YAML value})."""
    variants = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        label, *pairs = words
        if any("=" not in pair for pair in pairs):
            sys.exit(f"error: {path}:{number}: expected LABEL key=value ..., got {line.strip()!r}")
        variants.append((label, {key: yaml.safe_load(value) for key, value in (p.split("=", 1) for p in pairs)}))
    if not variants:
        sys.exit(f"error: {path}: no variant")
    return variants


def run_variant(clone: Path, label: str, overrides: dict, core: int, scratch: Path) -> dict:
    """Self-train one variant in its own copy of the clone's inputs, pinned to one core; its figures."""
    work = scratch / label
    for item in INPUTS:
        source, destination = clone / item, work / item
        if source.is_dir():
            shutil.copytree(source, destination)
        elif source.exists():
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    params = yaml.safe_load((work / "params.yaml").read_text())
    for key, value in overrides.items():  # selftrain.rounds=16 -> {"selftrain": {"rounds": 16}}
        for part in reversed(key.split(".")):
            value = {part: value}
        params = _deep_merge(params, value)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    env = dict(clone_env(clone), OMP_NUM_THREADS="1")
    stages = [["train_classifier.py", "synthetic"]] if any(k.startswith("classifier.") for k in overrides) else []
    log = (work / "run.log").open("w")
    for stage in stages + [["self_train.py"]]:
        subprocess.run([sys.executable, str(clone / "stages" / stage[0]), *stage[1:]], cwd=work, env=env, check=True,
                       stdout=log, stderr=subprocess.STDOUT, preexec_fn=lambda: os.sched_setaffinity(0, {core}))
    row = {"variant": label, "overrides": " ".join(f"{k}={json.dumps(v)}" for k, v in overrides.items())}
    for reader in ("synthetic", "selftrained"):
        figures = json.loads(subprocess.run([sys.executable, "-c", EVALUATE_READER, reader], cwd=work, env=env,
                                            check=True, capture_output=True, text=True).stdout)
        row |= {f"{reader}_char": figures["char_accuracy"], f"{reader}_whole": figures["captcha_accuracy"],
                f"{reader}_real_labels_used": figures["real_labels_used"]}
    row["seconds"] = json.loads((work / "metrics" / "self-train.json").read_text())["seconds"]
    print(f"{label}: synthetic {row['synthetic_char']:.1%} / {row['synthetic_whole']:.1%}, "
          f"self-trained {row['selftrained_char']:.1%} / {row['selftrained_whole']:.1%}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target")
    parser.add_argument("variants", type=Path)
    parser.add_argument("--name")
    parser.add_argument("--jobs", type=int, default=available_cores())
    args = parser.parse_args()
    name = args.name or Path(args.target).stem
    clone = ROOT / ".cache" / "targets" / name / "main"
    if not (clone / "data" / "models" / "synthetic.safetensors").exists():
        sys.exit(f"error: {clone}: no trained synthetic reader; run python benchmarks/run_target.py {args.target}")
    variants = parse_variants(args.variants)
    cores = sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as scratch, ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda item: run_variant(clone, *item[1], cores[item[0] % len(cores)], Path(scratch)),
                             enumerate(variants)))
    table = pd.DataFrame(rows).sort_values("selftrained_char", ascending=False, kind="stable")
    write_csv(ROOT / "metrics" / "targets" / name / "selftrain-sweep.csv", table)
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
