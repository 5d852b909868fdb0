"""Ablation: what each step adds, on one target, same data and seed: synthetic only / + augmentation /
+ refiner / + label-consistency / + self-training, per character and whole captcha, 0 real labels.

Usage (after python benchmarks/run_target.py TARGET has run it in .cache/targets/NAME):
    python benchmarks/ablation.py targets/hackmit2017.yaml [--name hackmit2017]
Rows 2, 4 and 5 are the target run's own readers (synthetic, refined with gan.consistency, selftrained).
Rows 1 and 3 are two extra experiments in the same clone, run only as far as they need:
    synthetic only:  augment.enabled=false (rendered images, no augmentation offline or on the fly)
    + refiner:       gan.consistency=0 (SimGAN with self-regularisation only)
The table goes to metrics/targets/NAME/ablation.json and is printed as Markdown.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from simcaptcha.cli import _deep_merge
from simcaptcha.config import read_yaml
from simcaptcha.store import write_json

from run_target import clone_env, target_arguments  # benchmarks/ is on sys.path when run as a script

ROOT = Path.cwd()
EVALUATE_READER = """
import json, sys
from simcaptcha.metrics import accuracy_figures
from simcaptcha.modelfile import load_reader
from simcaptcha.store import read_image_set
from simcaptcha.reading import read_images
labelled = read_image_set("data/binarized/labelled")
model, spec, _ = load_reader(f"data/models/{sys.argv[1]}.safetensors")
texts, _ = read_images(model, spec.coder(), labelled.images)
print(json.dumps({**accuracy_figures(texts, labelled.labels), "real_labels_used": len(spec.trained_on_real)}))
"""
EXTRA = {  # row -> (params on top of the target, stage to run up to, reader to evaluate)
    "synthetic only": ({"augment": {"enabled": False}}, "train-classifier@synthetic", "synthetic"),
    "+ refiner": ({"gan": {"consistency": 0.0}}, "train-classifier-refined", "refined"),
}
FROM_RUN = {"+ augmentation": "synthetic", "+ label-consistency": "refined", "+ self-training": "selftrained"}
ORDER = ["synthetic only", "+ augmentation", "+ refiner", "+ label-consistency", "+ self-training"]


def run_variant(work: Path, target: Path, overrides: dict, stage: str, reader: str) -> dict:
    """Run one variant up to ``stage`` in the clone (DVC restores unchanged stages from its run-cache)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as file:
        yaml.safe_dump(_deep_merge(read_yaml(target) or {}, overrides), file)
    env = clone_env(work)
    subprocess.run(["simcaptcha", "target", file.name, stage], cwd=work, check=True, env=env)
    Path(file.name).unlink()
    output = subprocess.run([sys.executable, "-c", EVALUATE_READER, reader], cwd=work, check=True,
                            capture_output=True, text=True, env=env).stdout
    return json.loads(output)


def main() -> None:
    args, name = target_arguments(__doc__.splitlines()[0])
    work = ROOT / ".cache" / "targets" / name / "main"
    evaluated = work / "metrics" / "evaluate.json"
    if not evaluated.exists():
        sys.exit(f"error: {evaluated}: missing; run python benchmarks/run_target.py {args.target} first")
    figures = json.loads(evaluated.read_text())
    rows = {row: figures[reader] for row, reader in FROM_RUN.items()}
    target = (ROOT / args.target).resolve()
    for row, (overrides, stage, reader) in EXTRA.items():
        rows[row] = run_variant(work, target, overrides, stage, reader)
    # as it was, up to evaluate: the whole target would also run a label-budget grid the target run may have left
    # out (Kaggle's 54 points: 37 min)
    subprocess.run(["simcaptcha", "target", str(target), "evaluate"], cwd=work, check=True, env=clone_env(work))
    table = [{"step": row, "char_accuracy": rows[row]["char_accuracy"],
              "captcha_accuracy": rows[row]["captcha_accuracy"], "count": rows[row]["count"],
              "real_labels_used": rows[row]["real_labels_used"]} for row in ORDER]
    write_json(ROOT / "metrics" / "targets" / name / "ablation.json", {"target": args.target, "rows": table})
    print(f"| {name} | per character | whole captcha | real labels |\n|---|---|---|---|")
    for entry in table:
        print(f"| {entry['step']} | {entry['char_accuracy']:.1%} | {entry['captcha_accuracy']:.1%} | "
              f"{entry['real_labels_used']} |")


if __name__ == "__main__":
    main()
