"""The v1 operations that change runs, task instances and DAGs, end to end: real HTTP on
127.0.0.1, the real engine with the local executor running real processes, a real PostgreSQL.

Marking, clearing and deleting go through the engine, which changes the runs it drives in memory
and commits before it acts: the tests check the database (what a restart would see), the processes
(a marked task's work is stopped) and what runs next (downstream tasks, cleared tasks).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from orchestrator.api import create_app
from orchestrator.core.states import RunState, TaskState
from storage.postgres import PostgresStateStore
from tests.apiauth import TOKENS, api_settings, headers
from tests.integration.engine_harness import (
    EngineHarness,
    running_engine,
    task_instances,
    wait_for,
    wait_run,
    wait_run_state,
    wait_ti,
    write_dag,
)
from tests.integration.test_api import serve

pytestmark = pytest.mark.anyio

SLEEPER = """
with DAG("sleeper", default_args={"cwd": W}):
    a = Bash("a", "echo $$ > a.pid; exec sleep 300")
    b = Bash("b", "echo b >> b.txt")
    a >> b
"""

FLAKY = """
with DAG("flaky", default_args={"cwd": W}):
    a = Bash("a", "echo a >> a.txt")
    b = Bash("b", "echo b >> b.txt; test -e ok")
    c = Bash("c", "echo c >> c.txt")
    a >> b >> c
"""


@dataclass
class Ops:
    url: str
    http: aiohttp.ClientSession
    engine: EngineHarness
    store: PostgresStateStore
    work: Path

    async def call(self, method: str, path: str, json: Any = None, role: str = "admin") -> tuple[int, Any]:
        async with self.http.request(method, self.url + path, json=json, headers=headers(role)) as response:
            body = await response.read()
            if not body:
                return response.status, None
            return response.status, await response.json(content_type=None)


@pytest.fixture
async def ops(store: PostgresStateStore, work: Path, dags: Path, logs: Path) -> AsyncIterator[Ops]:
    files = [write_dag(dags, "sleeper", SLEEPER, work), write_dag(dags, "flaky", FLAKY, work)]
    async with running_engine(store, logs, files, kill_grace=1.0) as harness:
        app = create_app(store, harness.engine, logs, task_logs=harness.task_logs, settings=api_settings())
        runner, url = await serve(app)
        try:
            async with aiohttp.ClientSession() as http:
                yield Ops(url, http, harness, store, work)
        finally:
            await runner.cleanup()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def sleeping_pid(ops: Ops) -> int:
    """Trigger sleeper/r1 and wait until its task a runs (its pid written)."""
    run, _ = await ops.engine.trigger("sleeper")
    await wait_ti(ops.store, run.pk, "a", [TaskState.RUNNING])
    pid_file = ops.work / "a.pid"

    async def written() -> int | None:
        text = pid_file.read_text().strip() if pid_file.exists() else ""
        return int(text) if text else None

    return await wait_for(written, 15, "task a to write its pid")


async def stopped(pid: int) -> None:
    async def gone() -> bool:
        return not alive(pid)

    await wait_for(gone, 15, f"process {pid} to be stopped")


async def failed_flaky(ops: Ops) -> int:
    """flaky/r1 run to its failure (b fails, c upstream_failed); returns the run's pk."""
    run = await ops.engine.run("flaky")
    assert run.state == RunState.FAILED
    return run.pk


RUN = "/api/v1/dags/{dag}/dagRuns/{run}"


async def test_marking_a_running_run_success_stops_its_task_and_persists(ops: Ops) -> None:
    pid = await sleeping_pid(ops)
    status, body = await ops.call("PATCH", RUN.format(dag="sleeper", run="r1"), {"state": "success"})
    assert status == 200, body
    assert body["state"] == "success" and body["dag_run_id"] == "r1" and body["end_date"] is not None
    await stopped(pid)
    run = await ops.store.get_run("sleeper", "r1")
    assert run is not None and run.state == RunState.SUCCESS
    tis = await task_instances(ops.store, run.pk)
    assert {t: ti.state for t, ti in tis.items()} == {"a": TaskState.SUCCESS, "b": TaskState.SUCCESS}
    assert not (ops.work / "b.txt").exists()  # marked, not run
    assert "the run was marked success" in ops.engine.log_text("sleeper", "r1", "a", 1)


