"""Session-wide fixtures: the real storage servers started by ``scripts/services.sh``.

Addresses come from ``scripts/services.env`` (one place for every port), overridable by
environment variables of the same names.  A test that needs a server it cannot reach
fails when ``CI`` is set and is skipped with the reason otherwise.

Every test that needs what ``scripts/services.sh`` provides carries the ``remote`` mark, so
that ``pytest -m "not remote"`` runs the rest with nothing started: a test parametrized
with a remote target (or using a fixture that is) gets it here, other tests are marked in
their module.  A test without the mark that asks for a server fails and says so.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parent.parent
SERVICES_ENV = REPO / "scripts" / "services.env"
S3_TEST_BUCKET = "cloudcote-test"


def _load_services_env() -> dict[str, str]:
    values: dict[str, str] = {}
    if SERVICES_ENV.is_file():
        for line in SERVICES_ENV.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                values[key.strip()] = value.strip().strip("'\"")
    for key in list(values):
        values[key] = os.environ.get(key, values[key])
    return values


SERVICES = _load_services_env()


#: Each remote driver in the form its README row shows (no prefix, the default or named
#: keyspace, tables or bucket), sharing one namespace across test runs: tests on these
#: use names of their own (``unique_prefix``) instead of a driver prefix.
README_TARGETS = ["seaweedfs-readme", "cassandra-readme", "postgresql-readme", "mysql-readme"]
#: The bucket of the README's S3 row.
S3_README_BUCKET = "mail"
#: The targets that live on a server of ``scripts/services.sh``.
REMOTE_TARGETS = frozenset({"seaweedfs", "moto", "cassandra", "postgresql", "mysql",
                            *README_TARGETS})

_running: pytest.Item | None = None


def _names_remote_target(value: object) -> bool:
    if isinstance(value, str):
        return value in REMOTE_TARGETS
    if isinstance(value, tuple | list):
        return any(isinstance(v, str) and v in REMOTE_TARGETS for v in value)
    return False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and any(_names_remote_target(v)
                                        for v in callspec.params.values()):
            item.add_marker(pytest.mark.remote)
        elif {"seaweedfs_bucket", "moto_bucket", "seaweedfs_readme_bucket"} & set(
                getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.remote)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    global _running
    _running = item
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    try:
        return (yield)
    finally:
        global _running
        _running = None


def _check_marked(what: str) -> None:
    """Fail a test that reaches for a server without the ``remote`` mark: ``-m "not remote"``
    must run without one."""
    if _running is not None and _running.get_closest_marker("remote") is None:
        pytest.fail(f"{_running.nodeid} needs {what} but is not marked remote: mark it "
                    "(@pytest.mark.remote) or parametrize it with its target")


def service(key: str) -> str:
    _check_marked(key)
    try:
        return SERVICES[key]
    except KeyError:
        pytest.fail(f"{key} is not set in {SERVICES_ENV} or the environment")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def require_server(name: str, url_or_hostport: str) -> None:
    """Fail (under CI) or skip when ``name`` does not answer at its address."""
    _check_marked(name)
    if "://" in url_or_hostport:
        parts = urlsplit(url_or_hostport)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
    else:
        host, _, port_text = url_or_hostport.split(";")[0].rpartition(":")
        port = int(port_text)
    if _reachable(host, port):
        return
    cannot_run(f"{name} is not reachable at {host}:{port}; "
               f"start it with: bash scripts/services.sh start")


def cannot_run(why: str) -> NoReturn:
    """A test whose server, tool or machine limit is missing: it fails when ``CI`` is set
    (CI must run everything) and is skipped with the reason otherwise."""
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="session")
def seaweedfs_bucket() -> str:
    """The S3 test bucket on SeaweedFS, created once per session (its first write is slow)."""
    endpoint = service("CLOUDCOTE_SEAWEEDFS_ENDPOINT")
    require_server("SeaweedFS", endpoint)
    _ensure_bucket(endpoint, service("CLOUDCOTE_SEAWEEDFS_ACCESS_KEY"),
                   service("CLOUDCOTE_SEAWEEDFS_SECRET_KEY"))
    return S3_TEST_BUCKET


@pytest.fixture(scope="session")
def seaweedfs_readme_bucket() -> str:
    """The bucket of the README's S3 row on SeaweedFS (an operator creates it once)."""
    endpoint = service("CLOUDCOTE_SEAWEEDFS_ENDPOINT")
    require_server("SeaweedFS", endpoint)
    _ensure_bucket(endpoint, service("CLOUDCOTE_SEAWEEDFS_ACCESS_KEY"),
                   service("CLOUDCOTE_SEAWEEDFS_SECRET_KEY"), S3_README_BUCKET)
    return S3_README_BUCKET


@pytest.fixture(scope="session")
def moto_bucket() -> str:
    endpoint = service("CLOUDCOTE_MOTO_ENDPOINT")
    require_server("moto", endpoint)
    _ensure_bucket(endpoint, "testing", "testing")
    return S3_TEST_BUCKET


def ensure_test_buckets(targets: Iterable[str]) -> None:
    """The test bucket on each S3 server among ``targets`` (seaweedfs, moto): for the
    benchmarks, which share the test servers."""
    if "seaweedfs" in targets:
        _ensure_bucket(SERVICES["CLOUDCOTE_SEAWEEDFS_ENDPOINT"],
                       SERVICES["CLOUDCOTE_SEAWEEDFS_ACCESS_KEY"],
                       SERVICES["CLOUDCOTE_SEAWEEDFS_SECRET_KEY"])
    if "moto" in targets:
        _ensure_bucket(SERVICES["CLOUDCOTE_MOTO_ENDPOINT"], "testing", "testing")


