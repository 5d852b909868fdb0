"""simcaptcha export and predict --model FILE.onnx: the reader as an ONNX graph with its preprocessing in the
metadata, read by onnxruntime as torch reads it, and every unusable ONNX file refused in one line."""

import base64
import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from safetensors import safe_open

from helpers import CHARSET, CONSOLE_SCRIPT, SAMPLES, SHARED_DATA, challenge_json, json_images, run_cli

from simcaptcha import imaging
from simcaptcha.config import BinarizeConfig
from simcaptcha.modelfile import ReaderSpec, save_reader
from simcaptcha.onnxfile import ONNX_FORMAT, OPSET
from simcaptcha.inference import export_onnx
from simcaptcha.predict import predict

pytestmark = pytest.mark.usefixtures("keep_torch_threads")

CHALLENGE = SHARED_DATA / "hackmit2017" / "challenge-0"  # 1,000 captchas
CALIBRATION = SAMPLES / "challenge-19"  # the readers' last layers are scaled on these, never on CHALLENGE's
SHARPNESS = 16.0  # the spread of each class score over the calibration images, in standard deviations
SPEC_FIELDS = list(ReaderSpec.__dataclass_fields__)


def calibrated_reader(spec: ReaderSpec, images: np.ndarray) -> torch.nn.Module:
    """A reader with seeded weights, calibrated on ``images`` as a data-dependent initialisation would: the batch
    norms' statistics are the images' own (with seeded scales and shifts, so that folding them matters), and the
    last layer is rescaled so that each class score varies by ``SHARPNESS`` standard deviations around 0.

    Untrained weights alone read almost every captcha alike, with confidences near 0; these read them
    differently, with confidences spread over (0, 1) as a trained reader's are, and are made in a second.
    """
    torch.manual_seed(0)
    model = spec.build()
    batch = torch.from_numpy(images).float().div(255).unsqueeze(1)
    scores = []
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None  # running statistics: the average over what it sees, here one batch
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
        model.train()(batch)
        hook = model.head.register_forward_hook(lambda module, inputs, output: scores.append(output))
        model.eval()(batch)
        hook.remove()
        per_class = scores[0].transpose(0, 1).reshape(scores[0].shape[1], -1)  # a row per class (and position)
        scale = SHARPNESS / per_class.std(1)
        model.head.weight.mul_(scale.view(-1, *[1] * (model.head.weight.dim() - 1)))
        model.head.bias.sub_(per_class.mean(1)).mul_(scale)
    return model


