"""DVC remotes for real: push the tiny pipeline from one clone to a server on loopback, pull it into a fresh git clone,
and find there nothing to run and nothing to transfer.

The servers are Debian's (.ci/install-servers): OpenSSH's sshd, and Ceph's RadosGW for S3. Without root or those
packages the tests skip. Push and pull times are printed (pytest -s).
"""

import hashlib
import time
from pathlib import Path

import pytest
import s3fs

import servers
from helpers import GIT, copy_project, out_paths, run_tool

pytestmark = pytest.mark.slow  # each test starts a server and pushes a reproduced tiny pipeline through it

REMOTE = "storage"
COMMIT = [*GIT, "commit", "-qm"]


@pytest.fixture(scope="module")
def reproduced(tiny_template, tmp_path_factory) -> Path:
    """The tiny pipeline, run once and committed with its dvc.lock and metrics; each test pushes from a copy."""
    root = copy_project(tiny_template, tmp_path_factory.mktemp("reproduced") / "project")
    run_tool(["git", "add", "-A"], root)
    run_tool([*COMMIT, "reproduced"], root)
    return root


@servers.needs(*servers.SSH_PROGRAMS)
def test_ssh_round_trip(reproduced, tmp_path):
    with servers.sshd(tmp_path / "sshd") as server:
        url = f"ssh://{server.user}@127.0.0.1:{server.port}{tmp_path / 'storage'}"
        _round_trip(reproduced, tmp_path, url, settings={}, secrets={"keyfile": str(server.keyfile)})


@servers.needs(*servers.CEPH_PROGRAMS)
def test_s3_round_trip(reproduced, tmp_path):
    with servers.ceph_rgw(tmp_path / "ceph") as server:
        secrets = {"access_key_id": server.access_key, "secret_access_key": server.secret_key}
        s3fs.S3FileSystem(key=server.access_key, secret=server.secret_key,
                          client_kwargs={"endpoint_url": server.endpoint}).mkdir("simcaptcha")
        _round_trip(reproduced, tmp_path, "s3://simcaptcha/dvc", settings={"endpointurl": server.endpoint},
                    secrets=secrets)


def _round_trip(reproduced: Path, work: Path, url: str, settings: dict[str, str], secrets: dict[str, str]) -> None:
    """Pushes from a copy of the reproduced project, with the remote committed and its secrets kept local, pulls
    into a git clone of that copy given the secrets again, and checks the clone is complete and up to date."""
    first = copy_project(reproduced, work / "first")
    run_tool(["dvc", "remote", "add", "-d", REMOTE, url], first)
    for option, value in settings.items():
        run_tool(["dvc", "remote", "modify", REMOTE, option, value], first)
    _keep_secrets(first, secrets)
    run_tool(["git", "add", ".dvc/config"], first)
    run_tool([*COMMIT, f"remote {REMOTE}"], first)
    push = _timed(["dvc", "push", "--run-cache"], first)

    second = work / "second"
    run_tool(["git", "clone", "-q", str(first), str(second)], work)
    _keep_secrets(second, secrets)
    pull = _timed(["dvc", "pull", "--run-cache"], second)
    print(f"\n{url.split(':')[0]}: push {push:.1f} s, pull {pull:.1f} s")

    repro = run_tool(["dvc", "repro"], second)
    assert "Running stage" not in repro and "Data and pipelines are up to date." in repro, repro
    status = run_tool(["dvc", "status", "--cloud"], second)
    assert f"Cache and remote '{REMOTE}' are in sync." in status, status
    assert _output_digests(second) == _output_digests(first)


def _keep_secrets(repo: Path, secrets: dict[str, str]) -> None:
    """Sets the remote's credentials in .dvc/config.local, which git ignores, and checks none reached .dvc/config."""
    for option, value in secrets.items():
        run_tool(["dvc", "remote", "modify", "--local", REMOTE, option, value], repo)
    committed = (repo / ".dvc" / "config").read_text()
    assert not any(value in committed for value in secrets.values())
    assert run_tool(["git", "check-ignore", ".dvc/config.local"], repo).strip() == ".dvc/config.local"


def _timed(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    run_tool(args, cwd)
    return time.perf_counter() - start


def _output_digests(repo: Path) -> dict[str, str]:
    """The md5 of every file of every stage output that dvc.lock records, by path."""
    files = [path for out in out_paths(repo) for path in [repo / out, *(repo / out).rglob("*")] if path.is_file()]
    assert files, f"no stage output in {repo}"
    return {str(path.relative_to(repo)): hashlib.md5(path.read_bytes()).hexdigest() for path in files}