def _ensure_bucket(endpoint: str, key: str, secret: str, bucket: str = S3_TEST_BUCKET) -> None:
    import boto3
    from botocore.exceptions import ClientError

    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key,
                          aws_secret_access_key=secret, region_name="us-east-1")
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError:
        client.create_bucket(Bucket=bucket)
    client.close()


def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:16]}"


# --- libfs targets --------------------------------------------------------------------
#
# Each target builds a chain spec for one test, isolated by a fresh prefix (or directory),
# except the README_TARGETS, which are the README's own driver rows with this machine's
# addresses and credentials.  Targets that need a server resolve it through the session
# fixtures above.

DRIVER_TARGETS = ["posix", "seaweedfs", "moto", "cassandra", "postgresql", "mysql"]
WRAPPER_TARGETS = ["compress", "cache", "latency", "metrics", "randomfail"]
ALL_TARGETS = DRIVER_TARGETS + WRAPPER_TARGETS
#: Targets whose store promises atomic create between processes: the race subjects.
#: moto's conditional PUT is check-then-put, so it only runs the functional tests.
RACE_TARGETS = ["posix", "seaweedfs", "cassandra", "postgresql", "mysql", "compress", "cache",
                "randomfail"]


def driver_spec(target: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    prefix = unique_prefix()
    if target == "memory":
        return "memory"  # core/mail's in-memory backend: no libfs chain at all
    if target == "posix":
        return f"posix:{tmp_path / 'fs'}"
    if target == "seaweedfs":
        bucket = request.getfixturevalue("seaweedfs_bucket")
        return (f"s3:bucket={bucket},prefix={prefix},"
                f"endpoint={service('CLOUDCOTE_SEAWEEDFS_ENDPOINT')},"
                f"access_key={service('CLOUDCOTE_SEAWEEDFS_ACCESS_KEY')},"
                f"secret_key={service('CLOUDCOTE_SEAWEEDFS_SECRET_KEY')},part_size=5MB")
    if target == "moto":
        bucket = request.getfixturevalue("moto_bucket")
        return (f"s3:bucket={bucket},prefix={prefix},endpoint="
                f"{service('CLOUDCOTE_MOTO_ENDPOINT')},access_key=testing,secret_key=testing,"
                f"atomic_create=no,part_size=5MB")
    if target == "cassandra":
        hosts = service("CLOUDCOTE_CASSANDRA_HOSTS")
        require_server("Cassandra", hosts)
        return f"cassandra:{hosts},keyspace=cloudcote_test,prefix={prefix}"
    if target == "postgresql":
        dsn = service("CLOUDCOTE_PG_DSN")
        require_server("PostgreSQL", dsn)
        return f"postgresql:{dsn},prefix={prefix}"
    if target == "mysql":
        dsn = service("CLOUDCOTE_MYSQL_DSN")
        require_server("MariaDB", dsn)
        return f"mysql:{dsn},prefix={prefix}"
    if target in README_TARGETS:
        return readme_spec(target, request)
    # Wrapper chains run on posix: the drivers are covered on their own above.
    base = f"posix:{tmp_path / 'fs'}"
    if target == "compress":
        return f"compress:zstd:{base}"
    if target == "cache":
        return f"cache:size=8MB:{base}"
    if target == "latency":
        return f"latency:2ms:{base}"
    if target == "metrics":
        return f"metrics:{base}"
    if target == "randomfail":
        # The retry stage is the "retry helper": it makes the chain whole again.
        return f"retry:attempts=50:randomfail:0.15:{base}"
    raise AssertionError(f"unknown target {target}")


def readme_spec(target: str, request: pytest.FixtureRequest) -> str:
    """The README's driver row for ``target`` (``<driver>-readme``), exactly, but for the
    addresses and credentials of scripts/services.env."""
    if target == "seaweedfs-readme":
        bucket = request.getfixturevalue("seaweedfs_readme_bucket")
        return (f"s3:bucket={bucket},endpoint={service('CLOUDCOTE_SEAWEEDFS_ENDPOINT')},"
                f"access_key={service('CLOUDCOTE_SEAWEEDFS_ACCESS_KEY')},"
                f"secret_key={service('CLOUDCOTE_SEAWEEDFS_SECRET_KEY')}")
    if target == "cassandra-readme":
        hosts = service("CLOUDCOTE_CASSANDRA_HOSTS")
        require_server("Cassandra", hosts)
        return f"cassandra:{hosts},keyspace=mail"
    if target == "postgresql-readme":
        dsn = service("CLOUDCOTE_PG_DSN")
        require_server("PostgreSQL", dsn)
        return f"postgresql:{dsn}"
    if target == "mysql-readme":
        dsn = service("CLOUDCOTE_MYSQL_DSN")
        require_server("MariaDB", dsn)
        return f"mysql:{dsn}"
    raise AssertionError(f"unknown target {target}")


def shared_namespace(request: pytest.FixtureRequest) -> bool:
    """Whether this test's target is a README form, whose namespace other runs share."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is None:
        return False
    values = [v for p in callspec.params.values()
              for v in (p if isinstance(p, tuple | list) else (p,))]
    return any(isinstance(v, str) and v in README_TARGETS for v in values)


@pytest.fixture
def fs_spec(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield driver_spec(request.param, request, tmp_path)