async def test_marking_a_running_run_failed_fails_the_running_task_and_skips_the_rest(ops: Ops) -> None:
    pid = await sleeping_pid(ops)
    status, body = await ops.call("PATCH", RUN.format(dag="sleeper", run="r1"), {"state": "failed"})
    assert status == 200, body
    assert body["state"] == "failed"
    await stopped(pid)
    run = await ops.store.get_run("sleeper", "r1")
    assert run is not None and run.state == RunState.FAILED
    tis = await task_instances(ops.store, run.pk)
    assert {t: ti.state for t, ti in tis.items()} == {"a": TaskState.FAILED, "b": TaskState.SKIPPED}


async def test_clearing_a_failed_run_runs_its_tasks_again(ops: Ops) -> None:
    pk = await failed_flaky(ops)
    path = RUN.format(dag="flaky", run="r1") + "/clear"
    # dry_run is Airflow's default: the task instances it would clear, and nothing changes
    status, body = await ops.call("POST", path, {})
    assert status == 200, body
    assert sorted(ti["task_id"] for ti in body["task_instances"]) == ["a", "b", "c"]
    assert body["total_entries"] == 3
    run = await ops.store.get_run("flaky", "r1")
    assert run is not None and run.state == RunState.FAILED
    (ops.work / "ok").touch()
    status, body = await ops.call("POST", path, {"dry_run": False})
    assert status == 200, body
    assert body["dag_run_id"] == "r1" and body["state"] in ("queued", "running", "success")
    run = await wait_run_state(ops.store, "flaky", "r1", RunState.SUCCESS)
    tis = await task_instances(ops.store, pk)
    assert {t: (ti.state, ti.try_number) for t, ti in tis.items()} == {
        "a": (TaskState.SUCCESS, 2),
        "b": (TaskState.SUCCESS, 2),
        "c": (TaskState.SUCCESS, 1),
    }
    assert (ops.work / "a.txt").read_text().split() == ["a", "a"]
    assert (ops.work / "b.txt").read_text().split() == ["b", "b"]


async def test_clear_task_instances_only_failed_with_downstream_and_dry_run(ops: Ops) -> None:
    pk = await failed_flaky(ops)
    before = await task_instances(ops.store, pk)
    body = {"dag_run_id": "r1", "task_ids": ["a"], "include_downstream": True, "only_failed": True}
    status, answer = await ops.call(
        "POST", "/api/v1/dags/flaky/clearTaskInstances", {**body, "dry_run": True}
    )
    assert status == 200, answer
    assert answer == {
        "task_instances": [
            {
                "task_id": task,
                "dag_id": "flaky",
                "dag_run_id": "r1",
                "execution_date": answer["task_instances"][0]["execution_date"],
            }
            for task in ("b", "c")
        ]
    }
    assert await task_instances(ops.store, pk) == before  # the dry run changed nothing
    run = await ops.store.get_run("flaky", "r1")
    assert run is not None and run.state == RunState.FAILED

    (ops.work / "ok").touch()
    status, answer = await ops.call(
        "POST", "/api/v1/dags/flaky/clearTaskInstances", {**body, "dry_run": False}
    )
    assert status == 200, answer
    assert [ti["task_id"] for ti in answer["task_instances"]] == ["b", "c"]
    await wait_run_state(ops.store, "flaky", "r1", RunState.SUCCESS)
    tis = await task_instances(ops.store, pk)
    assert {t: (ti.state, ti.try_number) for t, ti in tis.items()} == {
        "a": (TaskState.SUCCESS, 1),  # succeeded: not cleared by only_failed
        "b": (TaskState.SUCCESS, 2),
        "c": (TaskState.SUCCESS, 1),
    }


