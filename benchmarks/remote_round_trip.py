"""Benchmark: push the whole default pipeline's artifacts and run-cache over SSH, pull them into a fresh clone.

Usage: python benchmarks/remote_round_trip.py   (as root, after dvc repro, with the outputs committed)
Starts the same loopback sshd as tests/test_remote.py (.ci/install-servers installs it), pushes this workspace's
cache to a remote in a temporary folder, git-clones HEAD, pulls there, and checks that clone has nothing to run.
Prints the times and sizes, writes metrics/bench-remote.json.
"""

import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the sshd the remote tests start, and their environment

import servers  # noqa: E402
from helpers import TOOLS_ENV  # noqa: E402

from simcaptcha.pipeline import METRICS  # noqa: E402
from simcaptcha.store import write_json  # noqa: E402


def run(args: list[str], cwd: Path) -> tuple[str, float]:
    start = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=TOOLS_ENV, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout + result.stderr, time.perf_counter() - start


def folder_bytes(folder: Path) -> tuple[int, int]:
    files = [path for path in folder.rglob("*") if path.is_file()]
    return sum(path.stat().st_size for path in files), len(files)


def main() -> None:
    run(["dvc", "status", "--quiet"], REPO)  # refuses a workspace that is not up to date
    with tempfile.TemporaryDirectory() as scratch, servers.sshd(Path(scratch) / "sshd") as server:
        storage, clone = Path(scratch) / "storage", Path(scratch) / "clone"
        url = f"ssh://{server.user}@127.0.0.1:{server.port}{storage}"
        remote = ["-r", "bench"]
        run(["dvc", "remote", "add", "--local", "bench", url], REPO)
        try:
            run(["dvc", "remote", "modify", "--local", "bench", "keyfile", str(server.keyfile)], REPO)
            _, push = run(["dvc", "push", "--run-cache", *remote], REPO)
        finally:
            run(["dvc", "remote", "remove", "--local", "bench"], REPO)
        run(["git", "clone", "-q", str(REPO), str(clone)], Path(scratch))
        run(["dvc", "remote", "add", "--local", "bench", url], clone)
        run(["dvc", "remote", "modify", "--local", "bench", "keyfile", str(server.keyfile)], clone)
        _, pull = run(["dvc", "pull", "--run-cache", *remote], clone)
        repro, _ = run(["dvc", "repro"], clone)
        if "Running stage" in repro:
            sys.exit(f"the fresh clone ran stages after the pull:\n{repro}")
        size, files = folder_bytes(storage)
        figures = {"remote": "ssh (loopback sshd)", "pushed_megabytes": round(size / 1e6, 1), "pushed_files": files,
                   "push_seconds": round(push, 2), "pull_seconds": round(pull, 2),
                   "repro_in_clone": "Data and pipelines are up to date." in repro}
    print(f"push {figures['push_seconds']} s, pull {figures['pull_seconds']} s: {figures['pushed_megabytes']} MB "
          f"in {files} files; fresh clone up to date: {figures['repro_in_clone']}")
    write_json(METRICS / "bench-remote.json", figures)


if __name__ == "__main__":
    main()
