"""The embedded PostgreSQL launcher: a real initdb and pg_ctl, in a temp dir of its own."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from storage.embedded import EmbeddedPostgres, embedded_data_dir, find_pg_bin_dir, socket_path_fits
from storage.errors import EmbeddedPostgresError
from tests.pgserver import run_in_fresh_loop


@pytest.fixture(scope="module")
def base_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="orch-embedded-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def embedded(base_dir: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(base_dir / "state" / "postgres", durable=False)
    try:
        yield server
    finally:
        server.stop()


def postmaster_pid(server: EmbeddedPostgres) -> int:
    return int((server.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])


def fetchval(dsn: str, query: str) -> object:
    async def run() -> object:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(query)
        finally:
            await conn.close()

    return run_in_fresh_loop(run)


def test_ensure_started_twice_reuses_the_running_server(embedded: EmbeddedPostgres) -> None:
    dsn = embedded.ensure_started()
    pid = postmaster_pid(embedded)

    assert embedded.ensure_started() == dsn == embedded.dsn()
    assert postmaster_pid(embedded) == pid
    assert fetchval(dsn, "SELECT current_database()") == "orchestrator"
    assert fetchval(dsn, "SHOW listen_addresses") == ""  # unix socket only, no TCP
    assert fetchval(dsn, "SHOW fsync") == "off"
    assert embedded.log_file.is_file()


def test_data_survives_stop_and_start(embedded: EmbeddedPostgres) -> None:
    dsn = embedded.ensure_started()
    fetchval(dsn, "CREATE TABLE IF NOT EXISTS kept AS SELECT 42 AS answer")

    embedded.stop()
    assert not embedded.is_running()
    embedded.stop()  # stopping a stopped server is a no-op
    assert embedded.ensure_started() == dsn

    assert fetchval(dsn, "SELECT answer FROM kept") == 42


def test_a_failed_start_reports_the_server_log(embedded: EmbeddedPostgres) -> None:
    embedded.ensure_started()
    misconfigured = EmbeddedPostgres(embedded.data_dir, durable=False, port=99999)

    with pytest.raises(EmbeddedPostgresError, match=r"did not start[\s\S]*99999 is outside the valid range"):
        misconfigured.ensure_started()

    # the data directory is not harmed: the well-configured launcher starts it again
    dsn = embedded.ensure_started()
    assert fetchval(dsn, "SELECT 1") == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="the postgres user only matters when running as root")
def test_a_parent_the_postgres_user_cannot_enter_is_named(base_dir: Path) -> None:
    closed = base_dir / "closed"
    closed.mkdir(mode=0o700)
    server = EmbeddedPostgres(closed / "state", durable=False)

    with pytest.raises(EmbeddedPostgresError, match=rf"cannot enter {closed} .*chmod o\+x {closed}"):
        server.ensure_started()


@pytest.mark.skipif(os.geteuid() != 0, reason="the postgres user only matters when running as root")
def test_a_state_dir_the_postgres_user_cannot_reach_gets_its_cluster_in_a_system_folder(
    base_dir: Path,
) -> None:
    home = base_dir / "root-home"
    home.mkdir(mode=0o700)
    state = home / "clone" / "state"
    system = base_dir / "var-lib-orchestrator"

    chosen = embedded_data_dir(state, system_root=system)
    assert chosen.parent == system and chosen.name.startswith("postgres-")
    assert embedded_data_dir(state, system_root=system) == chosen  # the same on every start
    assert (
        embedded_data_dir(base_dir / "open" / "state", system_root=system)
        == base_dir / "open" / "state" / "postgres"
    )
    server = EmbeddedPostgres(chosen, durable=False)
    try:
        assert fetchval(server.ensure_started(), "SELECT 1") == 1
    finally:
        server.stop()


def test_a_long_data_dir_gets_a_short_socket_dir() -> None:
    long_dir = Path("/tmp") / ("x" * 120) / "postgres"
    server = EmbeddedPostgres(long_dir, port=5432)

    assert server.socket_dir.parent == Path("/tmp")
    assert socket_path_fits(server.socket_dir, 5432)
    assert server.socket_dir == EmbeddedPostgres(long_dir).socket_dir  # stable across restarts
    assert EmbeddedPostgres(Path("/srv/state/postgres")).socket_dir == Path("/srv/state/postgres/sock")


@pytest.mark.parametrize(
    ("data_dir", "database", "expected"),
    [
        ("/srv/pg", "orchestrator", "postgresql://postgres@/orchestrator?host=/srv/pg/sock&port=5432"),
        ("/srv/my pg", "postgres", "postgresql://postgres@/postgres?host=/srv/my%20pg/sock&port=5432"),
    ],
)
def test_dsn_reaches_the_unix_socket(data_dir: str, database: str, expected: str) -> None:
    assert EmbeddedPostgres(Path(data_dir)).dsn(database) == expected


def test_missing_binaries_say_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(EmbeddedPostgresError, match=r"apt-get install postgresql"):
        find_pg_bin_dir(tmp_path)


def test_the_newest_installed_version_is_chosen(tmp_path: Path) -> None:
    for version in ("9.6", "15", "13", "not-a-version"):
        bin_dir = tmp_path / version / "bin"
        bin_dir.mkdir(parents=True)
        (bin_dir / "initdb").touch()
        (bin_dir / "pg_ctl").touch()
    assert find_pg_bin_dir(tmp_path) == tmp_path / "15" / "bin"
