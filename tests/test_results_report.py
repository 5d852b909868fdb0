"""benchmarks/results_report.py: README's results table and docs/ are what the committed metrics say.

The first test runs the script's --check on this repository (a stale README or docs/results.md fails it); the
others run it on a small metrics tree whose figures are known, and compare the generated rows to the letter.
"""

import ast
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "results_report.py"
LOADER = importlib.util.spec_from_file_location("results_report", SCRIPT)
report = importlib.util.module_from_spec(LOADER)
LOADER.loader.exec_module(report)

STAGE_FILES = ["fetch", "binarize", "mask", "estimate", "render-fonts", "augment", "train-classifier-synthetic",
               "train-classifier-glyphs", "train-gan", "refine", "train-classifier-refined", "self-train", "evaluate"]


def test_the_committed_readme_and_docs_match_the_committed_metrics():
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def reader(char: float, captcha: float, count: int = 300) -> dict:
    return {"char_accuracy": char, "captcha_accuracy": captcha, "count": count, "real_labels_used": 0}


def evaluate(selftrained: tuple, count: int = 300) -> dict:
    return {"selftrained": reader(*selftrained, count), "refined": reader(0.8125, 0.5, count),
            "synthetic": reader(0.86, 0.6, count), "letters": reader(0.66417, 0.23667, count), "seconds": 1.0}


