"""`orchestrator runs DAG --follow` as a user runs it: a subprocess following the event stream of a
real API server, fed by a real engine running real tasks on a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import anyio
import pytest
from aiohttp import web

from orchestrator.api import create_app
from storage.postgres import PostgresStateStore
from tests.apiauth import TOKENS, api_settings, headers
from tests.integration.engine_harness import EngineHarness, running_engine, write_dag
from tests.integration.test_cli import clean_env

pytestmark = pytest.mark.anyio

DEADLINE = 30.0


class Follower:
    """The CLI following a DAG's runs in a child process; its stdout read line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    async def line_with(self, text: str) -> str:
        assert self.process.stdout is not None
        with anyio.fail_after(DEADLINE):
            while True:
                raw = await self.process.stdout.readline()
                assert raw, f"the CLI exited before printing {text!r}; it printed {self.lines}"
                line = raw.decode().rstrip("\n")
                self.lines.append(line)
                if text in line:
                    return line


@asynccontextmanager
async def follower(url: str, dag_id: str, cwd: Path) -> AsyncIterator[Follower]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator",
        "runs",
        dag_id,
        "--follow",
        "--url",
        url,
        cwd=cwd,
        env=clean_env(ORCHESTRATOR_TOKEN=TOKENS["admin"]),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield Follower(process)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def start_api(harness: EngineHarness, logs: Path, port: int = 0) -> tuple[web.AppRunner, str]:
    app = create_app(
        harness.store,
        harness.engine,
        logs,
        harness.task_logs,
        settings=api_settings(),
        events=harness.engine.events,
    )
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def trigger(url: str, dag_id: str, run_id: str) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/api/v1/dags/{dag_id}/dagRuns", json={"dag_run_id": run_id}, headers=headers()) as r,
    ):
        assert r.status == 200, await r.text()


async def test_runs_follow_prints_the_runs_then_their_state_changes_until_ctrl_c(
    store: PostgresStateStore, tmp_path: Path
) -> None:
    files = [
        write_dag(
            tmp_path / "dags",
            "pair",
            'with DAG("pair"):\n    Bash("a", "true") >> Bash("b", "true")\n',
            tmp_path,
        ),
        write_dag(tmp_path / "dags", "lone", 'with DAG("lone"):\n    Bash("only", "true")\n', tmp_path),
    ]
    async with running_engine(store, tmp_path / "logs", files) as harness:
        runner, url = await start_api(harness, tmp_path / "logs")
        try:
            await trigger(url, "pair", "before")
            async with follower(url, "pair", tmp_path) as cli:
                await cli.line_with("dag_run_id")  # the table of runs comes first
                await cli.line_with("before")
                await trigger(url, "lone", "elsewhere")  # another DAG: not printed
                await trigger(url, "pair", "r1")
                await cli.line_with("run r1  queued")
                await cli.line_with("task r1 a  try 1  running")
                await cli.line_with("run r1  success")
                cli.process.send_signal(signal.SIGINT)
                with anyio.fail_after(DEADLINE):
                    code = await cli.process.wait()
                assert code == 0
                assert not [line for line in cli.lines if "elsewhere" in line or "only" in line]
                tasks = [line.split("  ")[1] for line in cli.lines if "  task r1 " in line]
                assert tasks.index("task r1 a") < tasks.index("task r1 b")
        finally:
            await runner.cleanup()


async def test_runs_follow_reconnects_when_the_server_comes_back(
    store: PostgresStateStore, tmp_path: Path
) -> None:
    files = [write_dag(tmp_path / "dags", "lone", 'with DAG("lone"):\n    Bash("only", "true")\n', tmp_path)]
    async with running_engine(store, tmp_path / "logs", files) as harness:
        runner, url = await start_api(harness, tmp_path / "logs")
        port = runner.addresses[0][1]
        async with follower(url, "lone", tmp_path) as cli:
            try:
                await cli.line_with("(none)")  # no runs yet: listed once the stream is open
                await trigger(url, "lone", "r1")
                await cli.line_with("run r1  success")
                await runner.cleanup()  # the stream ends: the CLI reconnects until the API is back
                runner, url = await start_api(harness, tmp_path / "logs", port)
                # a new API keeps no events of the old one: the CLI is told, and lists the runs again
                await cli.line_with("dag_run_id")
                await trigger(url, "lone", "r2")
                await cli.line_with("run r2  success")
            finally:
                await runner.cleanup()
        assert cli.process.stderr is not None
        errors = (await cli.process.stderr.read()).decode()
        assert "reconnecting" in errors and "events were missed" in errors
