"""Real storage servers on loopback for the DVC remote tests: OpenSSH's sshd, and a one-node Ceph cluster with RadosGW
for S3.

Each server lives in a directory of its own (config, keys, data, sockets, logs) and touches nothing outside it but
sshd's compiled-in /run/sshd; starting waits until it answers, for at most READY_SECONDS, and leaving the context
kills every process it started. The programs come from Debian's packages, which .ci/install-servers installs.
"""

import getpass
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from secrets import token_hex

import pytest

READY_SECONDS = 120
SSHD = "/usr/sbin/sshd"  # sshd re-executes itself, so it must be started by its absolute path
SSH_PROGRAMS = (SSHD, "ssh-keygen")
CEPH_PROGRAMS = ("monmaptool", "ceph-mon", "ceph-osd", "ceph", "radosgw", "radosgw-admin")
SSHD_PRIVILEGE_SEPARATION = Path("/run/sshd")


def needs(*programs: str) -> pytest.MarkDecorator:
    """Skips a test that starts these servers where it cannot: sshd needs root, and the programs need installing."""
    missing = [program for program in programs if shutil.which(program) is None]
    if os.geteuid() != 0:
        reason = "needs root to start the servers"
    elif missing:
        reason = f"{', '.join(missing)} not installed: run .ci/install-servers as root"
    else:
        reason = ""
    return pytest.mark.skipif(bool(reason), reason=reason)


def free_port() -> int:
    """A high loopback port that nothing listens on now; the server binds it a moment later."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Processes:
    """The daemons of one server, with their output in its log directory; stop() ends them, last started first."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, args: list[str]) -> None:
        with (self.logs / f"{name}.out").open("wb") as output:
            process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
        self.started.append((name, process))

    def wait_until(self, ready: Callable[[], bool], what: str) -> None:
        """Returns once ready() holds; fails at once when a daemon exits, and after READY_SECONDS."""
        deadline = time.monotonic() + READY_SECONDS
        while not ready():
            for name, process in self.started:
                if process.poll() is not None:
                    pytest.fail(f"{name} exited with {process.returncode} while waiting for {what}:\n"
                                f"{self._tail(name)}", pytrace=False)
            if time.monotonic() > deadline:
                tails = "\n".join(self._tail(name) for name, _ in self.started)
                pytest.fail(f"{what} not within {READY_SECONDS} s (logs in {self.logs}):\n{tails}", pytrace=False)
            time.sleep(0.5)

    def stop(self) -> None:
        for _, process in reversed(self.started):
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:  # a Ceph daemon still telling a stopped monitor it is leaving
                process.kill()
                process.wait()

    def _tail(self, name: str) -> str:
        lines = (self.logs / f"{name}.out").read_text(errors="replace").splitlines()
        return "\n".join(f"{name}: {line}" for line in lines[-20:])


def _check(args: list[str], timeout: float = READY_SECONDS) -> str:
    """The output of a set-up command, which must succeed in time."""
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@dataclass(frozen=True)
class SSHServer:
    port: int
    user: str
    keyfile: Path  # the client's private key, the only one authorised


@contextmanager
def sshd(root: Path) -> Iterator[SSHServer]:
    """sshd on 127.0.0.1 with its own config, host key and authorized_keys, letting this user in by key only."""
    root.mkdir(parents=True)
    for key in ("host_key", "client_key"):
        _check(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key, "-f", str(root / key)])
    shutil.copy(root / "client_key.pub", root / "authorized_keys")
    port = free_port()
    config = root / "sshd_config"
    config.write_text(f"""\
ListenAddress 127.0.0.1:{port}
HostKey {root / "host_key"}
AuthorizedKeysFile {root / "authorized_keys"}
PidFile {root / "sshd.pid"}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# pytest's temporary directories lie under the world-writable /tmp, which strict modes refuse
StrictModes no
Subsystem sftp internal-sftp
""")
    made_privilege_separation = not SSHD_PRIVILEGE_SEPARATION.exists()
    SSHD_PRIVILEGE_SEPARATION.mkdir(mode=0o755, exist_ok=True)
    processes = Processes(root)
    try:
        processes.start("sshd", [SSHD, "-D", "-e", "-f", str(config)])  # -e: its log to sshd.out, not syslog
        processes.wait_until(lambda: _ssh_banner(port), f"sshd on port {port}")
        yield SSHServer(port, getpass.getuser(), root / "client_key")
    finally:
        processes.stop()
        if made_privilege_separation:
            SSHD_PRIVILEGE_SEPARATION.rmdir()


