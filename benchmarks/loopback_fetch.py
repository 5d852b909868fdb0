"""Benchmark: run a target's data half with its sources served over loopback HTTP instead of read from disk.

Usage (from the repository root, with ../shared beside it):
    python benchmarks/loopback_fetch.py targets/hackmit2017.yaml [--through mask]
Serves ../shared on 127.0.0.1, rewrites the target's ../shared paths as http://127.0.0.1:PORT/... URLs, runs
`simcaptcha target` on that file up to the given stage, and prints the stage metrics it produced.
"""

import argparse
import functools
import json
import subprocess
import sys
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

SHARED = Path("..") / "shared"


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def as_urls(value, base: str):
    """Replace every '../shared/...' string in a params tree with the same path under ``base``."""
    if isinstance(value, dict):
        return {key: as_urls(item, base) for key, item in value.items()}
    if isinstance(value, list):
        return [as_urls(item, base) for item in value]
    if isinstance(value, str) and value.startswith(f"{SHARED}/"):
        return base + value[len(f"{SHARED}/"):]
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target")
    parser.add_argument("--through", default="mask", help="last stage to run")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(SHARED)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}/"
    overrides = as_urls(yaml.safe_load(Path(args.target).read_text()), base)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        yaml.safe_dump(overrides, handle)
    try:
        code = subprocess.call(["simcaptcha", "target", handle.name, args.through])
    finally:
        server.shutdown()
        Path(handle.name).unlink()
    for name in ("fetch", "binarize", "mask"):
        path = Path("metrics") / f"{name}.json"
        if path.exists():
            print(name, json.dumps(json.loads(path.read_text()), sort_keys=True))
    sys.exit(code)


if __name__ == "__main__":
    main()
