"""Test-only helpers around the session's PostgreSQL server: DSNs per database, admin statements.

The fixtures in tests/conftest.py use these; a test that needs a second database (the migration
test builds two) can use them too. Admin work runs on a private event loop in a worker thread, so
the fixtures are plain synchronous fixtures usable from sync and async tests alike.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

T = TypeVar("T")

TEMPLATE_DATABASE = "orchestrator_template"


def run_in_fresh_loop(make_coroutine: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a new event loop in a worker thread and return its result."""

    async def main() -> T:
        return await make_coroutine()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, main()).result()


def dsn_for_database(dsn: str, database: str) -> str:
    """The same server as `dsn` (a postgresql:// URL), another database."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"expected a postgresql:// URL, got {dsn!r}: set ORCHESTRATOR_TEST_DSN as a URL")
    return urlunsplit(parts._replace(path="/" + database))


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class PgServer:
    """The PostgreSQL server of the test session, reached through its admin database."""

    admin_dsn: str

    def dsn(self, database: str) -> str:
        return dsn_for_database(self.admin_dsn, database)

    def execute(self, *statements: str) -> None:
        """Run statements (CREATE/DROP DATABASE ...) on the admin database, each on its own."""

        async def run() -> None:
            conn = await asyncpg.connect(self.admin_dsn)
            try:
                for statement in statements:
                    await conn.execute(statement)
            finally:
                await conn.close()

        run_in_fresh_loop(run)

    def create_database(self, template: str | None = None, prefix: str = "test_") -> str:
        """Create a database with a random name (optionally from a template); return its name."""
        name = prefix + secrets.token_hex(6)
        statement = "CREATE DATABASE " + quote_identifier(name)
        if template is not None:
            statement += " TEMPLATE " + quote_identifier(template)
        self.execute(statement)
        return name

    def drop_database(self, name: str) -> None:
        self.execute("DROP DATABASE IF EXISTS " + quote_identifier(name) + " WITH (FORCE)")