def _ssh_banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as connection:
            return connection.recv(8).startswith(b"SSH-")
    except OSError:
        return False


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str


@contextmanager
def ceph_rgw(root: Path) -> Iterator[S3Server]:
    """A one-node Ceph cluster in root: a monitor, an OSD keeping its objects in memory, and RadosGW serving S3 on
    127.0.0.1 to one user made for the purpose."""
    for directory in ("run", "log", "mon", "osd", "crash", "rgw"):
        (root / directory).mkdir(parents=True)
    fsid, mon_port, rgw_port = uuid.uuid4(), free_port(), free_port()
    mon_address = f"[v2:127.0.0.1:{mon_port}]"
    conf = root / "ceph.conf"
    conf.write_text(_ceph_conf(root, fsid, mon_address, rgw_port))
    ceph = ["-c", str(conf)]
    cli = ["ceph", *ceph, "--connect-timeout", "10"]
    _check(["monmaptool", "--create", "--addv", "a", mon_address, "--fsid", str(fsid), str(root / "monmap")])
    _check(["ceph-mon", *ceph, "--mkfs", "-i", "a", "--monmap", str(root / "monmap")])
    processes = Processes(root / "log")
    try:
        processes.start("ceph-mon", ["ceph-mon", *ceph, "-f", "-i", "a"])
        processes.wait_until(lambda: _succeeds([*cli, "mon", "stat"]), f"the Ceph monitor on port {mon_port}")
        osd_uuid = str(uuid.uuid4())
        osd_id = _check([*cli, "osd", "new", osd_uuid]).strip()
        (root / "osd" / f"ceph-{osd_id}").mkdir()
        _check(["ceph-osd", *ceph, "--mkfs", "-i", osd_id, "--osd-uuid", osd_uuid])
        processes.start("ceph-osd", ["ceph-osd", *ceph, "-f", "-i", osd_id])
        processes.wait_until(lambda: _up_osds(cli) == 1, "the Ceph OSD")
        processes.start("radosgw", ["radosgw", *ceph, "-f", "-n", "client.rgw"])
        endpoint = f"http://127.0.0.1:{rgw_port}"
        processes.wait_until(lambda: _answers(endpoint), f"RadosGW at {endpoint}")
        access_key, secret_key = token_hex(10).upper(), token_hex(20)
        _check(["radosgw-admin", *ceph, "user", "create", "--uid", "dvc", "--display-name", "dvc",
                "--access-key", access_key, "--secret-key", secret_key])
        yield S3Server(endpoint, access_key, secret_key)
    finally:
        processes.stop()


def _ceph_conf(root: Path, fsid: uuid.UUID, mon_address: str, rgw_port: int) -> str:
    return f"""\
[global]
fsid = {fsid}
mon_host = {mon_address}
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_msgr1 = false
# no keys anywhere; with authentication off, the messenger's default secure mode would hang, so crc throughout
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
ms_cluster_mode = crc
ms_service_mode = crc
ms_client_mode = crc
ms_mon_cluster_mode = crc
ms_mon_service_mode = crc
ms_mon_client_mode = crc
# every path in root, none under /var/lib/ceph, /var/run/ceph, /var/log/ceph or /etc/ceph
keyring = {root}/keyring
run_dir = {root}/run
admin_socket = {root}/run/$cluster-$name.asok
pid_file = {root}/run/$cluster-$name.pid
log_file = {root}/log/$cluster-$name.log
mon_cluster_log_file = {root}/log/$cluster.$channel.log
crash_dir = {root}/crash
mon_data = {root}/mon/$cluster-$id
osd_data = {root}/osd/$cluster-$id
# one OSD holding one copy of everything, in memory
osd_objectstore = memstore
memstore_device_bytes = {1 << 30}
osd_pool_default_size = 1
osd_pool_default_min_size = 1
mon_allow_pool_size_one = true
osd_pool_default_pg_autoscale_mode = off
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
mon_warn_on_pool_no_redundancy = false

[client]
# the command-line tools run beside the daemons: no admin socket for them to fight over
admin_socket =

[client.rgw]
admin_socket = {root}/run/$cluster-$name.asok
rgw_frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw_data = {root}/rgw
"""


def _succeeds(args: list[str]) -> bool:
    return subprocess.run(args, capture_output=True, timeout=30).returncode == 0


def _up_osds(cli: list[str]) -> int:
    result = subprocess.run([*cli, "osd", "stat", "--format", "json"], capture_output=True, timeout=30)
    return json.loads(result.stdout)["num_up_osds"] if result.returncode == 0 else 0


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
