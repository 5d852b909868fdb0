"""Readers as ONNX files, for runtimes other than torch: writing one, and reading it back with onnxruntime.

The graph is the reader with its batch norms folded (``inference.inference_reader``): input ``images``, float
N×1×H×W in [0, 1] exactly as ``reading.to_batch`` makes it (text 1), any N; output ``scores``, the class scores
the torch reader returns. The model's ``metadata_props`` carry what ``simcaptcha predict`` needs besides the graph,
as in a safetensors reader file: ``format``, and the JSON fields charset, length, head, channels, height, width,
binarize, polarity and trained_on_real; ``background`` holds the site's background estimate as JSON,
``{"shape": [...], "float32": base64 of its little-endian bytes}``, or ``null`` (a graph initializer that no node
used would be dropped, with a warning, by onnxruntime). The ``onnx`` and ``onnxruntime`` packages are an optional
extra: ``pip install 'simcaptcha[onnx]'``. Reading a file imports neither torch nor onnx, only onnxruntime:
``simcaptcha predict`` with an ONNX reader starts without torch's seconds of imports.
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import warnings
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from .errors import SimcaptchaError
from .machine import CPU_READ_CHUNK
from .readerspec import ReaderSpec, reader_spec
from .store import read_regular_file, write_bytes

if TYPE_CHECKING:
    from torch import nn

ONNX_FORMAT = "simcaptcha-reader-onnx/1"
ONNX_SUFFIX = ".onnx"
OPSET = 17
INPUT, OUTPUT = "images", "scores"
MAX_ONNX_BYTES = 1 << 30  # a reader is a few MB; a bigger file is not one, and would only fill memory


def _optional(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise SimcaptchaError(f"ONNX models need the {name} package: pip install 'simcaptcha[onnx]'") from None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300]


# ---------------------------------------------------------------- writing
def write_onnx(path: str | Path, reader: nn.Module, spec: ReaderSpec, background: np.ndarray | None) -> None:
    """Export ``reader`` (in eval mode, batch norms folded) with its spec and background to ``path``, whole or not
    at all."""
    import torch  # writing a file needs the reader's own runtime; reading one does not

    onnx = _optional("onnx")
    example = torch.zeros(1, 1, spec.height, spec.width)
    graph = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter, which torch (pinned) still has, warns that it is deprecated; the dynamo
        # exporter that replaces it needs onnxscript, one more dependency for the same graph.
        warnings.simplefilter("ignore")
        torch.onnx.export(reader.cpu().eval(), (example,), graph, dynamo=False, opset_version=OPSET,
                          input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    model = onnx.load_from_string(graph.getvalue())
    for key, value in _metadata(spec, background).items():
        model.metadata_props.add(key=key, value=value)
    try:
        write_bytes(path, model.SerializeToString())
    except OSError as error:
        raise SimcaptchaError(f"{path}: {error.strerror or error}") from None


def _metadata(spec: ReaderSpec, background: np.ndarray | None) -> dict[str, str]:
    stored = None if background is None else {
        "shape": list(background.shape),
        "float32": base64.b64encode(np.ascontiguousarray(background, dtype="<f4").tobytes()).decode("ascii")}
    return {"format": ONNX_FORMAT, **{key: json.dumps(value) for key, value in asdict(spec).items()},
            "background": json.dumps(stored)}


# ---------------------------------------------------------------- reading
class OnnxReader:
    """An exported reader in an onnxruntime session, called as ``inference.TorchReader`` is: the reader's uint8
    N×H×W input (text 255, at least one image) in, class scores out, ``CPU_READ_CHUNK`` images per run."""

    def __init__(self, session):
        self.session = session

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.concatenate([self.session.run([OUTPUT], {INPUT: images[start:start + CPU_READ_CHUNK, None]
                                                           / np.float32(255)})[0]
                               for start in range(0, len(images), CPU_READ_CHUNK)])


def load_onnx(path: str | Path, threads: int) -> tuple[OnnxReader, ReaderSpec, np.ndarray | None]:
    """The reader of an ONNX file written by ``write_onnx``, its spec and background (or None), checked against
    each other before anything is read; ``threads``: onnxruntime's threads for each batch."""
    path = Path(path)
    runtime = _optional("onnxruntime")
    try:
        data = read_regular_file(path, MAX_ONNX_BYTES, "the model file limit")
    except FileNotFoundError:
        raise SimcaptchaError(f"{path}: no such model file") from None
    except OSError as error:
        raise SimcaptchaError(f"{path}: cannot read ({error.strerror or error})") from None
    options = runtime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3  # errors only: its notes on graph optimisations are not the user's concern
    try:
        session = runtime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own types, one per stage of loading; each means "unusable"
        raise SimcaptchaError(f"{path}: not a usable ONNX model ({_one_line(error)})") from None
    metadata = session.get_modelmeta().custom_metadata_map
    found = metadata.get("format", "none")
    if found != ONNX_FORMAT:
        raise SimcaptchaError(f"{path}: ONNX model format {found!r}, expected {ONNX_FORMAT!r} "
                              f"(made by simcaptcha export)")
    spec = reader_spec(path, metadata)
    _check_graph(path, session, spec)
    return OnnxReader(session), spec, _background(path, metadata)


def _check_graph(path: Path, session, spec: ReaderSpec) -> None:
    """One float input of 1×height×width images per batch, one output of the classes the metadata decodes."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if [item.name for item in inputs] != [INPUT] or [item.name for item in outputs] != [OUTPUT]:
        raise SimcaptchaError(f"{path}: the graph's inputs {[item.name for item in inputs]} and outputs "
                              f"{[item.name for item in outputs]} are not [{INPUT!r}] and [{OUTPUT!r}]")
    wanted = [1, spec.height, spec.width]
    if inputs[0].type != "tensor(float)" or inputs[0].shape[1:] != wanted:
        raise SimcaptchaError(f"{path}: the graph reads {inputs[0].type} of shape {inputs[0].shape}, the metadata "
                              f"says float batches of {wanted}")
    classes = len(spec.charset) + (spec.head == "ctc")
    shape = outputs[0].shape
    if len(shape) != 3 or shape[2] != classes or (spec.head == "positions" and shape[1] != spec.length):
        raise SimcaptchaError(f"{path}: the graph's scores have shape {shape}, which does not fit the metadata's "
                              f"{spec.head} head of {spec.length} characters from {len(spec.charset)}")


def _background(path: Path, metadata: dict[str, str]) -> np.ndarray | None:
    try:
        stored = json.loads(metadata["background"])
        if stored is None:
            return None
        values = np.frombuffer(base64.b64decode(stored["float32"], validate=True), dtype="<f4")
        return values.reshape([int(size) for size in stored["shape"]]).astype(np.float32)
    except (KeyError, TypeError, ValueError) as error:  # ValueError: bad JSON, base64 or shape
        raise SimcaptchaError(f"{path}: metadata background is missing or not a float32 array "
                              f"({_one_line(error)})") from None