async def test_marking_a_running_task_success_stops_it_and_its_downstream_runs(ops: Ops) -> None:
    pid = await sleeping_pid(ops)
    path = RUN.format(dag="sleeper", run="r1") + "/taskInstances/a"
    # dry_run by default: the reference, and nothing changes
    status, body = await ops.call("PATCH", path, {"new_state": "success"})
    assert status == 200, body
    assert body["task_id"] == "a" and body["dag_run_id"] == "r1" and body["execution_date"]
    assert alive(pid)
    status, body = await ops.call("PATCH", path, {"new_state": "success", "dry_run": False})
    assert status == 200, body
    await stopped(pid)
    run = await wait_run(ops.store, "sleeper", "r1")
    assert run.state == RunState.SUCCESS
    assert (ops.work / "b.txt").read_text() == "b\n"  # b ran once a was marked success
    tis = await task_instances(ops.store, run.pk)
    assert {t: ti.state for t, ti in tis.items()} == {"a": TaskState.SUCCESS, "b": TaskState.SUCCESS}


async def test_delete_a_run_is_409_while_it_runs_and_204_once_finished(ops: Ops) -> None:
    await sleeping_pid(ops)
    path = RUN.format(dag="sleeper", run="r1")
    status, body = await ops.call("DELETE", path)
    assert status == 409, body
    assert "still running" in body["detail"]
    assert await ops.store.get_run("sleeper", "r1") is not None
    assert (await ops.call("PATCH", path, {"state": "failed"}))[0] == 200
    run = await ops.store.get_run("sleeper", "r1")
    assert run is not None
    status, body = await ops.call("DELETE", path)
    assert status == 204, body
    assert await ops.store.get_run("sleeper", "r1") is None
    assert await ops.store.list_task_instances(run.pk) == []
    assert (await ops.call("DELETE", path))[0] == 404


async def test_delete_a_dag_removes_its_runs_and_it_is_recorded_again_from_its_file(ops: Ops) -> None:
    await sleeping_pid(ops)
    status, body = await ops.call("DELETE", "/api/v1/dags/sleeper")
    assert status == 409, body
    assert "queued or running" in body["detail"]
    assert (await ops.call("PATCH", RUN.format(dag="sleeper", run="r1"), {"state": "success"}))[0] == 200
    status, body = await ops.call("DELETE", "/api/v1/dags/sleeper")
    assert status == 204, body
    assert await ops.store.get_run("sleeper", "r1") is None
    runs, total = await ops.store.list_runs("sleeper", 10, 0)
    assert (runs, total) == ([], 0)
    # its file is still loaded: the DAG is there again, with no history, and runs
    status, dag = await ops.call("GET", "/api/v1/dags/sleeper")
    assert status == 200 and dag["dag_id"] == "sleeper"
    assert (await ops.call("DELETE", "/api/v1/dags/nope"))[0] == 404


async def test_set_note_on_a_run_the_engine_drives(ops: Ops) -> None:
    await sleeping_pid(ops)
    path = RUN.format(dag="sleeper", run="r1")
    status, body = await ops.call("PATCH", path + "/setNote", {"note": "looking into it"})
    assert status == 200 and body["note"] == "looking into it"
    assert (await ops.call("PATCH", path, {"state": "success"}))[0] == 200
    run = await ops.store.get_run("sleeper", "r1")
    assert run is not None and run.note == "looking into it" and run.state == RunState.SUCCESS


