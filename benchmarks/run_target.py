"""Run the whole pipeline on a target in a scratch clone and keep its figures here, under metrics/targets/NAME/.

Usage (from the repository root, ../shared beside it for the bundled targets):
    python benchmarks/run_target.py targets/hackmit2017.yaml [--name hackmit2017]
The clone (a git clone of HEAD with ../shared linked beside it) stays in .cache/targets/NAME, so its models
can be used afterwards: simcaptcha predict --model .cache/targets/NAME/data/models/refined.safetensors ...
The workspace's own params, lock file and metrics are not touched.
"""

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from simcaptcha.store import write_json

ROOT = Path.cwd()


def target_arguments(description: str) -> tuple[argparse.Namespace, str]:
    """``TARGET [--name NAME]``; the name defaults to the target file's stem."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("target")
    parser.add_argument("--name")
    args = parser.parse_args()
    return args, args.name or Path(args.target).stem


def clone_env(work: Path) -> dict:
    """The environment for commands in a clone: its own library first, not the editable install's."""
    return dict(os.environ, PYTHONPATH=str(work / "src"))


def main() -> None:
    args, name = target_arguments(__doc__.splitlines()[0])
    clone = ROOT / ".cache" / "targets" / name
    shutil.rmtree(clone.parent / name, ignore_errors=True)
    clone.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone / "main")], check=True)
    shared = ROOT.parent / "shared"
    if shared.exists():
        (clone / "shared").symlink_to(shared.resolve())
    work = clone / "main"
    start = time.perf_counter()
    code = subprocess.call(["simcaptcha", "target", str((ROOT / args.target).resolve()), "--name", name], cwd=work,
                           env=clone_env(work))
    seconds = round(time.perf_counter() - start, 1)
    if code != 0:
        sys.exit(code)
    out = ROOT / "metrics" / "targets" / name
    out.mkdir(parents=True, exist_ok=True)  # files of other benchmarks on this target (ddddocr, ablation) stay
    for path in sorted((work / "metrics").glob("*.json")):
        if not path.name.startswith("bench-"):  # benchmarks are the workspace's, not this run's
            shutil.copy(path, out / path.name)
    for name in ("label-budget.csv", "images/label-budget.png"):  # the label-budget table and chart
        if (work / "metrics" / name).exists():
            shutil.copy(work / "metrics" / name, out / Path(name).name)
    write_json(out / "run.json", {"target": args.target, "seconds": seconds,
                                  "models": str((work / "data" / "models").relative_to(ROOT))})
    print(f"{name}: whole pipeline in {seconds} s; figures in {out.relative_to(ROOT)}")
    print((out / "evaluate.json").read_text())


if __name__ == "__main__":
    main()
