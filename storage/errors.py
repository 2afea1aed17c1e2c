"""Errors of the storage package: the state store, its migrations and the embedded PostgreSQL.

Every storage failure is a `StorageError`, so the daemon can report "the database is the
problem" in one place; the subclasses say which part failed and what to do about it.
"""

from __future__ import annotations

from orchestrator.errors import OrchestratorError


class StorageError(OrchestratorError):
    """The state store failed: check that PostgreSQL is running and reachable at the configured DSN."""


class EmbeddedPostgresError(StorageError):
    """The embedded PostgreSQL could not be started: read the server log under the state directory."""


class MigrationError(StorageError):
    """The database schema could not be migrated: read the message, fix the database, restart."""