async def test_a_finished_run_set_to_queued_runs_again(ops: Ops) -> None:
    pk = await failed_flaky(ops)
    status, body = await ops.call("PATCH", RUN.format(dag="flaky", run="r1"), {"state": "queued"})
    assert status == 200, body
    assert body["state"] in ("queued", "running", "failed")
    # every task instance is finished: admitted again, it settles at once on the same outcome
    run = await wait_run(ops.store, "flaky", "r1")
    assert run.state == RunState.FAILED and run.pk == pk
    assert (ops.work / "a.txt").read_text() == "a\n"


@pytest.mark.parametrize(
    ("method", "path", "payload", "status", "fragment"),
    [
        ("PATCH", RUN.format(dag="flaky", run="r1"), {"state": "running"}, 400, "state must be one of"),
        ("PATCH", RUN.format(dag="flaky", run="r1"), {"state": "success", "x": 1}, 400, "unknown field"),
        ("PATCH", RUN.format(dag="flaky", run="nope"), {"state": "success"}, 404, "'nope'"),
        ("PATCH", RUN.format(dag="nodag", run="r1"), {"state": "success"}, 404, "'nodag'"),
        ("POST", RUN.format(dag="flaky", run="nope") + "/clear", {"dry_run": False}, 404, "'nope'"),
        ("POST", RUN.format(dag="flaky", run="r1") + "/clear", {"dry_run": "yes"}, 400, "dry_run"),
        (
            "PATCH",
            RUN.format(dag="flaky", run="r1") + "/taskInstances/zz",
            {"new_state": "success"},
            404,
            "'zz'",
        ),
        (
            "PATCH",
            RUN.format(dag="flaky", run="r1") + "/taskInstances/a",
            {"new_state": "running"},
            400,
            "new_state",
        ),
        ("POST", "/api/v1/dags/flaky/clearTaskInstances", {"task_ids": ["zz"]}, 400, "no task(s) 'zz'"),
        ("POST", "/api/v1/dags/flaky/clearTaskInstances", {"task_ids": "a"}, 400, "task_ids must be a list"),
        (
            "POST",
            "/api/v1/dags/flaky/clearTaskInstances",
            {"dag_run_id": "r1", "start_date": "2026-01-01T00:00:00+00:00"},
            400,
            "not both",
        ),
        ("POST", "/api/v1/dags/flaky/clearTaskInstances", {"dag_run_id": "nope"}, 404, "'nope'"),
        ("POST", "/api/v1/dags/nodag/clearTaskInstances", {}, 404, "'nodag'"),
    ],
)
async def test_bad_requests_are_answered_precisely_and_change_nothing(
    ops: Ops, method: str, path: str, payload: Any, status: int, fragment: str
) -> None:
    pk = await failed_flaky(ops)
    before = await task_instances(ops.store, pk)
    got, body = await ops.call(method, path, payload)
    assert got == status, body
    assert fragment in body["detail"]
    assert await task_instances(ops.store, pk) == before
    run = await ops.store.get_run("flaky", "r1")
    assert run is not None and run.state == RunState.FAILED


async def test_clearing_a_running_task_stops_its_try_and_starts_the_next_once_it_ended(
    ops: Ops, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="orchestrator.engine.dispatch")
    pid = await sleeping_pid(ops)
    (ops.work / "a.pid").unlink()
    body = {"dag_run_id": "r1", "task_ids": ["a"], "only_failed": False, "dry_run": False}
    status, answer = await ops.call("POST", "/api/v1/dags/sleeper/clearTaskInstances", body)
    assert status == 200, answer
    assert [ti["task_id"] for ti in answer["task_instances"]] == ["a"]
    await stopped(pid)
    run = await ops.store.get_run("sleeper", "r1")
    assert run is not None and run.state == RunState.RUNNING
    second = await wait_ti(ops.store, run.pk, "a", [TaskState.RUNNING], require=lambda ti: ti.try_number == 2)
    assert second.max_tries == 1  # its retries (none) count again from the cleared try

    async def new_pid() -> int | None:
        path = ops.work / "a.pid"
        text = path.read_text().strip() if path.exists() else ""
        return int(text) if text else None

    pid2 = await wait_for(new_pid, 15, "try 2 of a to write its pid")
    assert pid2 != pid and alive(pid2)
    # try 2 was held by the dispatcher until try 1 had ended
    assert any("waits for its earlier try to end" in r.getMessage() for r in caplog.records)
    status, _ = await ops.call("PATCH", RUN.format(dag="sleeper", run="r1"), {"state": "success"})
    assert status == 200
    await stopped(pid2)


