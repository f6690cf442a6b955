"""scripts/services.sh itself: start twice from cold and twice from warm, then stop.

It runs a private set of the quick servers (MariaDB, moto, SeaweedFS) under a temporary
state directory on free ports of its own, so the suite's servers are never touched.  Every
launch goes through a ``setsid`` that pauses before it runs: the fork that ``cmd &`` makes
then stays a copy of the script for a while, as it does by chance on a loaded machine, and
a readiness check that judged that copy instead of the server reported "FAILED to start".
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import cannot_run

pytestmark = pytest.mark.remote

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "services.sh"
SERVICES = ("mysql", "moto", "seaweedfs")
PAUSE_BEFORE_EXEC = 0.3  # seconds the forked child stays the script before it execs


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _private_ports() -> dict[str, int]:
    """Seven free ports below the ephemeral range (an outgoing connection could take one
    there), SeaweedFS's five gRPC ports (each plus 10000) free as well."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    names = ("mysql", "moto", "s3", "master", "volume", "filer", "admin")
    grpc = {"s3", "master", "volume", "filer", "admin"}
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(12000, low - 10000 - len(names))
        ports = {n: base + i for i, n in enumerate(names)}
        if all(_free(p) and (n not in grpc or _free(p + 10000)) for n, p in ports.items()):
            return ports
    raise RuntimeError("no block of free ports found")


def _require_tools() -> None:
    """Fail (under CI) or skip when a server binary that services.sh launches is missing."""
    venv_bin = Path(sys.prefix) / "bin"
    missing = [str(venv_bin / t) for t in ("weed", "moto_server") if not (venv_bin / t).exists()]
    missing += [t for t in ("mariadb-install-db", "mariadb", "setsid") if not shutil.which(t)]
    if not (shutil.which("mariadbd") or Path("/usr/sbin/mariadbd").exists()):
        missing.append("mariadbd")
    if missing:
        cannot_run(f"missing {', '.join(missing)}: run scripts/bootstrap.sh and "
                   f"scripts/services.sh")


@pytest.fixture
def private_env() -> Iterator[dict[str, str]]:
    _require_tools()
    state = Path(tempfile.mkdtemp(prefix="cloudcote-services-"))
    state.chmod(0o755)  # the servers' own OS users (when we are root) must reach it
    p = _private_ports()
    setsid = shutil.which("setsid")
    env = dict(os.environ)
    env.update({
        "CLOUDCOTE_SERVICES_DIR": str(state),
        "CLOUDCOTE_VENV": sys.prefix,
        "CLOUDCOTE_MYSQL_DSN": f"mysql://cloudcote:cloudcote@127.0.0.1:{p['mysql']}/cloudcote",
        "CLOUDCOTE_MOTO_ENDPOINT": f"http://127.0.0.1:{p['moto']}",
        "CLOUDCOTE_SEAWEEDFS_ENDPOINT": f"http://127.0.0.1:{p['s3']}",
        "CLOUDCOTE_SEAWEEDFS_MASTER_PORT": str(p["master"]),
        "CLOUDCOTE_SEAWEEDFS_VOLUME_PORT": str(p["volume"]),
        "CLOUDCOTE_SEAWEEDFS_FILER_PORT": str(p["filer"]),
        "CLOUDCOTE_SEAWEEDFS_ADMIN_PORT": str(p["admin"]),
        # bash runs an exported function named like a command instead of the command
        "BASH_FUNC_setsid%%": f"() {{ sleep {PAUSE_BEFORE_EXEC}; exec {setsid} \"$@\"; }}",
    })
    try:
        yield env
    finally:
        _run(env, "stop", *SERVICES)
        shutil.rmtree(state, ignore_errors=True)


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True,
                          text=True, timeout=600)


def _ports(env: dict[str, str]) -> list[int]:
    return [int(env[k].rsplit(":", 1)[1].split("/")[0]) for k in
            ("CLOUDCOTE_MYSQL_DSN", "CLOUDCOTE_MOTO_ENDPOINT", "CLOUDCOTE_SEAWEEDFS_ENDPOINT")]


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=3).close()
    except OSError:
        return False
    return True


def _start_twice(env: dict[str, str]) -> None:
    for attempt, how in ((1, "started in"), (2, "already running, reused")):
        r = _run(env, "start", *SERVICES)
        report = f"start #{attempt}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
        assert r.returncode == 0, report
        assert "FAILED" not in r.stdout + r.stderr, report
        for s in SERVICES:
            assert any(line.startswith(f"{s}: up on ") and how in line
                       for line in r.stdout.splitlines()), report
        assert f"services.sh: all up ({' '.join(SERVICES)})" in r.stdout, report
        status = _run(env, "status", *SERVICES)
        assert status.returncode == 0, status.stdout + status.stderr
        assert all(_answers(p) for p in _ports(env))


def _stop(env: dict[str, str]) -> None:
    r = _run(env, "stop", *SERVICES)
    assert r.returncode == 0, r.stdout + r.stderr
    for s in SERVICES:
        assert f"{s}: stopped" in r.stdout.splitlines(), r.stdout + r.stderr
        assert not (Path(env["CLOUDCOTE_SERVICES_DIR"]) / s / "pid").exists()
    assert not any(_answers(p) for p in _ports(env))
    status = _run(env, "status", *SERVICES)
    assert status.returncode != 0
    assert all(f"{s}: down " in status.stdout for s in SERVICES), status.stdout


def test_start_twice_from_cold_and_from_warm(private_env: dict[str, str]) -> None:
    _start_twice(private_env)  # cold: empty state directory
    _stop(private_env)
    _start_twice(private_env)  # warm: the servers' data kept from the first round
    _stop(private_env)
