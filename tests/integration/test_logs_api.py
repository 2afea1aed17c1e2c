"""Task logs through the REST API on a real engine: streamed reads of multi-megabyte logs,
Airflow's continuation token and full_content, the per-try cap, and 250-character ids."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from orchestrator.api.app import create_app
from orchestrator.api.logs import PAGE_BYTES
from orchestrator.core.states import RunState, TaskState
from orchestrator.logpaths import task_log_path
from storage.postgres import PostgresStateStore
from tests.apiauth import TOKENS, api_settings, headers
from tests.integration.engine_harness import EngineHarness, running_engine, task_instances, write_dag
from tests.integration.test_cli import clean_env, cli

pytestmark = pytest.mark.anyio

LONG_DAG = "d" * 250
LONG_RUN = "r" * 250
LONG_BASH = "b" * 250
LONG_PYTHON = "p" * 250


@asynccontextmanager
async def engine_with_api(
    store: PostgresStateStore, tmp_path: Path, dag_files: Sequence[Path], **options: Any
) -> AsyncIterator[tuple[EngineHarness, aiohttp.ClientSession, str]]:
    async with running_engine(store, tmp_path / "logs", dag_files, **options) as harness:
        app = create_app(store, harness.engine, harness.logs_dir, harness.task_logs, settings=api_settings())
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            async with aiohttp.ClientSession(headers=headers()) as http:
                yield harness, http, url
        finally:
            await runner.cleanup()


def log_url(dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
    return f"/api/v1/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"


async def get_text(http: aiohttp.ClientSession, url: str, **query: str) -> str:
    async with http.get(url, params=query, headers={"Accept": "text/plain"}) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "text/plain"
        return await response.text()


async def get_json(http: aiohttp.ClientSession, url: str, **query: str) -> tuple[int, Any]:
    async with http.get(url, params=query, headers={"Accept": "application/json"}) as response:
        assert response.content_type == "application/json"
        return response.status, orjson.loads(await response.read())


@pytest.fixture
def work(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


async def test_a_multi_megabyte_log_reads_whole_as_text_in_token_pages_and_as_full_content(
    store: PostgresStateStore, tmp_path: Path, work: Path
) -> None:
    dag_file = write_dag(
        tmp_path / "dags",
        "big",
        """
        with DAG("big"):
            Bash("emit", "head -c 3000000 /dev/urandom | base64 -w 100; echo done")
        """,
        work,
    )
    async with engine_with_api(store, tmp_path, [dag_file]) as (harness, http, url):
        run = await harness.run("big")
        assert run.state == RunState.SUCCESS
        expected = harness.log_path("big", "r1", "emit", 1).read_text()
        assert len(expected) > 4_000_000
        target = url + log_url("big", "r1", "emit")

        assert await get_text(http, target) == expected

        pages: list[str] = []
        token: str | None = None
        while True:
            status, body = await get_json(http, target, **({"token": token} if token else {}))
            assert status == 200
            assert len(body["content"]) <= PAGE_BYTES
            # each page starts where the previous one stopped
            assert expected[len("".join(pages)) :].startswith(body["content"])
            pages.append(body["content"])
            token = body["continuation_token"]
            if token is None:
                break
        assert len(pages) >= 4
        assert "".join(pages) == expected

        status, body = await get_json(http, target, full_content="true")
        assert status == 200
        assert body == {"content": expected, "continuation_token": None}

        # a token read as text/plain: the rest of the log from that position
        _, first = await get_json(http, target)
        rest = await get_text(http, target, token=first["continuation_token"])
        assert first["content"] + rest == expected

        env = clean_env(ORCHESTRATOR_TOKEN=TOKENS["viewer"])
        result = await cli("logs", "big", "r1", "emit", "--url", url, cwd=tmp_path, env=env)
        assert result.code == 0, result.err
        assert result.out == expected


async def test_a_page_never_ends_inside_a_utf8_character_and_bad_parameters_are_400(
    store: PostgresStateStore, tmp_path: Path, work: Path
) -> None:
    dag_file = write_dag(tmp_path / "dags", "u", 'with DAG("u"):\n    Bash("t", "echo x; exit 1")\n', work)
    async with engine_with_api(store, tmp_path, [dag_file]) as (harness, http, url):
        assert (await harness.run("u")).state == RunState.FAILED
        text = "a" * (PAGE_BYTES - 1) + "✓" + "b" * 10 + "é\n"
        harness.log_path("u", "r1", "t", 1).write_text(text)
        target = url + log_url("u", "r1", "t")
        _, first = await get_json(http, target)
        assert first["content"] == "a" * (PAGE_BYTES - 1)
        _, second = await get_json(http, target, token=first["continuation_token"])
        assert second == {"content": "✓" + "b" * 10 + "é\n", "continuation_token": None}

        for query in ({"token": "not-a-token"}, {"token": "e30"}, {"full_content": "maybe"}):
            status, body = await get_json(http, target, **query)
            assert status == 400, query
            assert body["status"] == 400 and body["detail"]


async def test_a_bash_log_past_the_cap_keeps_its_head_a_marker_and_its_tail(
    store: PostgresStateStore, tmp_path: Path, work: Path
) -> None:
    cap = 64 * 1024
    dag_file = write_dag(
        tmp_path / "dags",
        "loud",
        """
        with DAG("loud"):
            Bash("spam", "seq 1 200000; echo the-last-line")
        """,
        work,
    )
    async with engine_with_api(store, tmp_path, [dag_file], log_max_bytes=cap) as (harness, http, url):
        run = await harness.run("loud")
        assert run.state == RunState.SUCCESS
        xcom = [x for x in await store.list_xcoms(run.pk) if x.task_id == "spam"]
        assert [x.value for x in xcom] == ["the-last-line"]  # the XCom is the real last line
        path = harness.log_path("loud", "r1", "spam", 1)
        size = path.stat().st_size
        assert cap < size < cap + 1024  # head + tail + marker lines + footer
        log = await get_text(http, url + log_url("loud", "r1", "spam"))
        assert log.startswith("[") and "started: seq 1 200000" in log.splitlines()[0]
        assert "\n1\n2\n3\n" in log
        assert "reached logs.max_bytes_per_try (65536 bytes)" in log
        assert "bytes of output were dropped; the last 32768 bytes follow" in log
        assert "\n199999\n200000\nthe-last-line\n" in log
        assert ": success (exit code 0)" in log.rstrip().splitlines()[-1]
        assert "\n100000\n" not in log  # the middle is gone


async def test_250_character_ids_run_bash_and_python_tasks_and_serve_their_logs(
    store: PostgresStateStore, tmp_path: Path, work: Path
) -> None:
    dag_file = write_dag(
        tmp_path / "dags",
        "long",
        f"""
        def talk():
            print("python-output")
            return 1

        with DAG({LONG_DAG!r}):
            Bash({LONG_BASH!r}, "echo bash-output") >> Python({LONG_PYTHON!r}, talk)
        """,
        work,
    )
    async with engine_with_api(store, tmp_path, [dag_file]) as (harness, http, url):
        run = await harness.run(LONG_DAG, LONG_RUN)
        tis = await task_instances(store, run.pk)
        assert run.state == RunState.SUCCESS, tis
        assert {ti.state for ti in tis.values()} == {TaskState.SUCCESS}
        for task_id, output in ((LONG_BASH, "bash-output"), (LONG_PYTHON, "python-output")):
            path = task_log_path(harness.logs_dir, LONG_DAG, LONG_RUN, task_id, -1, 1)
            assert all(len(os.fsencode(part)) <= 255 for part in path.parts)
            assert output in path.read_text()
            log = await get_text(http, url + log_url(LONG_DAG, LONG_RUN, task_id))
            assert output in log and ": success" in log.rstrip().splitlines()[-1]