async def test_cli_clear_and_runs_mark_against_a_real_server(ops: Ops, tmp_path: Path) -> None:
    from tests.integration.test_cli import clean_env, cli

    pk = await failed_flaky(ops)

    async def run_cli(*args: str) -> tuple[int, str, str]:
        result = await cli(
            *args, "--url", ops.url, cwd=tmp_path, env=clean_env(ORCHESTRATOR_TOKEN=TOKENS["operator"])
        )
        return result.code, result.out, result.err

    code, out, err = await run_cli(
        "clear", "flaky", "--run", "r1", "-t", "^b$", "--downstream", "--only-failed", "--dry-run"
    )
    assert code == 0, err
    assert out.splitlines()[0] == "would clear 2 task instance(s) of flaky"
    assert [line.split()[:2] for line in out.splitlines()[3:]] == [["r1", "b"], ["r1", "c"]]
    run = await ops.store.get_run("flaky", "r1")
    assert run is not None and run.state == RunState.FAILED

    (ops.work / "ok").touch()
    code, out, err = await run_cli(
        "clear", "flaky", "--run", "r1", "-t", "^b$", "--downstream", "--only-failed"
    )
    assert code == 0, err
    assert out.splitlines()[0] == "cleared 2 task instance(s) of flaky"
    await wait_run_state(ops.store, "flaky", "r1", RunState.SUCCESS)
    tis = await task_instances(ops.store, pk)
    assert {t: ti.try_number for t, ti in tis.items()} == {"a": 1, "b": 2, "c": 1}

    code, out, err = await run_cli("clear", "flaky", "-t", "(", "--dry-run")
    assert code == 1 and "not a regular expression" in err

    pid = await sleeping_pid(ops)
    code, out, err = await run_cli("runs", "mark", "sleeper", "r1", "failed")
    assert code == 0, err
    assert out == "sleeper run r1 is failed\n"
    await stopped(pid)
    run = await ops.store.get_run("sleeper", "r1")
    assert run is not None and run.state == RunState.FAILED
    code, out, err = await run_cli("runs", "mark", "sleeper", "nope", "success")
    assert code == 1 and "'nope'" in err
    # `runs DAG_ID` still lists the runs
    code, out, err = await run_cli("runs", "sleeper")
    assert code == 0 and "r1" in out and "failed" in out


async def test_marking_a_run_that_waits_in_the_store_finishes_it_without_running_it(ops: Ops) -> None:
    await ops.engine.engine.set_paused("flaky", True)
    run, _ = await ops.engine.trigger("flaky")
    assert run.state == RunState.QUEUED
    status, body = await ops.call("PATCH", RUN.format(dag="flaky", run="r1"), {"state": "success"})
    assert status == 200, body
    assert body["state"] == "success"
    await ops.engine.engine.set_paused("flaky", False)
    marked = await ops.store.get_run("flaky", "r1")
    assert marked is not None and marked.state == RunState.SUCCESS
    tis = await task_instances(ops.store, run.pk)
    assert {t: (ti.state, ti.try_number) for t, ti in tis.items()} == {
        t: (TaskState.SUCCESS, 0) for t in ("a", "b", "c")
    }
    # a later run of the DAG runs: the unpaused DAG's admission went on past the marked one
    second = await ops.engine.run("flaky", "r2")
    assert second.state == RunState.FAILED
    assert (ops.work / "b.txt").read_text() == "b\n"  # once, by r2: the marked r1 never ran
