"""End to end: dvc repro of the real pipeline on tiny params, in a temporary copy of the repository."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from simcaptcha.budget import held_out_split
from simcaptcha.config import BudgetConfig, parse_section
from simcaptcha.metrics import accuracy_figures
from simcaptcha.modelfile import load_reader
from simcaptcha.store import read_encoded_set, read_image_set
from simcaptcha.reading import read_images

from helpers import SAMPLES, TOOLS_ENV, copy_project, run_tool, set_params

pytestmark = pytest.mark.slow  # every test here works on a reproduced tiny pipeline

DOWNSTREAM_OF_REFINE = {"refine", "train-classifier-refined", "self-train", "evaluate",
                        # the label-budget points that start from the refined reader; the others do not use it
                        "label-budget-refined@0-0", "label-budget-refined@4-0"}


@pytest.fixture(scope="module")
def project(tiny_template, tmp_path_factory) -> Path:
    """A copy of the tiny reproduced project that these tests inspect and change, one after the other."""
    return copy_project(tiny_template, tmp_path_factory.mktemp("clone") / "project")


def stages_run(output: str) -> set[str]:
    """The stages a dvc repro or dvc exp run ran, from its output."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def test_repro_builds_every_artifact(project):
    blobs, manifest = read_encoded_set(project / "data/fetched/unlabelled")
    assert len(blobs) == 300 and (manifest["label"] == "").all()
    labelled = read_image_set(project / "data/binarized/labelled")
    assert len(labelled) == 60 and labelled.images.shape[1:] == (50, 100)
    truth = dict(csv.reader((SAMPLES / "dev_labels.csv").open()))
    assert [truth[name] for name in labelled.names] == labelled.labels
    synthetic = read_image_set(project / "data/augmented/captchas")
    assert len(synthetic) == 120 and synthetic.images.shape[1:] == (50, 100)
    anchors = read_image_set(project / "data/augmented/anchors")  # what self-training keeps learning from
    assert len(anchors) == 120 and anchors.images.shape[1:] == (50, 100)
    rendered, narrowed = (read_image_set(project / f"data/synthetic/{name}") for name in ("captchas", "anchors"))
    assert (narrowed.images > 0).mean() < 0.9 * (rendered.images > 0).mean()  # anchor_glyph_width [0.5, 1]: less ink
    for picture in ("binarize-before-after", "mask", "render-captchas", "render-anchors", "augment-anchors",
                    "augment-captchas", "gan-samples",
                    "refine-before-after", "worst-errors"):
        assert (project / "metrics/images" / f"{picture}.png").stat().st_size > 0
    figures = json.loads((project / "metrics/evaluate.json").read_text())
    for reader in ("refined", "synthetic", "letters"):
        assert figures[reader]["count"] == 60 and figures[reader]["real_labels_used"] == 0
    # One epoch of tiny readers reads near chance (1/36 a character), but seeded: the same readings every run, with
    # one torch thread or two, so the figures are exact (4, 6 or 8 of the 60 captchas' 240 characters).
    four, six, eight = round(4 / 240, 5), round(6 / 240, 5), round(8 / 240, 5)
    expected = {"refined": six, "synthetic": four, "letters": eight, "selftrained": eight}
    assert {reader: figures[reader]["char_accuracy"] for reader in expected} == expected
    gan_log = (project / "metrics/train-gan.csv").read_text().splitlines()
    assert len(gan_log) == 1 + 8 and "d_accuracy_real" in gan_log[0]
    rounds = list(csv.DictReader((project / "metrics/self-train.csv").open()))
    assert len(rounds) == 2  # the labelled figures after each round; the last round's are evaluate's
    assert float(rounds[-1]["labelled_char_accuracy"]) == figures["selftrained"]["char_accuracy"]
    assert float(rounds[-1]["labelled_captcha_accuracy"]) == figures["selftrained"]["captcha_accuracy"]
    for reader in ("synthetic", "glyphs", "refined"):
        assert (project / f"data/models/{reader}.safetensors").stat().st_size > 0


def test_second_repro_does_nothing(project):
    output = run_tool(["dvc", "repro"], project)
    assert "Running stage" not in output
    assert "up to date" in output


def test_refine_param_reruns_only_refine_and_downstream(project):
    """refine.threshold 0.99 blanks the refined images (ink comes out of the refiner at about 0.98), so everything
    that reads them reruns, self-training too (it starts from the refined reader); nothing upstream does, nor the
    synthetic reader."""
    upstream = [project / "data/binarized/unlabelled/shard-00000.npz", project / "data/models/gan.safetensors",
                project / "data/models/synthetic.safetensors"]
    before = [path.stat().st_mtime_ns for path in upstream]
    # ++ adds the key: params.yaml names only what differs from config.py's defaults
    ran = stages_run(run_tool(["dvc", "exp", "run", "-S", "++refine.threshold=0.99"], project))
    assert ran - {"label-budget"} == DOWNSTREAM_OF_REFINE  # the grid's report reruns if a point's figures changed
    assert [path.stat().st_mtime_ns for path in upstream] == before


