"""Artifacts on disk: atomic writes, deterministic .npz files, and image sets as a few shards plus a manifest.

An image set is a directory holding ``manifest.csv`` (one row per image: name, label, source, ...) and
``shard-00000.npz``, ``shard-00001.npz``, ... DVC hashes and moves a handful of files far faster than
one file per image, and the manifest keeps the set readable without Python.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import shutil
import stat
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import SimcaptchaError

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("name", "label", "source")
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _stale_temps(path: Path) -> list[Path]:
    """Temporary paths beside ``path`` whose writer is gone (a killed run), or is this process."""
    stale = []
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        pid = candidate.name.rpartition("-")[2]
        if pid.isdigit() and (int(pid) == os.getpid() or not _is_running(int(pid))):
            stale.append(candidate)
    return stale


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (file or directory); move it into place only on success.

    A killed or failing stage therefore never leaves a half-written artifact where DVC would cache it, and the
    temporary path a killed run left is removed by the next write of the same path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    for stale in _stale_temps(path):
        _remove(stale)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    _remove(path)
    os.replace(tmp, path)


def regular_file_size(path: Path, limit: int, limit_name: str, what: str = "") -> int:
    """The size of a regular file of at most ``limit`` bytes: a FIFO or a device would block or never end, and
    what is read is held in memory. ``what`` names the path in messages (default: the path)."""
    what = what or str(path)
    status = path.stat()  # FileNotFoundError and other OSErrors are the caller's to word
    if not stat.S_ISREG(status.st_mode):
        raise SimcaptchaError(f"{what}: not a regular file (a FIFO, socket or device is never read)")
    if status.st_size > limit:
        raise SimcaptchaError(f"{what}: {status.st_size} bytes, above {limit_name} {limit}")
    return status.st_size


def read_regular_file(path: Path, limit: int, limit_name: str, what: str = "") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (``regular_file_size``), even one that grows."""
    regular_file_size(path, limit, limit_name, what)
    with open(path, "rb") as stream:
        data = stream.read(limit + 1)
    if len(data) > limit:
        raise SimcaptchaError(f"{what or path}: more than {limit_name} {limit} bytes")
    return data


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: object) -> None:
    """Write JSON with sorted keys so identical content gives identical bytes."""
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | os.PathLike, missing_hint: str) -> object:
    """A JSON file another stage wrote, with a one-line error naming it when it is missing or torn."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise SimcaptchaError(f"{path}: no such file ({missing_hint})") from None
    except json.JSONDecodeError as error:
        raise SimcaptchaError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SimcaptchaError(f"{path}: cannot be read ({error.__class__.__name__})") from None


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Like ``np.savez_compressed`` but byte-identical for identical arrays (fixed zip timestamps)."""
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
            for key in sorted(arrays):
                array = np.asarray(arrays[key])
                if array.dtype == object:
                    raise ValueError(f"array {key!r} has dtype object, which would need pickle")
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, array, allow_pickle=False)
                info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, buffer.getvalue())


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise SimcaptchaError(f"{path}: no such file (run the stage that makes it first)") from None
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise SimcaptchaError(f"{path}: not a readable .npz file ({error})") from None


def _check_manifest(manifest: pd.DataFrame, count: int, directory: Path) -> pd.DataFrame:
    missing = [column for column in MANIFEST_COLUMNS if column not in manifest.columns]
    if missing:
        raise SimcaptchaError(f"{directory}/{MANIFEST}: missing column(s) {', '.join(missing)}")
    if len(manifest) != count:
        raise SimcaptchaError(f"{directory}/{MANIFEST}: {len(manifest)} rows for {count} images")
    return manifest.reset_index(drop=True)


def empty_manifest() -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series(dtype=str) for column in MANIFEST_COLUMNS})


def write_csv(path: str | os.PathLike, table: pd.DataFrame, quoting: int = csv.QUOTE_MINIMAL) -> None:
    """A table as CSV, atomically and byte-stable (no index, "\n" line ends), for git, DVC and ``dvc plots``."""
    buffer = io.StringIO()
    table.to_csv(buffer, index=False, lineterminator="\n", quoting=quoting)
    write_bytes(path, buffer.getvalue().encode())


