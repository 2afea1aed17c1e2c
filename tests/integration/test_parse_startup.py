"""The daemon opens its API while DAG files are still being parsed: a file that hangs at start-up
delays nothing but itself, and SIGTERM still stops the daemon promptly."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Daemon, wait_for

HANGS = """
import time
import os
open({started!r}, "w").write(str(os.getpid()))
time.sleep(600)
from orchestrator import DAG, Bash
with DAG("slow_to_parse"):
    Bash("t", "true")
"""

GOOD = "from orchestrator import DAG, Bash\nwith DAG('quick'):\n    Bash('t', 'true')\n"


@pytest.fixture
def daemon(tmp_path: Path, database_dsn: str) -> Iterator[Daemon]:
    # parse_timeout far above the start-up deadline: the API must not wait for the hanging file
    made = Daemon(root=tmp_path, database_dsn=database_dsn, extra_config="\n[dags]\nparse_timeout = 300\n")
    yield made
    if made.process is not None:
        made.kill()


def test_the_api_answers_while_a_dag_file_hangs_at_start_up(daemon: Daemon, tmp_path: Path) -> None:
    started = tmp_path / "hang.started"
    daemon.write_dag("hangs.py", HANGS.format(started=str(started)))
    daemon.write_dag("quick.py", GOOD)

    daemon.start(timeout=25)  # /health answers 200 (the old daemon waited out a 30 s parse first)

    wait_for(started.exists, 30, "the hanging file to be parsing")
    daemon.wait_dag("quick", timeout=30)
    daemon.trigger("quick", dag_run_id="while-parsing")
    assert daemon.wait_run("quick", "while-parsing")["state"] == "success"
    # the DAG of the file still being parsed is not loaded yet: 404, as for any unknown DAG
    refused = daemon.post("/api/v1/dags/slow_to_parse/dagRuns", {})
    assert refused.status == 404, refused.text
    assert daemon.get("/api/v1/importErrors").body["import_errors"] == []
    assert daemon.stop(signal.SIGTERM, timeout=30) == 0
    parse = int(started.read_text())
    wait_for(lambda: is_gone(parse), 10, f"the hanging parse {parse} to end with the daemon")


def is_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