def test_anchor_glyph_width_reruns_only_the_anchor_set_and_self_training(project):
    """The anchor set is rendered and augmented beside the captchas; those come out byte for byte the same, so no
    reader but the self-trained one retrains."""
    readers = [project / f"data/models/{name}.safetensors" for name in ("synthetic", "glyphs", "gan", "refined")]
    before = [path.stat().st_mtime_ns for path in readers]
    ran = stages_run(run_tool(["dvc", "exp", "run", "-S", "++render.anchor_glyph_width=[0.6,1.0]"], project))
    assert ran == {"render-fonts", "augment", "self-train", "evaluate"}
    assert [path.stat().st_mtime_ns for path in readers] == before


def test_label_budget_grid(project):
    figures = json.loads((project / "metrics/label-budget.json").read_text())
    assert figures["test_size"] == 20 and figures["seeds"] == [0]
    points = figures["points"]
    assert set(points) == {"real only", "real + synthetic", "real + refined"}
    assert points["real only"]["0"]["char_accuracy"] == 0.0  # no label, no synthetic set: nothing reads
    for mode in points.values():
        assert set(mode) == {"0", "4"} and mode["4"]["real_labels_used"] == 4
    table = (project / "metrics/label-budget.csv").read_text().splitlines()
    assert table[0] == ("n,char real only,whole real only,char real + synthetic,whole real + synthetic,"
                        "char real + refined,whole real + refined,char refined only,whole refined only")
    assert len(table) == 3 and (project / "metrics/images/label-budget.png").stat().st_size > 0
    point = json.loads((project / "data/label-budget/refined-0-0.json").read_text())
    assert point["start"] == "refined.safetensors" and point["count"] == 20
    # At N = 0 the point is the zero-label run's refined reader itself, read on the fixed test split.
    labelled = read_image_set(project / "data/binarized/labelled")
    test, _ = held_out_split(len(labelled), parse_section(BudgetConfig, budget_params(project), "budget"))
    model, spec, _ = load_reader(project / "data/models/refined.safetensors")
    texts, _ = read_images(model, spec.coder(), labelled.images[test])
    expected = accuracy_figures(texts, [labelled.labels[row] for row in test])
    assert {key: point[key] for key in expected} == expected


def budget_params(project: Path) -> dict:
    return yaml.safe_load((project / "params.yaml").read_text())["budget"]


def test_label_budget_new_size_runs_only_its_points(project):
    set_params(project, {"budget": {"sizes": [0, 4, 8]}})
    ran = stages_run(run_tool(["dvc", "repro"], project))
    assert ran == {"label-budget-real@8-0", "label-budget-synthetic@8-0", "label-budget-refined@8-0", "label-budget"}
    assert json.loads((project / "data/label-budget/real-8-0.json").read_text())["real_labels_used"] == 8


def test_classifier_dropout_reaches_the_readers_that_train(tiny_project):
    """classifier.dropout changes what the reader stages train, the self-trained reader's too (it goes on training
    a loaded reader); it had been ignored, every reader trained with the network's default."""
    project = tiny_project
    models = [project / f"data/models/{name}.safetensors" for name in ("synthetic", "selftrained")]
    before = [path.read_bytes() for path in models]
    set_params(project, {"classifier": {"dropout": 0.9}})
    run_tool([sys.executable, "stages/train_classifier.py", "synthetic"], project)
    assert models[0].read_bytes() != before[0]
    run_tool([sys.executable, "stages/self_train.py"], project)  # from the refined reader, which has not changed
    assert models[1].read_bytes() != before[1]


def test_the_refined_reader_fine_tunes_the_synthetic_one(tiny_project):
    """classifier.refined_epochs > 0: the refined reader starts from the synthetic reader's weights (at a zero rate
    it keeps them); 0 trains it from the seed instead, like the synthetic reader."""
    project = tiny_project

    def weights(name: str) -> dict:
        model, _, _ = load_reader(project / f"data/models/{name}.safetensors")
        return {key: value for key, value in model.state_dict().items() if key.endswith("weight")}

    set_params(project, {"classifier": {"refined_epochs": 1, "refined_learning_rate": 0.0, "weight_decay": 0.0}})
    run_tool([sys.executable, "stages/train_classifier.py", "refined"], project)
    synthetic, refined = weights("synthetic"), weights("refined")
    assert all(torch.equal(synthetic[key], refined[key]) for key in synthetic)
    set_params(project, {"classifier": {"refined_epochs": 0, "refined_learning_rate": 0.0, "weight_decay": 0.0}})
    run_tool([sys.executable, "stages/train_classifier.py", "refined"], project)
    refined = weights("refined")
    assert not any(torch.equal(synthetic[key], refined[key]) for key in synthetic)
    assert json.loads((project / "metrics/train-classifier-refined.json").read_text())["epoch"] == 1  # epochs: 1


