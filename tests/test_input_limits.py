"""What users feed the pipeline that must be refused with one line before any work: devices, FIFOs, oversized
files, archives that expand past fetch.max_bytes, tampered reader metadata, and params beyond sane bounds."""

from __future__ import annotations

import io
import json
import os
import threading
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from simcaptcha.config import BinarizeConfig, FetchConfig, SourceConfig, load_config
from simcaptcha.errors import SimcaptchaError
from simcaptcha.fetch import fetch_set
from simcaptcha.modelfile import ReaderSpec, load_reader, save_reader

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 4)).save(buffer, "PNG")
    return buffer.getvalue()


def fetch(tmp_path: Path, source: str, **options):
    return fetch_set(SourceConfig(sources=[source]), FetchConfig(**options), "unlabelled", tmp_path / "cache")


# ---------------------------------------------------------------- fetch
def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "input.png"
    os.mkfifo(fifo)
    result: list = []
    worker = threading.Thread(target=lambda: result.append(pytest.raises(SimcaptchaError, fetch, tmp_path, str(fifo))))
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "fetch blocked on a FIFO"
    assert "not a regular file" in str(result[0].value) and str(fifo) in str(result[0].value)


def test_a_device_is_refused(tmp_path):
    with pytest.raises(SimcaptchaError, match=r"^fetch.unlabelled: /dev/zero: not a regular file"):
        fetch(tmp_path, "/dev/zero")


def test_a_local_file_over_max_bytes_is_refused_before_it_is_read(tmp_path):
    big = tmp_path / "big.png"
    with open(big, "wb") as stream:  # sparse: 3 GiB on paper, nothing on disk
        stream.truncate(3 * 2**30)
    with pytest.raises(SimcaptchaError, match=rf"{big}: 3221225472 bytes, above max_bytes 536870912$"):
        fetch(tmp_path, str(big))


def test_a_folder_whose_images_exceed_max_bytes_is_refused(tmp_path):
    folder = tmp_path / "pool"
    folder.mkdir()
    for index in range(3):
        (folder / f"{index}.png").write_bytes(png())
    size = 3 * len(png())
    with pytest.raises(SimcaptchaError, match=rf"its images total {size} bytes, above max_bytes {size - 1}$"):
        fetch(tmp_path, str(folder), max_bytes=size - 1)
    assert len(fetch(tmp_path, str(folder), max_bytes=size)[0]) == 3


