"""Airflow's official clients against the real API server, a real engine and real shell tasks.

The 3.x client (`apache-airflow-client` 3.x) speaks /api/v2 with a bearer token; the 2.x client
speaks /api/v1 with basic auth. Both are installed from the package index by scripts/bootstrap
into their own directories (they share the import name `airflow_client`), and each drives the
server from its own process (tests/clients/drive_v*.py) with only that directory on PYTHONPATH,
printing what it saw as JSON. A client that is not installed fails the test, saying how to
install it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

from orchestrator.api.app import create_app
from storage.postgres import PostgresStateStore
from tests.apiauth import TOKENS, api_settings
from tests.integration.engine_harness import running_engine, write_dag

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ROOT / ".venv" / "airflow-clients"
SCRIPTS = ROOT / "tests" / "clients"
#: the client versions scripts/bootstrap installs
VERSIONS = {"v3": "3.3.2", "v2": "2.10.0"}
CLIENT_TIMEOUT = 90.0

GREETER = """
with DAG("greeter", tags=["clients"]):
    hello = Bash("hello", 'echo "greeting: {{ dag_run.conf["greeting"] }}"')
    hello >> Bash("bye", "echo bye")
"""


def client_dir(name: str) -> Path:
    """Where the client `name` is installed; fails the test (not a skip) if it is not."""
    target = CLIENTS / name
    stamp = target / ".installed"
    if not stamp.is_file() or stamp.read_text().strip() != VERSIONS[name]:
        pytest.fail(
            f"apache-airflow-client {VERSIONS[name]} is not installed in {target}: run scripts/bootstrap "
            f"(it runs pip install --target {target} apache-airflow-client=={VERSIONS[name]})"
        )
    return target


async def drive(name: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run tests/clients/drive_<name>.py with that client first on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = str(client_dir(name))
    script = SCRIPTS / f"drive_{name}.py"
    with anyio.fail_after(CLIENT_TIMEOUT):
        return await anyio.run_process([sys.executable, str(script), *args], env=env, check=False)


def output(done: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    """What the script printed; fails the test with its stderr if it failed."""
    if done.returncode != 0:
        pytest.fail(f"{done.args[1]} failed ({done.returncode}):\n{done.stderr.decode()[-6000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@asynccontextmanager
async def served_engine(store: PostgresStateStore, tmp_path: Path) -> AsyncIterator[str]:
    """A running engine with the greeter DAG, and the API over it on 127.0.0.1: its base URL."""
    work = tmp_path / "work"
    work.mkdir()
    dag_file = write_dag(tmp_path / "dags", "greeter", GREETER, work)
    async with running_engine(store, tmp_path / "logs", [dag_file]) as harness:
        app = create_app(store, harness.engine, harness.logs_dir, harness.task_logs, settings=api_settings())
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        try:
            yield f"http://127.0.0.1:{runner.addresses[0][1]}"
        finally:
            await runner.cleanup()


async def test_the_3x_client_lists_triggers_with_conf_and_reads_the_run_its_tasks_and_logs(
    store: PostgresStateStore, tmp_path: Path
) -> None:
    client_dir("v3")
    async with served_engine(store, tmp_path) as url:
        done = await drive("v3", url, TOKENS["admin"], "greeter")
    seen = output(done)
    assert seen["dag_ids"] == ["greeter"]
    assert seen["total_entries"] == 1
    assert seen["dag"] == {"dag_id": "greeter", "is_stale": False, "bundle_name": "dags-folder"}
    assert (seen["paused"], seen["unpaused"]) == (True, False)
    assert seen["triggered"]["conf"] == {"greeting": "hello from v3"}
    assert seen["triggered"]["run_type"] == "manual"
    assert seen["triggered"]["state"] in ("queued", "running")
    assert seen["triggered"]["logical_date_has_offset"] is True
    assert seen["run"]["state"] == "success"
    assert seen["run"]["conf"] == {"greeting": "hello from v3"}
    assert seen["listed_run_ids"] == [seen["triggered"]["dag_run_id"]]
    assert seen["task_instances"] == {"hello": "success", "bye": "success"}
    assert seen["task_instance"]["try_number"] == 1
    assert "greeting: hello from v3" in seen["logs"]["hello"]
    assert "bye" in seen["logs"]["bye"]
    assert seen["health"] == "healthy"
    assert seen["version"]
    assert seen["missing_dag"]["status"] == 404
    assert isinstance(seen["missing_dag"]["body"]["detail"], str)


async def test_the_2x_client_lists_triggers_with_conf_and_reads_the_run_its_tasks_and_logs_over_v1(
    store: PostgresStateStore, tmp_path: Path
) -> None:
    client_dir("v2")
    async with served_engine(store, tmp_path) as url:
        done = await drive("v2", url, TOKENS["admin"], "greeter")
    seen = output(done)
    assert seen["dag_ids"] == ["greeter"]
    assert seen["total_entries"] == 1
    assert seen["dag"] == {"dag_id": "greeter", "is_active": True}
    assert (seen["paused"], seen["unpaused"]) == (True, False)
    assert seen["triggered"] == {"dag_run_id": "from-v2", "conf": {"greeting": "hello from v2"}}
    assert seen["run"] == {"state": "success", "conf": {"greeting": "hello from v2"}}
    assert seen["listed_run_ids"] == ["from-v2"]
    assert seen["task_instances"] == {"hello": "success", "bye": "success"}
    assert "greeting: hello from v2" in seen["logs"]["hello"]
    assert "bye" in seen["logs"]["bye"]
    assert seen["health"] == "healthy"
    assert seen["missing_dag"]["status"] == 404
    assert seen["missing_dag"]["body"]["status"] == 404