def test_the_student_is_saved_as_the_self_trained_reader(tiny_project):
    """selftrain.student_channels: a fresh reader of those widths learns the self-trained reader's readings and
    is the file evaluate and predict load; its figures join self-train.json, and no checkpoint is left behind."""
    project = tiny_project
    set_params(project, {"selftrain": {"student_channels": [4, 8, 8, 16], "student_epochs": 2}})
    run_tool([sys.executable, "stages/self_train.py"], project)
    _, spec, _ = load_reader(project / "data/models/selftrained.safetensors")
    assert spec.channels == (4, 8, 8, 16)
    figures = json.loads((project / "metrics/self-train.json").read_text())
    assert figures["student_epoch"] == 2
    assert figures["student_labelled_char_accuracy"] == round(8 / 240, 5)  # seeded: the same every run
    assert figures["round"] == 2 and "labelled_char_accuracy" in figures  # the teacher's last round stays
    assert (project / ".cache/checkpoints/self-train").is_dir()
    assert not list((project / ".cache/checkpoints/self-train").glob("*.pt"))


@pytest.mark.parametrize("arguments, expected", [
    (["bogus", "4", "0"], "unknown label-budget mode 'bogus': expected one of real, synthetic, refined"),
    (["refined", "41", "0"], "params: budget.sizes has 41, but only 40 labelled captchas are left beside "
                             "budget.test_size = 20"),
    (["refined", "four", "0"], "usage: python stages/label_budget.py MODE N SEED"),
])
def test_label_budget_point_refuses_bad_arguments(project, arguments, expected):
    result = subprocess.run([sys.executable, "stages/label_budget.py", *arguments], cwd=project, env=TOOLS_ENV,
                            capture_output=True, text=True)
    assert result.returncode != 0 and expected in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_the_label_free_estimate_reads_no_label(tiny_project):
    """evaluate's estimate reads pool captchas self-training held out: replacing every real label changes what is
    measured, never what is estimated."""
    before = json.loads((tiny_project / "metrics/evaluate.json").read_text())["selftrained"]
    assert json.loads((tiny_project / "metrics/self-train.json").read_text())["held_out"] == 30  # of 300
    assert before["estimate_count"] == 30 and 0 < before["held_out_captcha_confidence"] <= 1
    assert 0 <= before["expected_calibration_error"] <= 1 and "coverage_at_99_precision" in before
    manifest = tiny_project / "data/binarized/labelled/manifest.csv"
    rows = list(csv.DictReader(manifest.open()))
    with manifest.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "label": "Z" * len(row["label"])} for row in rows)  # no reader reads a Z
    run_tool([sys.executable, "stages/evaluate.py"], tiny_project)
    after = json.loads((tiny_project / "metrics/evaluate.json").read_text())["selftrained"]
    estimated = [key for key in before if key.startswith(("estimate", "held_out", "most_common"))]
    assert {key: after[key] for key in estimated} == {key: before[key] for key in estimated}
    assert after["char_accuracy"] == 0 != before["char_accuracy"]


def test_real_labels_used_in_training_are_not_evaluated(project):
    """Last in this module: it runs the stages that read classifier.real_labels directly, not through dvc (the
    GAN and label-budget stages dvc would also rerun do not decide what evaluate skips). Self-train's per-round
    labelled figures skip the same captchas."""
    set_params(project, {"classifier": {"real_labels": 10}})
    for stage in (["train_classifier.py", "synthetic"], ["train_classifier.py", "refined"], ["self_train.py"],
                  ["evaluate.py"]):
        run_tool([sys.executable, f"stages/{stage[0]}", *stage[1:]], project)
    figures = json.loads((project / "metrics/evaluate.json").read_text())
    for reader in ("refined", "synthetic", "selftrained"):
        assert figures[reader]["real_labels_used"] == 10 and figures[reader]["count"] == 50
    last_round = list(csv.DictReader((project / "metrics/self-train.csv").open()))[-1]
    assert float(last_round["labelled_char_accuracy"]) == figures["selftrained"]["char_accuracy"]
    assert float(last_round["labelled_captcha_accuracy"]) == figures["selftrained"]["captcha_accuracy"]
    assert figures["letters"]["real_labels_used"] == 0 and figures["letters"]["count"] == 60
