"""Session-wide fixtures: a real PostgreSQL for every test that needs one.

One server per test session (initdb once, fsync off), one migrated template database, and a
fresh copy of the template per test, so tests never see each other's rows. Set
ORCHESTRATOR_TEST_DSN (a postgresql:// URL to an admin database) to use an existing server.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from storage.embedded import EmbeddedPostgres
from storage.migrate import migrate_dsn
from storage.postgres import PostgresStateStore
from tests.pgserver import TEMPLATE_DATABASE, PgServer, quote_identifier, run_in_fresh_loop


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL server (embedded, in a temp dir under /tmp, unless ORCHESTRATOR_TEST_DSN)."""
    external = os.environ.get("ORCHESTRATOR_TEST_DSN")
    if external:
        yield PgServer(admin_dsn=external)
        return
    base = Path(tempfile.mkdtemp(prefix="orch-test-pg-", dir="/tmp"))
    base.chmod(0o755)  # the server runs as `postgres` when the tests run as root
    server = EmbeddedPostgres(base / "pg", durable=False)
    try:
        server.ensure_started()
        yield PgServer(admin_dsn=server.dsn("postgres"))
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_template_dsn(pg_server: PgServer) -> str:
    """A migrated database every test database is copied from."""
    template = quote_identifier(TEMPLATE_DATABASE)
    pg_server.execute("DROP DATABASE IF EXISTS " + template + " WITH (FORCE)", "CREATE DATABASE " + template)
    dsn = pg_server.dsn(TEMPLATE_DATABASE)
    run_in_fresh_loop(lambda: migrate_dsn(dsn))
    return dsn


@pytest.fixture
def database_dsn(pg_server: PgServer, pg_template_dsn: str) -> Iterator[str]:
    """A fresh migrated database for this test only, dropped afterwards."""
    name = pg_server.create_database(template=TEMPLATE_DATABASE)
    try:
        yield pg_server.dsn(name)
    finally:
        pg_server.drop_database(name)


@pytest.fixture
async def store(database_dsn: str) -> AsyncIterator[PostgresStateStore]:
    """A PostgresStateStore connected to this test's database."""
    connected = await PostgresStateStore.connect(database_dsn)
    try:
        yield connected
    finally:
        await connected.close()