def write(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


def budget_point(char: float, captcha: float, std: float = 0.0, seeds: int = 1) -> dict:
    return {"char_accuracy": char, "captcha_accuracy": captcha, "char_accuracy_std": std,
            "captcha_accuracy_std": 0.0, "real_labels_used": 0, "seeds": seeds}


@pytest.fixture
def tree(tmp_path):
    """A repository in miniature: the default run's metrics, one current target, one kept experiment (whose
    ablation.json is a copy of the target's), a README and a doc with generated blocks."""
    metrics = tmp_path / "metrics"
    write(metrics / "evaluate.json", evaluate((0.9125, 0.71)))
    write(metrics / "fetch.json", {"unlabelled": {"images": 3000}, "labelled": {"images": 300}, "seconds": 0.5})
    for index, name in enumerate(STAGE_FILES[1:-1], start=1):
        write(metrics / f"{name}.json", {"seconds": 10.0 * index})  # 10 + 20 + ... + 110 = 660
    write(metrics / "label-budget.json", {
        "points": {"real only": {"0": budget_point(0.0, 0.0), "10": budget_point(0.0375, 0.0)},
                   "real + synthetic": {"0": budget_point(0.8625, 0.57857), "10": budget_point(0.82857, 0.51429)},
                   "real + refined": {"0": budget_point(0.8125, 0.44286), "10": budget_point(0.78036, 0.35714)}},
        "seeds": [0], "steps": 200, "test_size": 140})
    kaggle = metrics / "targets" / "kaggle"
    write(kaggle / "run.json", {"target": "targets/kaggle.yaml", "stages": ["evaluate"], "seconds": 1439.0,
                                "date": "2026-12-06", "commit": "0" * 40, "cpu": "Test CPU 9000", "cores": 2})
    write(kaggle / "evaluate.json", evaluate((0.98654, 0.95), 1040))
    write(kaggle / "fetch.json", {"unlabelled": {"images": 1040}, "labelled": {"images": 1040}, "seconds": 1.13})
    write(kaggle / "self-train.json", {"seconds": 445.09})
    ablation = {"rows": [{**reader(0.31154, 0.04231, 1040), "step": "synthetic only"},
                         {**reader(0.97, 0.9, 1040), "step": "+ self-training"}]}
    write(kaggle / "ablation.json", ablation)
    seed = metrics / "targets" / "kaggle-seed9"
    write(seed / "run.json", {"target": "targets/kaggle.yaml with classifier.seed: 9", "stages": ["evaluate"],
                              "seconds": 59.5})
    write(seed / "evaluate.json", evaluate((0.5, 0.25), 1040))
    write(seed / "ablation.json", ablation)
    (tmp_path / "README.md").write_text("# Title\n\n<!-- results:default:begin -->\nold\n<!-- results:default:end -->"
                                        "\n\n<!-- results:begin -->\n<!-- results:end -->\n\nafter\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "label-budget.md").write_text(
        "# LB\n\n<!-- results:label-budget:default:begin -->\n<!-- results:label-budget:default:end -->\n"
        "<!-- results:ablation:kaggle:begin -->\n<!-- results:ablation:kaggle:end -->\n")
    return tmp_path


def run(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True)


def test_the_readme_table_has_one_row_per_run_with_the_figures_of_its_files(tree):
    assert run("--root", str(tree), "--check").returncode == 1
    assert run("--root", str(tree)).returncode == 0
    readme = (tree / "README.md").read_text()
    rows = readme.split("<!-- results:begin -->\n")[1].split("\n<!-- results:end -->")[0].splitlines()
    assert rows == [
        "| run | real images (pool / labelled) | per character | whole | real labels used | wall time | date | CPU "
        "| cores |",
        "|---|---|---|---|---|---|---|---|---|",
        "| `dvc repro` (default) | 3,000 / 300 | 91.3 % | 71.0 % | 0 | 11 min 2 s (sum of stage times) | "
        "not recorded | not recorded | not recorded |",
        "| `targets/kaggle.yaml` | 1,040 / 1,040 | 98.7 % | 95.0 % | 0 | 23 min 59 s (fetch → evaluate) | "
        "2026-12-06 | Test CPU 9000 | 2 |",
    ]
    assert readme.startswith("# Title\n\n<!-- results:default:begin -->\nA plain `dvc repro` reads the bundled "
                             "sample: 3,000 real HackMIT 2017 captchas, 300 of them labelled")
    assert readme.endswith("<!-- results:end -->\n\nafter\n")
    assert run("--root", str(tree), "--check").returncode == 0


def test_label_budget_and_ablation_blocks(tree):
    assert run("--root", str(tree)).returncode == 0
    doc = (tree / "docs" / "label-budget.md").read_text()
    assert doc == (
        "# LB\n\n<!-- results:label-budget:default:begin -->\n"
        "| N real labels | real only | real + synthetic | real + refined | refined only |\n"
        "|---|---|---|---|---|\n"
        "| 0 | no reader | 86.3 % / 57.9 % | 81.3 % / 44.3 % | 81.3 % / 44.3 % |\n"
        "| 10 | 3.8 % / 0.0 % | 82.9 % / 51.4 % | 78.0 % / 35.7 % | 81.3 % / 44.3 % |\n"
        "\nFrom `metrics/label-budget.json`: per character / whole; 140 test images held out; seeds [0]; 200 steps "
        "per point.\nPer character, real only is above real + refined at no N; real + synthetic is above real + "
        "refined at 0, 10.\n"
        "<!-- results:label-budget:default:end -->\n"
        "<!-- results:ablation:kaggle:begin -->\n"
        "| step | per character | whole | real labels used |\n"
        "|---|---|---|---|\n"
        "| synthetic only | 31.2 % | 4.2 % | 0 |\n"
        "| + self-training | 97.0 % | 90.0 % | 0 |\n"
        "\nThe last row is an earlier self-trained reader of this target: the current one\n"
        "(`metrics/targets/kaggle/evaluate.json`) reads 98.7 % / 95.0 %; `python benchmarks/ablation.py "
        "targets/kaggle.yaml`\nreruns the rows.\n"
        "<!-- results:ablation:kaggle:end -->\n")


def test_the_panel_block_has_a_row_per_site_run(tree):
    row = {"char_accuracy": 0.98731, "captcha_accuracy": 0.94904, "length_accuracy": None,
           "estimated_char_accuracy": 0.99655,
           "estimated_captcha_accuracy": 0.96769, "collapsed": False, "real_labels_used": 0, "count": 1040,
           "pool_is_evaluation_set": True, "seconds": 1148.2, "cpu": "Test CPU 9000, 2 cores", "date": "2026-12-07",
           "ddddocr_char_accuracy": None, "ddddocr_captcha_accuracy": None}
    write(tree / "metrics" / "panel.json", {"kaggle-v2": row, "odd": {**row, "collapsed": True, "count": 500,
                                                                      "length_accuracy": 0.998,
                                                                      "pool_is_evaluation_set": False}})
    (tree / "docs" / "panel.md").write_text("<!-- results:panel:begin -->\n<!-- results:panel:end -->\n")
    assert run("--root", str(tree)).returncode == 0
    assert (tree / "docs" / "panel.md").read_text().splitlines()[3:] == [
        "| `kaggle-v2` | 98.7 % / 94.9 % | — | 99.7 % / 96.8 % | — / — | 1,040 (also the pool) | 0 | 19 min 8 s | "
        "Test CPU 9000, 2 cores, 2026-12-07 |",
        "| `odd` | 98.7 % / 94.9 % | 99.8 % | collapsed | — / — | 500 | 0 | 19 min 8 s | Test CPU 9000, 2 cores, "
        "2026-12-07 |",
        "<!-- results:panel:end -->"]


def test_results_md_marks_current_targets_and_kept_experiments(tree):
    assert run("--root", str(tree)).returncode == 0
    results = (tree / "docs" / "results.md").read_text()
    current, experiments = results.split("## Kept experiments")
    assert "### kaggle\n" in current and "kaggle-seed9" not in current
    assert "### kaggle-seed9\n" in experiments
    assert ("| self-trained (the answer) | 98.7 % | 95.0 % | 1,040 | 0 |\n"
            "| refined (SimGAN) | 81.3 % | 50.0 % | 1,040 | 0 |\n"
            "| synthetic | 86.0 % | 60.0 % | 1,040 | 0 |\n"
            "| letters baseline | 66.4 % | 23.7 % | 1,040 | 0 |\n") in current
    assert (f"- Date 2026-12-06, commit `{'0' * 40}`, CPU Test CPU 9000, 2 cores.\n"
            "- Wall time 23 min 59 s (fetch → evaluate), from `run.json`.\n"
            "- Stage times: fetch 1.13 s, self-train 445.09 s, evaluate 1.0 s (sum 7 min 27 s).\n") in current
    assert "- Date not recorded, commit `not recorded`, CPU not recorded, not recorded cores.\n" in experiments
    assert "- Wall time 1 min 0 s (fetch → evaluate), from `run.json`.\n" in experiments
    assert ("`ablation.json` here is a copy of `metrics/targets/kaggle/ablation.json`, not a measurement of this "
            "run.") in experiments
    assert "| self-trained (the answer) | 50.0 % | 25.0 % | 1,040 | 0 |" in experiments


def test_one_sentence_figures_of_a_stage(tree):
    metrics = tree / "metrics"
    write(metrics / "mask.json", {"pixels": 353, "coverage": 0.0706, "mean_presence": 0.999639282341832,
                                  "seconds": 0.07})
    write(metrics / "refine.json", {"label_flip_rate": 0.00075, "kept": 19985, "images": 20000, "seconds": 1.0})
    write(metrics / "self-train.json", {"least_read_char": "i", "least_read_share": 0.9292, "seconds": 1.0})
    doc = tree / "docs" / "method.md"
    doc.write_text("".join(f"<!-- results:{kind}:default:begin -->\n<!-- results:{kind}:default:end -->\n"
                           for kind in ("mask", "refine", "self-train")))
    assert run("--root", str(tree)).returncode == 0
    assert doc.read_text() == (
        "<!-- results:mask:default:begin -->\n"
        "On the default sample the mask is 353 pixels, 7.1 % of the image, lit in 99.96 % of the captchas\n"
        "(`metrics/mask.json`: `pixels`, `coverage`, `mean_presence`).\n"
        "<!-- results:mask:default:end -->\n"
        "<!-- results:refine:default:begin -->\n"
        "On the default sample, 0.08 % of the refined images changed their reading under the synthetic reader and "
        "were\ndropped: 19,985 of 20,000 kept (`metrics/refine.json`).\n"
        "<!-- results:refine:default:end -->\n"
        "<!-- results:self-train:default:begin -->\n"
        "On the default sample the self-trained reader's least read character after the last round is `i`, at 0.93 "
        "of an\nequal share (`metrics/self-train.json`).\n"
        "<!-- results:self-train:default:end -->\n")


def test_a_hand_edited_figure_is_stale_and_an_unknown_block_is_an_error(tree):
    assert run("--root", str(tree)).returncode == 0
    readme = tree / "README.md"
    readme.write_text(readme.read_text().replace("98.7 %", "98.6 %"))
    check = run("--root", str(tree), "--check")
    assert check.returncode == 1 and "stale: README.md" in check.stderr
    readme.write_text(readme.read_text() + "<!-- results:nonsense:begin -->\n<!-- results:nonsense:end -->\n")
    failed = run("--root", str(tree), "--check")
    assert failed.returncode == 2 and "results:nonsense" in failed.stderr


def test_missing_metrics_file_is_named(tree):
    (tree / "metrics" / "targets" / "kaggle" / "run.json").unlink()
    failed = run("--root", str(tree), "--check")
    assert failed.returncode == 2 and "kaggle/run.json: missing" in failed.stderr


@pytest.mark.parametrize("value, expected", [(0.9125, "91.3 %"), (0.98583, "98.6 %"), (0.0, "0.0 %"),
                                             (1.0, "100.0 %"), (0.66417, "66.4 %"), (0.95, "95.0 %")])
def test_percent_rounds_half_up_on_the_files_decimal(value, expected):
    assert report.percent(value) == expected


@pytest.mark.parametrize("seconds, expected", [(1439.0, "23 min 59 s"), (1718.4, "28 min 38 s"),
                                               (218.6, "3 min 39 s"), (59.5, "1 min 0 s"), (12.0, "12 s"),
                                               (3725.0, "1 h 2 min 5 s")])
def test_duration(seconds, expected):
    assert report.duration(seconds) == expected


def test_the_readme_is_a_manual():
    text = (REPO / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 250
    assert not [line for line in lines if len(line) > 200]
    assert not re.findall(r"\b[0-9a-f]{7,40}\b", text)
    assert "session" not in text.lower()


def test_every_test_the_docs_cite_exists():
    """docs/ and README cite tests as tests/FILE.py::NAME; a renamed or removed test must not leave a dead one."""
    cited = set()
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        cited |= set(re.findall(r"tests/(\w+\.py)::(\w+)", path.read_text()))
    assert cited
    defined = {}
    for path in (REPO / "tests").glob("test_*.py"):
        tree = ast.parse(path.read_text())
        defined[path.name] = {node.name for node in ast.walk(tree)
                              if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    missing = sorted(f"tests/{file}::{name}" for file, name in cited if name not in defined.get(file, set()))
    assert not missing
