"""End to end: the start-up rules of a daemon on a database other daemons share.

- A second daemon on the same database starts, and both are listed as alive.
- A database migrated by a newer orchestrator (a schema version this one does not know) makes
  the daemon refuse to start, naming that version.
- A daemon configured with the `daemon.daemon_id` of a live one refuses to start, naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest

from tests.e2e.harness import Daemon, db_fetch, wait_for

pytestmark = pytest.mark.e2e

TOKEN = "e2e-startup-shared-token-0123456789"
TOKENS = '[[api.tokens]]\nname = "e2e"\nrole = "admin"\ntoken_env = "E2E_STARTUP_TOKEN"\n'


def replica(make_daemon: Callable[..., Daemon], name: str, daemon_id: str) -> Daemon:
    return make_daemon(
        replica=name,
        extra_config=TOKENS,
        token=TOKEN,
        env={"E2E_STARTUP_TOKEN": TOKEN, "ORCHESTRATOR_DAEMON__DAEMON_ID": daemon_id},
    )


def alive(reader: Daemon) -> set[str]:
    """The daemons `reader` lists as alive (GET /api/v1/daemons)."""
    response = reader.get("/api/v1/daemons")
    assert response.status == 200, response.text
    return {d["daemon_id"] for d in response.body["daemons"] if d["alive"]}


def lists_alive(reader: Daemon, expected: set[str]) -> bool:
    return alive(reader) == expected


def alive_in_database(dsn: str) -> set[str]:
    rows = db_fetch(dsn, "SELECT daemon_id FROM daemon WHERE lease_until > now()")
    return {row["daemon_id"] for row in rows}


def error_line(daemon: Daemon) -> str:
    lines = [line for line in daemon.logs().splitlines() if line.startswith("error:")]
    assert lines, f"no error line in the daemon's output:\n{daemon.logs()[-3000:]}"
    return lines[-1]


def test_a_second_daemon_on_the_same_database_starts_and_both_are_listed(
    make_daemon: Callable[..., Daemon], database_dsn: str
) -> None:
    first = replica(make_daemon, "a", "first").start()
    second = replica(make_daemon, "b", "second").start()
    for reader in (first, second):
        wait_for(partial(lists_alive, reader, {"first", "second"}), 10, f"{reader.replica} to list both")
    assert first.get("/health").status == 200 and second.get("/health").status == 200


def test_a_database_of_a_newer_schema_version_is_refused_naming_the_version(
    make_daemon: Callable[..., Daemon], database_dsn: str
) -> None:
    db_fetch(database_dsn, "INSERT INTO schema_migrations (version, name) VALUES (9999, 'from_the_future')")
    daemon = make_daemon()
    with pytest.raises(AssertionError, match="the daemon exited with 1"):
        daemon.start()
    line = error_line(daemon)
    assert "9999" in line and "Upgrade this orchestrator" in line, line
    assert alive_in_database(database_dsn) == set()


def test_a_daemon_id_a_live_daemon_has_is_refused_naming_it(
    make_daemon: Callable[..., Daemon], database_dsn: str
) -> None:
    live = replica(make_daemon, "a", "replica-7").start()
    twin = replica(make_daemon, "b", "replica-7")
    with pytest.raises(AssertionError, match="the daemon exited with 1"):
        twin.start()
    assert "replica-7" in error_line(twin)
    assert live.get("/health").status == 200
    assert alive(live) == {"replica-7"}