def test_a_zip_bomb_is_refused_from_its_directory_before_anything_inflates(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        for index in range(4):  # 4 x 64 MiB of zeros in about 250 KB
            archive.writestr(f"{index}.png", bytes(64 * 2**20))
    assert bomb.stat().st_size < 2**20
    with pytest.raises(SimcaptchaError, match=rf"its images total {4 * 64 * 2**20} bytes, above max_bytes"):
        fetch(tmp_path, str(bomb), max_bytes=128 * 2**20)


def test_the_default_max_bytes_is_memory_safe():
    assert FetchConfig().max_bytes == 512 * 2**20


# ---------------------------------------------------------------- reader files
def make_reader_file(path: Path) -> Path:
    spec = ReaderSpec(charset="abc", length=2, head="positions", channels=(4, 4, 4, 4), height=16, width=32,
                      binarize=BinarizeConfig(size=[16, 32]), polarity="dark")
    save_reader(path, spec.build(), spec, None)
    return path


def tamper(path: Path, **metadata) -> Path:
    """Rewrite the reader file with some metadata fields replaced (JSON-encoded as the file stores them)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        stored = handle.metadata()
    stored.update({key: json.dumps(value) for key, value in metadata.items()})
    save_file(load_file(str(path)), str(path), stored)
    return path


@pytest.mark.parametrize("field, value, message", [
    ("length", 10**9, "length = 1000000000 is not a whole number from 1 to 64"),
    ("length", -4, "length = -4 is not a whole number from 1 to 64"),
    ("length", "four", "length = 'four' is not a whole number from 1 to 64"),
    ("length", 2000, "length = 2000 is not a whole number from 1 to 64"),
    ("height", 0, "height = 0 is not a whole number of pixels from 8 to 1024"),
    ("height", 100000, "height = 100000 is not a whole number of pixels from 8 to 1024"),
    ("width", 100000, "width = 100000 is not a whole number of pixels from 8 to 1024"),
    ("charset", "a" * 36, "charset = 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa' is not a non-empty string of distinct"),
    ("charset", "", "charset = '' is not a non-empty string of distinct characters"),
    ("polarity", "purple", "polarity = 'purple' is not one of light, dark"),
    ("head", "rnn", "head = 'rnn' is not one of positions, ctc"),
    ("channels", [4, 4, 4], "channels = [4, 4, 4] is not four whole numbers from 1 to 1024"),
    ("trained_on_real", "x", "trained_on_real = 'x' is not a list of captcha names"),
])
def test_tampered_reader_metadata_is_refused_before_a_network_is_built(tmp_path, field, value, message):
    path = tamper(make_reader_file(tmp_path / "r.safetensors"), **{field: value})
    with pytest.raises(SimcaptchaError) as error:
        load_reader(path)
    assert str(error.value) == f"{path}: model metadata {message}" or message in str(error.value)
    assert "\n" not in str(error.value)


def test_weights_that_disagree_with_the_metadata_are_refused_by_shape_alone(tmp_path, monkeypatch):
    path = tamper(make_reader_file(tmp_path / "r.safetensors"), channels=[1024, 1024, 1024, 1024], length=64)
    built = []
    real_build = ReaderSpec.build
    monkeypatch.setattr(ReaderSpec, "build", lambda self, *args: built.append(
        torch.empty(0).device if not built else None) or real_build(self, *args))
    with pytest.raises(SimcaptchaError, match=r"weights do not match the model its metadata describes"):
        load_reader(path)
    assert len(built) == 1  # only the shape check's network, on the meta device: no weights were allocated


def test_a_reader_file_that_is_a_device_or_too_large_is_refused(tmp_path):
    with pytest.raises(SimcaptchaError, match=r"^/dev/zero: not a regular file"):
        load_reader("/dev/zero")
    big = tmp_path / "big.safetensors"
    with open(big, "wb") as stream:
        stream.truncate(2**30)
    with pytest.raises(SimcaptchaError, match=r"1073741824 bytes, above the model file limit 536870912$"):
        load_reader(big)


# ---------------------------------------------------------------- params
@pytest.mark.parametrize("params, message", [
    ({"render": {"fonts": ["Robotoo"]}}, "params: render.fonts: unknown font family 'Robotoo': did you mean 'Roboto'?"),
    ({"render": {"fonts": ["fonts/missing.ttf"]}}, "params: render.fonts: font file fonts/missing.ttf does not exist"),
    ({"render": {"count": 10**12}}, "params: render.count = 1000000000000 is above its maximum 2000000"),
    ({"render": {"count": 1_000_000}}, "params: render.count, render.glyph_count and augment.variants ask for "
                                       "2020000 synthetic images of 50x100, above 8 GiB in memory"),
    ({"render": {"charset": "ab_c"}}, "params: render.charset holds '_', which labels cannot carry"),
    ({"render": {"charset": "ab.c"}}, "params: render.charset holds '.', which labels cannot carry"),
    ({"render": {"charset": "ab c"}}, "params: render.charset holds ' ', which labels cannot carry"),
    ({"gan": {"steps": 10**9}}, "params: gan.steps = 1000000000 is above its maximum 1000000"),
    ({"fetch": {"max_bytes": 2**40}}, "params: fetch.max_bytes = 1099511627776 is above its maximum 8589934592"),
])
def test_params_beyond_sane_bounds_are_refused_when_they_load(tmp_path, params, message):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(SimcaptchaError) as error:
        load_config(path)
    assert str(error.value).startswith(message)