@pytest.fixture(scope="module", params=["positions", "ctc"])
def readers(request, tmp_path_factory):
    """A calibrated reader of each head saved with its background estimate, and its ONNX export."""
    folder = tmp_path_factory.mktemp(request.param)
    spec = ReaderSpec(CHARSET, 4, request.param, (8, 8, 8, 8), 50, 100, BinarizeConfig(), "light")
    names, blobs = zip(*json_images(CALIBRATION)[:300])
    rgb = imaging.decode_set(blobs, names, 50, 100)
    background = imaging.estimate_background(rgb, "columns")
    images = imaging.binarize_images(rgb, background, spec.binarize, spec.polarity)
    save_reader(folder / "reader.safetensors", calibrated_reader(spec, images), spec, background)
    export_onnx(folder / "reader.safetensors", folder / "reader.onnx")
    return folder / "reader.safetensors", folder / "reader.onnx"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A seeded positions reader with a background, and its export: the files the tampering tests start from."""
    folder = tmp_path_factory.mktemp("exported")
    spec = ReaderSpec(CHARSET, 4, "positions", (8, 8, 8, 8), 50, 100, BinarizeConfig(), "light")
    torch.manual_seed(0)
    background = np.random.default_rng(0).uniform(0, 255, (1, 100, 3)).astype(np.float32)
    save_reader(folder / "reader.safetensors", spec.build().eval(), spec, background)
    export_onnx(folder / "reader.safetensors", folder / "reader.onnx")
    return folder / "reader.safetensors", folder / "reader.onnx"


def csv_rows(text: str) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["name", "prediction", "confidence"]
    return rows[1:]


# ---------------------------------------------------------------- export
def test_export_writes_the_graph_and_the_preprocessing(capsys, tmp_path, readers):
    safetensors_path, _ = readers
    out = tmp_path / "out.onnx"
    assert run_cli(capsys, "export", "--model", safetensors_path, "--onnx", out) == (0, "", "")
    assert os.listdir(tmp_path) == ["out.onnx"]  # written beside and renamed: no temporary file left
    model = onnx.load(out)
    onnx.checker.check_model(model)
    assert [entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")] == [OPSET] and OPSET >= 17
    [images], [scores] = model.graph.input, model.graph.output
    assert images.name == "images" and images.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [dim.dim_param or dim.dim_value for dim in images.type.tensor_type.shape.dim] == ["batch", 1, 50, 100]
    assert scores.name == "scores" and scores.type.tensor_type.shape.dim[0].dim_param == "batch"
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    assert set(metadata) == {"format", *SPEC_FIELDS, "background"} and metadata["format"] == ONNX_FORMAT
    with safe_open(str(safetensors_path), framework="pt") as handle:
        source = handle.metadata()
        background = handle.get_tensor("preprocessing.background").numpy()
    assert ({key: json.loads(metadata[key]) for key in SPEC_FIELDS}
            == {key: json.loads(source[key]) for key in SPEC_FIELDS})
    stored = json.loads(metadata["background"])
    assert stored["shape"] == [1, 100, 3]
    assert np.array_equal(np.frombuffer(base64.b64decode(stored["float32"]), "<f4").reshape(1, 100, 3), background)


def test_a_reader_without_background_exports_null(tmp_path):
    spec = ReaderSpec("abc", 2, "ctc", (4, 4, 4, 4), 16, 32, BinarizeConfig(background="none"), "dark")
    save_reader(tmp_path / "r.safetensors", spec.build(), spec, None)
    export_onnx(tmp_path / "r.safetensors", tmp_path / "r.onnx")
    metadata = {entry.key: entry.value for entry in onnx.load(tmp_path / "r.onnx").metadata_props}
    assert metadata["background"] == "null" and json.loads(metadata["polarity"]) == "dark"


@pytest.mark.parametrize("problem, message", [
    ("missing-model", "no-such.safetensors: no such model file"),
    ("not-onnx-name", "out.bin: an ONNX file's name must end in .onnx"),
    ("under-a-file", "out.onnx: File exists"),
])
def test_export_errors_are_one_line(capsys, tmp_path, exported, problem, message):
    model, out = exported[0], tmp_path / "out.onnx"
    if problem == "missing-model":
        model = tmp_path / "no-such.safetensors"
    elif problem == "not-onnx-name":
        out = tmp_path / "out.bin"
    else:
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "out.onnx"
    code, stdout, stderr = run_cli(capsys, "export", "--model", model, "--onnx", out)
    assert (code, stdout) == (1, "") and stderr.count("\n") == 1 and message in stderr
    assert not out.exists()


# ---------------------------------------------------------------- parity with torch
def test_onnxruntime_reads_the_challenge_as_torch_does(readers):
    """Every reading of the 1,000 HackMIT challenge captchas is the same, and every confidence within 1e-4."""
    safetensors_path, onnx_path = readers
    by_torch = list(predict(safetensors_path, [str(CHALLENGE)]))
    by_onnx = list(predict(onnx_path, [str(CHALLENGE)]))
    assert len(by_torch) == 1000 and [row[0] for row in by_onnx] == [row[0] for row in by_torch]
    assert [row[1] for row in by_onnx] == [row[1] for row in by_torch]
    confidences = np.array([row[2] for row in by_torch])
    assert np.abs(np.array([row[2] for row in by_onnx]) - confidences).max() < 1e-4
    # non-trivial readings: nearly all different, confidences spread over (0, 1) as a trained reader's are
    assert len({row[1] for row in by_torch}) > 900
    assert np.percentile(confidences, 95) - np.percentile(confidences, 5) > 0.3


def test_predict_command_with_an_onnx_model(capsys, tmp_path, readers):
    safetensors_path, onnx_path = readers
    (tmp_path / "few.json").write_bytes(challenge_json([
        {"name": name, "jpg_base64": base64.b64encode(blob).decode()} for name, blob in json_images(CHALLENGE)[:40]]))
    code, by_torch, _ = run_cli(capsys, "predict", "--model", safetensors_path, tmp_path / "few.json")
    assert code == 0
    assert run_cli(capsys, "predict", "--model", onnx_path, tmp_path / "few.json", "-o", tmp_path / "out.csv") == (
        0, "", "")
    by_onnx = csv_rows((tmp_path / "out.csv").read_text())
    assert [row[:2] for row in by_onnx] == [row[:2] for row in csv_rows(by_torch)]
    assert all(abs(float(a[2]) - float(b[2])) <= 1.0001e-4 for a, b in zip(by_onnx, csv_rows(by_torch)))


@pytest.mark.slow  # a new Python process: about a second
def test_predict_with_an_onnx_model_never_imports_torch(readers):
    """An ONNX reader starts without torch's seconds of imports: nothing on its way loads torch."""
    code = ("import sys; from simcaptcha.predict import predict; "
            f"rows = list(predict({str(readers[1])!r}, [{str(CALIBRATION)!r}])); "
            "print(len(rows), sorted(name for name in sys.modules if name == 'torch' or name.startswith('torch.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout, result.stderr) == (0, "1000 []\n", "")


# ---------------------------------------------------------------- unusable files
def _edit_metadata(data: bytes, **values) -> bytes:
    """The ONNX file with these metadata values (None: the key removed; bytes: the raw text, not JSON)."""
    model = onnx.load_from_string(data)
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    for key, value in values.items():
        if value is None:
            del metadata[key]
        else:
            metadata[key] = value.decode() if isinstance(value, bytes) else json.dumps(value)
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    return model.SerializeToString()


def _without_a_node(data: bytes) -> bytes:
    model = onnx.load_from_string(data)
    del model.graph.node[4]
    return model.SerializeToString()


def _background(shape: list[int], count: int) -> dict:
    return {"shape": shape, "float32": base64.b64encode(np.zeros(count, "<f4").tobytes()).decode()}


TAMPERED = {  # name: (the file's bytes from the export's and the reader file's, a phrase of the one-line error)
    "garbage": (lambda data, reader: b"not an onnx model\n", "not a usable ONNX model"),
    "truncated": (lambda data, reader: data[:len(data) // 2], "not a usable ONNX model"),
    "safetensors": (lambda data, reader: reader, "not a usable ONNX model"),
    "empty": (lambda data, reader: b"", "not a usable ONNX model"),
    "node-removed": (lambda data, reader: _without_a_node(data), "not a usable ONNX model"),
    "no-metadata": (lambda data, reader: _edit_metadata(data, **{key: None for key in ["format", *SPEC_FIELDS,
                                                                                     "background"]}),
                    "ONNX model format 'none'"),
    "other-format": (lambda data, reader: _edit_metadata(data, format=b"simcaptcha-reader/1"),
                     "ONNX model format 'simcaptcha-reader/1'"),
    "field-missing": (lambda data, reader: _edit_metadata(data, width=None), "metadata is incomplete"),
    "not-json": (lambda data, reader: _edit_metadata(data, charset=b"abc"), "model metadata is incomplete (Expecting value"),
    "shorter-charset": (lambda data, reader: _edit_metadata(data, charset="abc"), "does not fit the metadata"),
    "repeated-charset": (lambda data, reader: _edit_metadata(data, charset="a" * 36), "is not a non-empty string of distinct characters"),
    "empty-charset": (lambda data, reader: _edit_metadata(data, charset=""), "charset = '' is not a non-empty string"),
    "length": (lambda data, reader: _edit_metadata(data, length=5), "does not fit the metadata"),
    "length-huge": (lambda data, reader: _edit_metadata(data, length=10 ** 9), "length = 1000000000 is not a whole number from 1 to 64"),
    "length-float": (lambda data, reader: _edit_metadata(data, length=1e9), "length = 1000000000.0 is not a whole number"),
    "length-text": (lambda data, reader: _edit_metadata(data, length="four"), "length = 'four' is not a whole number"),
    "height": (lambda data, reader: _edit_metadata(data, height=0), "height = 0 is not a whole number of pixels from 8 to 1024"),
    "width": (lambda data, reader: _edit_metadata(data, width=100000), "width = 100000 is not a whole number of pixels"),
    "head": (lambda data, reader: _edit_metadata(data, head="ctc"), "does not fit the metadata"),
    "unknown-head": (lambda data, reader: _edit_metadata(data, head="rnn"), "head = 'rnn' is not one of positions, ctc"),
    "polarity": (lambda data, reader: _edit_metadata(data, polarity="purple"), "polarity = 'purple' is not one of light, dark"),
    "binarize": (lambda data, reader: _edit_metadata(data, binarize={"method": "magic"}), "binarize.method"),
    "background-base64": (lambda data, reader: _edit_metadata(data, background={"shape": [1, 100, 3],
                                                                                 "float32": "!!"}),
                          "metadata background is missing or not a float32 array"),
    "background-size": (lambda data, reader: _edit_metadata(data, background=_background([1, 100, 3], 10)),
                        "metadata background is missing or not a float32 array"),
    "background-text": (lambda data, reader: _edit_metadata(data, background="columns"),
                        "metadata background is missing or not a float32 array"),
    "background-shape": (lambda data, reader: _edit_metadata(data, background=_background([1, 60, 3], 180)),
                         "its background has shape (1, 60, 3)"),
}


@pytest.mark.parametrize("case", TAMPERED)
def test_a_tampered_or_invalid_onnx_file_is_one_line(capsys, tmp_path, exported, case):
    make, message = TAMPERED[case]
    path = tmp_path / "model.onnx"
    path.write_bytes(make(exported[1].read_bytes(), exported[0].read_bytes()))
    code, out, err = run_cli(capsys, "predict", "--model", path, CALIBRATION)
    assert (code, out) == (1, "")
    assert err.startswith(f"error: {path}: ") and err.count("\n") == 1 and message in err, err


NOT_REGULAR = "not a regular file (a FIFO, socket or device is never read)"


@pytest.mark.parametrize("kind, message", [("missing", "no such model file"), ("folder", NOT_REGULAR),
                                           ("fifo", NOT_REGULAR)])
def test_a_model_path_that_is_no_file_is_one_line(capsys, tmp_path, kind, message):
    """A FIFO would block a reader forever: it is refused before it is opened."""
    path = tmp_path / "model.onnx"
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    assert run_cli(capsys, "predict", "--model", path, CALIBRATION) == (1, "", f"error: {path}: {message}\n")


@pytest.mark.slow  # the command in a subprocess imports torch: seconds
def test_onnxruntimes_own_messages_stay_off_stderr(tmp_path, exported):
    """onnxruntime logs from C++ straight to the process's stderr: only the one error line may reach it."""
    path = tmp_path / "model.onnx"
    path.write_bytes(_without_a_node(exported[1].read_bytes()))
    result = subprocess.run([CONSOLE_SCRIPT, "predict", "--model", str(path), str(CALIBRATION)], capture_output=True,
                            text=True, timeout=120)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith(f"error: {path}: not a usable ONNX model") and result.stderr.count("\n") == 1


@pytest.mark.parametrize("command, package", [("predict", "onnxruntime"), ("export", "onnx")])
def test_without_the_onnx_extra_one_line_says_what_to_install(capsys, monkeypatch, tmp_path, exported, command,
                                                              package):
    monkeypatch.setitem(sys.modules, package, None)  # import fails as if it were not installed
    if command == "predict":
        argv = ["predict", "--model", exported[1], CALIBRATION]
    else:
        argv = ["export", "--model", exported[0], "--onnx", tmp_path / "out.onnx"]
    assert run_cli(capsys, *argv) == (
        1, "", f"error: ONNX models need the {package} package: pip install 'simcaptcha[onnx]'\n")
    assert not (tmp_path / "out.onnx").exists()
