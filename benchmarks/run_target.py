"""Run the whole pipeline on a target in a scratch clone and keep its figures here, under metrics/targets/NAME/.

Usage (from the repository root, ../shared beside it for the bundled targets):
    python benchmarks/run_target.py targets/hackmit2017.yaml [STAGE ...] [--name hackmit2017]
STAGE: run only up to these stages (e.g. evaluate: the zero-label figures without the label-budget grid);
only the figures that run wrote are kept.
The clone (a git clone of HEAD with ../shared linked beside it) stays in .cache/targets/NAME, so its models
can be used afterwards: simcaptcha predict --model .cache/targets/NAME/data/models/refined.safetensors ...
The workspace's own params, lock file and metrics are not touched.
run.json records when and where the run was made (date, the clone's commit, CPU model, cores) beside its wall
time, so benchmarks/results_report.py can put every figure in docs/results.md beside its machine.
"""

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from simcaptcha.machine import available_cores, cpu_model
from simcaptcha.store import write_json

ROOT = Path.cwd()


def target_arguments(description: str, stages: bool = False) -> tuple[argparse.Namespace, str]:
    """``TARGET [STAGE ...] [--name NAME]``; the name defaults to the target file's stem."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("target")
    if stages:
        parser.add_argument("stages", nargs="*", help="run only up to these stages (default: all)")
    parser.add_argument("--name")
    args = parser.parse_args()
    return args, args.name or Path(args.target).stem


def clone_env(work: Path) -> dict:
    """The environment for commands in a clone: its own library first, not the editable install's."""
    return dict(os.environ, PYTHONPATH=str(work / "src"))


def commit_of(clone: Path) -> str:
    """The commit the clone ran at (git rev-parse HEAD)."""
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True,
                          check=True).stdout.strip()


def run_record(target: str, stages: list[str], seconds: float, models: str, commit: str) -> dict:
    """run.json: what ran, how long, and when and where (date, commit, CPU model, cores)."""
    return {"target": target, "stages": stages or "all", "seconds": seconds, "models": models,
            "date": datetime.date.today().isoformat(), "commit": commit, "cpu": cpu_model(),
            "cores": available_cores()}


def main() -> None:
    args, name = target_arguments(__doc__.splitlines()[0], stages=True)
    clone = ROOT / ".cache" / "targets" / name
    shutil.rmtree(clone.parent / name, ignore_errors=True)
    clone.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone / "main")], check=True)
    shared = ROOT.parent / "shared"
    if shared.exists():
        (clone / "shared").symlink_to(shared.resolve())
    work = clone / "main"
    commit = commit_of(work)  # before the run: an experiment run leaves HEAD alone, but say what was cloned
    began = time.time()
    start = time.perf_counter()
    code = subprocess.call(["simcaptcha", "target", str((ROOT / args.target).resolve()), *args.stages,
                            "--name", name], cwd=work, env=clone_env(work))
    seconds = round(time.perf_counter() - start, 1)
    if code != 0:
        sys.exit(code)
    out = ROOT / "metrics" / "targets" / name
    out.mkdir(parents=True, exist_ok=True)  # files of other benchmarks on this target (ddddocr, ablation) stay

    def written(path: Path) -> bool:  # by this run: the clone also holds the default target's committed figures
        return path.exists() and path.stat().st_mtime >= began

    for path in sorted((work / "metrics").glob("*.json")):
        if not path.name.startswith("bench-") and written(path):  # benchmarks are the workspace's
            shutil.copy(path, out / path.name)
    for figure in ("label-budget.csv", "images/label-budget.png"):  # the label-budget table and chart
        if written(work / "metrics" / figure):
            shutil.copy(work / "metrics" / figure, out / Path(figure).name)
    write_json(out / "run.json", run_record(args.target, args.stages, seconds,
                                            str((work / "data" / "models").relative_to(ROOT)), commit))
    print(f"{name}: {' '.join(args.stages) or 'whole pipeline'} in {seconds} s; figures in {out.relative_to(ROOT)}")
    print((out / "evaluate.json").read_text())


if __name__ == "__main__":
    main()