def write_manifest(path: Path, manifest: pd.DataFrame) -> None:
    """Every field quoted, so any name or label (a bare carriage return included) reads back as written."""
    write_csv(path, manifest, csv.QUOTE_NONNUMERIC)


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest with every column as text: a label such as ``nan`` or ``0012`` stays what it is."""
    path = Path(path)
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise SimcaptchaError(f"{path}: no such file (run the stage that makes it first)") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise SimcaptchaError(f"{path}: not a readable CSV ({error})") from None


def _shard_ranges(count: int, shard_size: int) -> list[range]:
    if shard_size < 1:
        raise SimcaptchaError(f"shard_size must be at least 1, got {shard_size}")
    return [range(start, min(start + shard_size, count)) for start in range(0, max(count, 1), shard_size)]


@dataclass
class ImageSet:
    """Decoded images (uint8, N×H×W or N×H×W×C) with their manifest rows."""

    images: np.ndarray
    manifest: pd.DataFrame

    @property
    def names(self) -> list[str]:
        return self.manifest["name"].tolist()

    @property
    def labels(self) -> list[str]:
        return self.manifest["label"].tolist()

    def __len__(self) -> int:
        return len(self.images)


def write_image_set(directory: str | os.PathLike, images: np.ndarray, manifest: pd.DataFrame,
                    shard_size: int = 10000) -> None:
    directory = Path(directory)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(f"images must be uint8 N×H×W[×C], got {images.dtype} {images.shape}")
    manifest = _check_manifest(manifest, len(images), directory)
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        for index, rows in enumerate(_shard_ranges(len(images), shard_size)):
            save_npz(tmp / f"shard-{index:05d}.npz", images=images[rows.start:rows.stop])
        write_manifest(tmp / MANIFEST, manifest)


def _shard_paths(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise SimcaptchaError(f"{directory}: no such image set (run the stage that makes it first)")
    shards = sorted(directory.glob("shard-*.npz"))
    if not shards:
        raise SimcaptchaError(f"{directory}: image set has no shard-*.npz files")
    return shards


def read_image_set(directory: str | os.PathLike) -> ImageSet:
    directory = Path(directory)
    paths = _shard_paths(directory)
    parts = [load_npz(path) for path in paths]
    for path, part in zip(paths, parts):
        if "images" not in part:
            raise SimcaptchaError(f"{path}: shard has no 'images' array")
    images = np.concatenate([part["images"] for part in parts])
    manifest = _check_manifest(read_manifest(directory / MANIFEST), len(images), directory)
    return ImageSet(images, manifest)


def write_encoded_set(directory: str | os.PathLike, blobs: Sequence[bytes], manifest: pd.DataFrame,
                      shard_size: int = 10000) -> None:
    """Store encoded image files (JPEG, PNG, ...) exactly as fetched, concatenated per shard."""
    directory = Path(directory)
    manifest = _check_manifest(manifest, len(blobs), directory)
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        for index, rows in enumerate(_shard_ranges(len(blobs), shard_size)):
            chunk = [blobs[i] for i in rows]
            offsets = np.cumsum([0] + [len(blob) for blob in chunk], dtype=np.int64)
            data = np.frombuffer(b"".join(chunk), dtype=np.uint8)
            save_npz(tmp / f"shard-{index:05d}.npz", blobs=data, offsets=offsets)
        write_manifest(tmp / MANIFEST, manifest)


def read_encoded_set(directory: str | os.PathLike) -> tuple[list[bytes], pd.DataFrame]:
    directory = Path(directory)
    blobs: list[bytes] = []
    for path in _shard_paths(directory):
        part = load_npz(path)
        if "blobs" not in part or "offsets" not in part:
            raise SimcaptchaError(f"{path}: shard has no 'blobs'/'offsets' arrays")
        data, offsets = part["blobs"].tobytes(), part["offsets"]
        blobs.extend(data[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1))
    manifest = _check_manifest(read_manifest(directory / MANIFEST), len(blobs), directory)
    return blobs, manifest

