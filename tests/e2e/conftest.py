"""Fixtures for end-to-end tests: a daemon factory on a fresh database that cleans up after itself."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Daemon


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A directory the unprivileged postgres user can traverse (pytest's tmp_path is 0700)."""
    with tempfile.TemporaryDirectory(prefix="orch-e2e-", dir="/tmp") as raw:
        path = Path(raw)
        path.chmod(0o755)
        yield path


@pytest.fixture
def make_daemon(workdir: Path, database_dsn: str) -> Iterator[Callable[..., Daemon]]:
    """Build daemons rooted in `workdir`, on this test's database unless database_dsn=None."""
    daemons: list[Daemon] = []

    def make(**kwargs: object) -> Daemon:
        kwargs.setdefault("database_dsn", database_dsn)
        daemon = Daemon(root=workdir, **kwargs)  # type: ignore[arg-type]
        daemons.append(daemon)
        return daemon

    yield make
    for daemon in daemons:
        if daemon.process is not None:
            daemon.kill()
    embedded = workdir / "state" / "postgres"
    if embedded.is_dir():
        from storage.embedded import EmbeddedPostgres

        EmbeddedPostgres(embedded).stop()
