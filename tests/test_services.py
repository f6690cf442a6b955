"""Each storage server that scripts/services.sh starts answers a real write and read-back,
through its own client library (the libfs drivers are tested in the conformance suite)."""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import urlsplit

import pytest

from .conftest import require_server, service

pytestmark = pytest.mark.remote


def test_postgresql_row_round_trip() -> None:
    import asyncpg

    dsn = service("CLOUDCOTE_PG_DSN")
    require_server("PostgreSQL", dsn)

    async def main() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("CREATE TEMP TABLE probe (k text PRIMARY KEY, v bytea)")
            await conn.execute("INSERT INTO probe VALUES ($1, $2)", "k", b"\x00\xffv")
            assert await conn.fetchval("SELECT v FROM probe WHERE k = $1", "k") == b"\x00\xffv"
        finally:
            await conn.close()

    asyncio.run(main())


def test_mariadb_row_round_trip() -> None:
    import aiomysql

    dsn = service("CLOUDCOTE_MYSQL_DSN")
    require_server("MariaDB", dsn)
    url = urlsplit(dsn)

    async def main() -> None:
        conn = await aiomysql.connect(host=url.hostname, port=url.port or 3306,
                                      user=url.username, password=url.password or "",
                                      db=url.path.lstrip("/"))
        try:
            async with conn.cursor() as cur:
                await cur.execute("CREATE TEMPORARY TABLE probe (k VARCHAR(10) PRIMARY KEY, "
                                  "v LONGBLOB)")
                await cur.execute("INSERT INTO probe VALUES (%s, %s)", ("k", b"\x00\xffv"))
                await cur.execute("SELECT v FROM probe WHERE k = %s", ("k",))
                assert (await cur.fetchone())[0] == b"\x00\xffv"
                await cur.execute("SELECT VERSION()")
                assert "MariaDB" in (await cur.fetchone())[0]
        finally:
            conn.close()

    asyncio.run(main())


def test_cassandra_row_round_trip() -> None:
    from cassandra.cluster import Cluster

    hosts = service("CLOUDCOTE_CASSANDRA_HOSTS")
    require_server("Cassandra", hosts)
    host, _, port = hosts.split(";")[0].rpartition(":")
    cluster = Cluster([host], port=int(port))
    try:
        session = cluster.connect()
        version = session.execute("SELECT release_version FROM system.local").one()[0]
        assert version.startswith("5.")
        session.execute("CREATE KEYSPACE IF NOT EXISTS cloudcote_probe WITH replication = "
                        "{'class': 'SimpleStrategy', 'replication_factor': 1}")
        session.execute("CREATE TABLE IF NOT EXISTS cloudcote_probe.kv (k text PRIMARY KEY, "
                        "v blob)")
        key = uuid.uuid4().hex
        applied = session.execute("INSERT INTO cloudcote_probe.kv (k, v) VALUES (%s, %s) "
                                  "IF NOT EXISTS", (key, b"v1")).one()[0]
        again = session.execute("INSERT INTO cloudcote_probe.kv (k, v) VALUES (%s, %s) "
                                "IF NOT EXISTS", (key, b"v2")).one()[0]
        assert applied is True and again is False
        row = session.execute("SELECT v FROM cloudcote_probe.kv WHERE k = %s", (key,)).one()
        assert row[0] == b"v1"
    finally:
        cluster.shutdown()


def _s3_round_trip(endpoint: str, key_id: str, secret: str) -> None:
    import boto3
    from botocore.exceptions import ClientError

    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key_id,
                          aws_secret_access_key=secret, region_name="us-east-1")
    bucket = "cloudcote-probe"
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError:
        client.create_bucket(Bucket=bucket)
    key = f"probe/{uuid.uuid4().hex}"
    client.put_object(Bucket=bucket, Key=key, Body=b"\x00\xffv", IfNoneMatch="*")
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"\x00\xffv"
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"other", IfNoneMatch="*")
        raise AssertionError("a second conditional PUT must be refused")
    except ClientError as exc:
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] in (409, 412)
    client.delete_object(Bucket=bucket, Key=key)
    client.close()


def test_seaweedfs_object_round_trip() -> None:
    endpoint = service("CLOUDCOTE_SEAWEEDFS_ENDPOINT")
    require_server("SeaweedFS", endpoint)
    _s3_round_trip(endpoint, service("CLOUDCOTE_SEAWEEDFS_ACCESS_KEY"),
                   service("CLOUDCOTE_SEAWEEDFS_SECRET_KEY"))


def test_seaweedfs_enforces_credentials() -> None:
    import boto3
    from botocore.exceptions import ClientError

    endpoint = service("CLOUDCOTE_SEAWEEDFS_ENDPOINT")
    require_server("SeaweedFS", endpoint)
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="wrong",
                          aws_secret_access_key="wrong", region_name="us-east-1")
    try:
        client.list_buckets()
        raise AssertionError("SeaweedFS accepted wrong credentials")
    except ClientError as exc:
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    finally:
        client.close()


def test_moto_object_round_trip() -> None:
    endpoint = service("CLOUDCOTE_MOTO_ENDPOINT")
    require_server("moto", endpoint)
    _s3_round_trip(endpoint, "testing", "testing")
