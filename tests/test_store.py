"""Tests for simcaptcha.store: atomic writes, deterministic .npz files and sharded image sets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simcaptcha import store
from simcaptcha.errors import SimcaptchaError


def make_manifest(count: int, labels: list[str] | None = None) -> pd.DataFrame:
    return pd.DataFrame({
        "name": [f"img{i:03d}" for i in range(count)],
        "label": labels if labels is not None else [f"l{i}" for i in range(count)],
        "source": ["challenge-17"] * count,
    })


def make_images(count: int, height: int = 6, width: int = 9, channels: int | None = None) -> np.ndarray:
    shape = (count, height, width) + ((channels,) if channels else ())
    return np.random.default_rng(count).integers(0, 256, size=shape, dtype=np.uint8)


# ---------------------------------------------------------------- atomic_path
def test_atomic_path_moves_file_into_place_on_success(tmp_path):
    target = tmp_path / "sub" / "out.txt"  # parent is created
    with store.atomic_path(target) as tmp:
        assert tmp.parent == target.parent
        assert tmp != target
        tmp.write_text("new")
        assert not target.exists()  # nothing visible before the block ends
    assert target.read_text() == "new"
    assert sorted(os.listdir(target.parent)) == ["out.txt"]


def test_atomic_path_failure_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with store.atomic_path(target) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["out.txt"]


def test_atomic_path_failure_without_old_target_leaves_nothing(tmp_path):
    target = tmp_path / "set"
    with pytest.raises(KeyboardInterrupt):  # BaseException too: a killed stage
        with store.atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "shard-00000.npz").write_bytes(b"partial")
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_atomic_path_replaces_a_directory_wholesale(tmp_path):
    target = tmp_path / "set"
    target.mkdir()
    (target / "stale.npz").write_bytes(b"old")
    with store.atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "fresh.npz").write_bytes(b"new")
    assert sorted(os.listdir(target)) == ["fresh.npz"]
    assert (target / "fresh.npz").read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["set"]


def test_atomic_path_failure_keeps_old_directory(tmp_path):
    target = tmp_path / "set"
    target.mkdir()
    (target / "keep.npz").write_bytes(b"old")
    with pytest.raises(ValueError):
        with store.atomic_path(target) as tmp:
            tmp.mkdir()
            raise ValueError
    assert sorted(os.listdir(target)) == ["keep.npz"]
    assert sorted(os.listdir(tmp_path)) == ["set"]


def test_atomic_path_replaces_a_file_by_a_directory(tmp_path):
    target = tmp_path / "out"
    target.write_text("file")
    with store.atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("x")
    assert target.is_dir() and (target / "a").read_text() == "x"


def test_atomic_path_clears_a_stale_temp_from_a_killed_run(tmp_path):
    target = tmp_path / "out.txt"
    stale = tmp_path / f".out.txt.tmp-{os.getpid()}"
    stale.mkdir()
    (stale / "junk").write_text("junk")
    with store.atomic_path(target) as tmp:
        assert tmp == stale
        assert not tmp.exists()
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["out.txt"]


def test_atomic_path_clears_the_temp_of_a_dead_process_but_not_of_a_running_one(tmp_path):
    """A SIGKILLed stage leaves its temp beside the output (another pid); the rerun must not leave it there."""
    finished = subprocess.Popen([sys.executable, "-c", ""])
    finished.wait()
    dead = tmp_path / f".out.txt.tmp-{finished.pid}"
    (dead / "shard").mkdir(parents=True)
    running = tmp_path / f".out.txt.tmp-{os.getppid()}"  # pytest's parent: alive while this test runs
    running.write_text("a concurrent writer's")
    store.write_bytes(tmp_path / "out.txt", b"new")
    assert sorted(os.listdir(tmp_path)) == [running.name, "out.txt"]


def test_write_json_sorted_keys_and_stable_bytes(tmp_path):
    path = tmp_path / "m.json"
    store.write_json(path, {"b": 1, "a": [1, 2]})
    first = path.read_bytes()
    store.write_json(path, {"a": [1, 2], "b": 1})
    assert path.read_bytes() == first
    text = first.decode()
    assert text.endswith("\n")
    assert text.index('"a"') < text.index('"b"')
    assert json.loads(text) == {"a": [1, 2], "b": 1}


# ---------------------------------------------------------------- npz
def test_save_npz_round_trip_keeps_dtypes_and_values(tmp_path):
    arrays = {
        "images": make_images(3),
        "offsets": np.array([0, 5, 2**40], dtype=np.int64),
        "scores": np.linspace(0, 1, 7, dtype=np.float32),
        "flags": np.array([True, False]),
        "scalar": np.array(3.5),
    }
    path = tmp_path / "a.npz"
    store.save_npz(path, **arrays)
    loaded = store.load_npz(path)
    assert sorted(loaded) == sorted(arrays)
    for key, value in arrays.items():
        assert loaded[key].dtype == value.dtype, key
        assert loaded[key].shape == value.shape, key
        np.testing.assert_array_equal(loaded[key], value)


def test_save_npz_is_byte_identical_and_has_fixed_dates(tmp_path):
    images = make_images(20)
    offsets = np.arange(21, dtype=np.int64)
    first, second = tmp_path / "one.npz", tmp_path / "two.npz"
    store.save_npz(first, images=images, offsets=offsets)
    store.save_npz(second, offsets=offsets, images=images)  # keyword order does not matter
    assert first.read_bytes() == second.read_bytes()
    store.save_npz(first, images=images, offsets=offsets)  # rewriting gives the same bytes again
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as archive:
        infos = archive.infolist()
    assert [info.filename for info in infos] == ["images.npy", "offsets.npy"]
    assert all(info.date_time == (1980, 1, 1, 0, 0, 0) for info in infos)
    assert all(info.compress_type == zipfile.ZIP_DEFLATED for info in infos)


def test_save_npz_refuses_object_arrays_and_writes_nothing(tmp_path):
    path = tmp_path / "obj.npz"
    with pytest.raises(ValueError, match="'labels'.*object"):
        store.save_npz(path, images=make_images(2), labels=np.array(["a", None], dtype=object))
    assert os.listdir(tmp_path) == []


def test_load_npz_missing_file_names_path(tmp_path):
    path = tmp_path / "nope.npz"
    with pytest.raises(SimcaptchaError, match="nope.npz: no such file"):
        store.load_npz(path)


@pytest.mark.parametrize("content", [b"garbage" * 20, b"PK\x03\x04truncated zip"])
def test_load_npz_garbage_names_path(tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(SimcaptchaError, match=r"bad\.npz: not a readable \.npz file"):
        store.load_npz(path)


def test_load_npz_bad_crc_names_path(tmp_path):
    path = tmp_path / "crc.npz"
    store.save_npz(path, images=np.arange(1000, dtype=np.uint8) % 7)
    data = bytearray(path.read_bytes())
    data[60] ^= 0xFF  # inside the compressed stream of the first member
    path.write_bytes(bytes(data))
    with pytest.raises(SimcaptchaError, match=r"crc\.npz"):
        store.load_npz(path)


def test_load_npz_zero_byte_file_is_a_user_error(tmp_path):
    # BUG (store.py load_npz): np.load raises EOFError ("No data left in file") on an empty file,
    # which the except clause (OSError, ValueError, BadZipFile) does not catch, so a zero-byte shard
    # escapes as a raw EOFError traceback instead of a SimcaptchaError naming the file.
    path = tmp_path / "empty.npz"
    path.write_bytes(b"")
    try:
        store.load_npz(path)
    except SimcaptchaError as error:
        assert "empty.npz" in str(error)
    except EOFError as error:
        pytest.fail(f"load_npz on a zero-byte file raised EOFError({error}) instead of SimcaptchaError")
    else:
        pytest.fail("load_npz on a zero-byte file returned without error")


# ---------------------------------------------------------------- image sets
def test_image_set_round_trip_with_several_shards(tmp_path):
    images = make_images(10)
    labels = ["nan", "0012", "null", "NA", "", "None", "1e3", "true", "a,b", 'q"t']
    manifest = make_manifest(10, labels)
    manifest["extra"] = ["x"] * 10  # extra columns are kept
    directory = tmp_path / "set"
    store.write_image_set(directory, images, manifest, shard_size=3)
    assert sorted(os.listdir(directory)) == [
        "manifest.csv", "shard-00000.npz", "shard-00001.npz", "shard-00002.npz", "shard-00003.npz"]
    assert len(store.load_npz(directory / "shard-00003.npz")["images"]) == 1
    loaded = store.read_image_set(directory)
    assert len(loaded) == 10
    assert loaded.images.dtype == np.uint8
    np.testing.assert_array_equal(loaded.images, images)
    assert loaded.labels == labels
    assert all(type(label) is str for label in loaded.labels)
    assert loaded.names == manifest["name"].tolist()
    assert loaded.manifest["source"].tolist() == ["challenge-17"] * 10
    assert loaded.manifest["extra"].tolist() == ["x"] * 10


def test_image_set_rgb_round_trip(tmp_path):
    images = make_images(5, channels=3)
    store.write_image_set(tmp_path / "rgb", images, make_manifest(5), shard_size=2)
    np.testing.assert_array_equal(store.read_image_set(tmp_path / "rgb").images, images)


def test_image_set_is_byte_identical_when_rewritten(tmp_path):
    images, manifest = make_images(7), make_manifest(7)
    store.write_image_set(tmp_path / "a", images, manifest, shard_size=4)
    store.write_image_set(tmp_path / "b", images, manifest, shard_size=4)
    for name in os.listdir(tmp_path / "a"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_rewriting_image_set_drops_stale_shards(tmp_path):
    directory = tmp_path / "set"
    store.write_image_set(directory, make_images(9), make_manifest(9), shard_size=2)
    assert len(list(directory.glob("shard-*.npz"))) == 5
    images = make_images(3)
    store.write_image_set(directory, images, make_manifest(3), shard_size=2)
    assert sorted(p.name for p in directory.glob("shard-*.npz")) == ["shard-00000.npz", "shard-00001.npz"]
    np.testing.assert_array_equal(store.read_image_set(directory).images, images)


def test_empty_image_set_round_trip(tmp_path):
    directory = tmp_path / "empty"
    store.write_image_set(directory, np.zeros((0, 5, 6), dtype=np.uint8), store.empty_manifest())
    loaded = store.read_image_set(directory)
    assert loaded.images.shape == (0, 5, 6)
    assert len(loaded) == 0
    assert list(loaded.manifest.columns) == ["name", "label", "source"]
    assert loaded.labels == []


def test_write_image_set_rejects_wrong_dtype_and_shape(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        store.write_image_set(tmp_path / "f", np.zeros((2, 4, 4), dtype=np.float32), make_manifest(2))
    with pytest.raises(ValueError, match="uint8"):
        store.write_image_set(tmp_path / "f", np.zeros((2, 4), dtype=np.uint8), make_manifest(2))
    assert not (tmp_path / "f").exists()


def test_write_image_set_row_mismatch_writes_nothing(tmp_path):
    directory = tmp_path / "set"
    with pytest.raises(SimcaptchaError, match=r"set/manifest\.csv: 3 rows for 4 images"):
        store.write_image_set(directory, make_images(4), make_manifest(3))
    assert not directory.exists()


def test_write_image_set_missing_manifest_column(tmp_path):
    manifest = make_manifest(2).drop(columns=["source"])
    with pytest.raises(SimcaptchaError, match="missing column.*source"):
        store.write_image_set(tmp_path / "set", make_images(2), manifest)


def test_shard_size_below_one_is_refused(tmp_path):
    with pytest.raises(SimcaptchaError, match="shard_size"):
        store.write_image_set(tmp_path / "set", make_images(2), make_manifest(2), shard_size=0)
    assert not (tmp_path / "set").exists()


def test_read_image_set_corrupt_shard_names_the_shard(tmp_path):
    directory = tmp_path / "set"
    store.write_image_set(directory, make_images(6), make_manifest(6), shard_size=2)
    (directory / "shard-00001.npz").write_bytes(b"not a zip at all, sorry")
    with pytest.raises(SimcaptchaError) as info:
        store.read_image_set(directory)
    assert str(directory / "shard-00001.npz") in str(info.value)


def test_read_image_set_missing_shard_is_a_row_mismatch(tmp_path):
    directory = tmp_path / "set"
    store.write_image_set(directory, make_images(6), make_manifest(6), shard_size=2)
    (directory / "shard-00002.npz").unlink()
    with pytest.raises(SimcaptchaError) as info:
        store.read_image_set(directory)
    message = str(info.value)
    assert str(directory / "manifest.csv") in message
    assert "6 rows for 4 images" in message


def test_read_image_set_manifest_with_extra_row(tmp_path):
    directory = tmp_path / "set"
    store.write_image_set(directory, make_images(3), make_manifest(3))
    with open(directory / "manifest.csv", "a") as handle:
        handle.write("img999,zzzz,elsewhere\n")
    with pytest.raises(SimcaptchaError, match=r"manifest\.csv: 4 rows for 3 images"):
        store.read_image_set(directory)


def test_read_image_set_missing_manifest_and_missing_directory(tmp_path):
    directory = tmp_path / "set"
    with pytest.raises(SimcaptchaError, match="no such image set"):
        store.read_image_set(directory)
    directory.mkdir()
    with pytest.raises(SimcaptchaError, match=r"no shard-\*\.npz"):
        store.read_image_set(directory)
    store.write_image_set(directory, make_images(2), make_manifest(2))
    (directory / "manifest.csv").unlink()
    with pytest.raises(SimcaptchaError, match=r"manifest\.csv: no such file"):
        store.read_image_set(directory)


def test_read_image_set_shard_without_images_array(tmp_path):
    directory = tmp_path / "set"
    store.write_image_set(directory, make_images(2), make_manifest(2))
    store.save_npz(directory / "shard-00000.npz", pictures=make_images(2))
    with pytest.raises(SimcaptchaError, match=r"shard-00000\.npz: shard has no 'images'"):
        store.read_image_set(directory)


def test_read_manifest_empty_file(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_bytes(b"")
    with pytest.raises(SimcaptchaError, match=r"manifest\.csv: not a readable CSV"):
        store.read_manifest(path)


# ---------------------------------------------------------------- encoded sets
def test_encoded_set_round_trip_exact_bytes(tmp_path):
    blobs = [b"\xff\xd8jpeg-one", b"", b"\x89PNG\r\n\x1a\nrest", bytes(range(256)), b"x" * 1000]
    manifest = make_manifest(5, ["0012", "nan", "null", "abcd", "NaN"])
    directory = tmp_path / "fetched"
    store.write_encoded_set(directory, blobs, manifest, shard_size=2)
    assert len(list(directory.glob("shard-*.npz"))) == 3
    loaded, loaded_manifest = store.read_encoded_set(directory)
    assert loaded == blobs
    assert all(type(blob) is bytes for blob in loaded)
    assert loaded_manifest["label"].tolist() == ["0012", "nan", "null", "abcd", "NaN"]


def test_empty_encoded_set_round_trip(tmp_path):
    store.write_encoded_set(tmp_path / "e", [], store.empty_manifest())
    blobs, manifest = store.read_encoded_set(tmp_path / "e")
    assert blobs == []
    assert len(manifest) == 0 and list(manifest.columns) == ["name", "label", "source"]


def test_encoded_set_corrupt_and_wrong_shards(tmp_path):
    directory = tmp_path / "fetched"
    store.write_encoded_set(directory, [b"a", b"bb", b"ccc"], make_manifest(3), shard_size=2)
    store.save_npz(directory / "shard-00001.npz", images=make_images(1))
    with pytest.raises(SimcaptchaError, match=r"shard-00001\.npz: shard has no 'blobs'/'offsets'"):
        store.read_encoded_set(directory)
    (directory / "shard-00001.npz").write_bytes(b"junk")
    with pytest.raises(SimcaptchaError) as info:
        store.read_encoded_set(directory)
    assert str(directory / "shard-00001.npz") in str(info.value)
    (directory / "shard-00001.npz").unlink()
    with pytest.raises(SimcaptchaError, match=r"manifest\.csv: 3 rows for 2 images"):
        store.read_encoded_set(directory)


def test_manifest_label_with_bare_carriage_return_round_trips(tmp_path):
    # BUG (store.py write_manifest): to_csv(lineterminator="\n") only quotes fields containing "\n", so a
    # field holding a bare "\r" is written unquoted; read_csv then treats the "\r" as a line break and the
    # manifest has one row too many ("2 rows for 1 images").
    labels = ["a\rb"]
    directory = tmp_path / "set"
    store.write_image_set(directory, make_images(1), make_manifest(1, labels))
    try:
        loaded = store.read_image_set(directory).labels
    except SimcaptchaError as error:
        pytest.fail(f"label 'a\\rb' does not survive the manifest round trip: {error}")
    assert loaded == labels


@settings(max_examples=40, deadline=None, database=None)
@given(st.lists(st.text(st.characters(exclude_categories=("Cs",)), max_size=12), min_size=1, max_size=6))
def test_manifest_labels_round_trip_as_text(labels):
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "set"
        store.write_image_set(directory, make_images(len(labels)), make_manifest(len(labels), labels), shard_size=4)
        assert store.read_image_set(directory).labels == labels


def test_the_labelled_set_reads_a_case_insensitive_sites_labels_in_the_charsets_case(tmp_path, monkeypatch):
    """What every stage that reads real labels (evaluate, the readers, the label-budget grid) is given."""
    from simcaptcha.config import RenderConfig
    from simcaptcha.pipeline import BINARIZED, labelled_set

    monkeypatch.chdir(tmp_path)
    manifest = pd.DataFrame({"name": ["a.png", "b.png"], "label": ["AbC1", "xyz"], "source": "s"})
    store.write_image_set(BINARIZED / "labelled", np.zeros((2, 4, 8), dtype=np.uint8), manifest)
    assert labelled_set(RenderConfig(charset="abcxyz1", case_insensitive=True)).labels == ["abc1", "xyz"]
    assert labelled_set(RenderConfig(charset="abcxyz1ABC")).labels == ["AbC1", "xyz"]
