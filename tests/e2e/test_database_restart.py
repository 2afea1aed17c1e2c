"""A PostgreSQL restart in the middle of a run, under a daemon process: every connection of the
daemon (the pool, the commit connection, the heartbeat's lease, the LISTEN connection) comes
back, the run goes on, nothing runs twice and nothing is lost.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from storage.embedded import EmbeddedPostgres
from tests.e2e.harness import Daemon, wait_for

CHAIN = """
from orchestrator import DAG, Bash

W = {work!r}

with DAG("chain", default_args={{"cwd": W}}):
    t1 = Bash("t1", "echo t1 >> ran")
    t2 = Bash("t2", "echo t2 >> ran; while [ ! -e gate ]; do sleep 0.01; done")
    t3 = Bash("t3", "echo t3 >> ran")
    t1 >> t2 >> t3
"""


@pytest.fixture
def private_server() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this test's own, which it may restart."""
    base = Path(tempfile.mkdtemp(prefix="orch-restart-", dir="/tmp"))
    base.chmod(0o755)
    server = EmbeddedPostgres(base / "pg", durable=False)
    try:
        server.ensure_started()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_a_postgresql_restart_mid_run_is_carried_through_by_the_daemon(
    private_server: EmbeddedPostgres, make_daemon: Callable[..., Daemon], workdir: Path
) -> None:
    work = workdir / "work"
    work.mkdir()
    daemon = make_daemon(database_dsn=private_server.dsn())
    daemon.write_dag("chain.py", CHAIN.format(work=str(work)))
    daemon.start()
    daemon.wait_dag("chain")
    daemon.trigger("chain", dag_run_id="across-a-restart")
    wait_for(lambda: (work / "ran").exists() and "t2" in (work / "ran").read_text(), 30, "t2 to start")

    private_server.stop()
    private_server.ensure_started()
    (work / "gate").touch()

    assert daemon.wait_run("chain", "across-a-restart", timeout=60)["state"] == "success"
    assert (work / "ran").read_text().split() == ["t1", "t2", "t3"]  # each once
    tis = daemon.get("/api/v1/dags/chain/dagRuns/across-a-restart/taskInstances").body["task_instances"]
    assert {ti["task_id"]: ti["try_number"] for ti in tis} == {"t1": 1, "t2": 1, "t3": 1}
    # after the restart, runs still start: the LISTEN connection and admission work again
    daemon.trigger("chain", dag_run_id="after-the-restart")
    assert daemon.wait_run("chain", "after-the-restart", timeout=60)["state"] == "success"
    [me] = daemon.get("/api/v1/daemons").body["daemons"]
    assert me["alive"] is True
    assert daemon.stop(signal.SIGTERM) == 0
