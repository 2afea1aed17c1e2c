"""No value a task returns can stop the engine: a value that cannot be stored (a NUL character,
more than xcom.max_bytes, NaN) fails that try with the reason in its log, and the next runs go
on. A value the checks did not foresee, refused by PostgreSQL itself, fails its try too.
Real engine, real PostgreSQL, real task processes and Python workers."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from orchestrator.core.states import RunState, TaskState
from orchestrator.core.values import xcom_refusal
from storage.postgres import PostgresStateStore
from tests.integration.engine_harness import running_engine, task_instances, write_dag

pytestmark = pytest.mark.anyio

VALUES_DAG = """
def nul():
    return "a\\x00b"

def nested_nul():
    return {"rows": ["ok", "bad\\x00"]}

def large():
    return "x" * 5000

def nan():
    return {"ratio": float("nan")}

def fine():
    return {"rows": 3}

with DAG("values", default_args={"cwd": W}):
    for name in ("nul", "nested_nul", "large", "nan", "fine"):
        Python(name, globals()[name])
    Bash("bash_nul", "printf 'a\\\\000b'")
"""


@pytest.fixture
def work(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


async def test_values_that_cannot_be_stored_fail_their_try_with_the_reason(
    store: PostgresStateStore, tmp_path: Path, work: Path
) -> None:
    dag_file = write_dag(tmp_path / "dags", "values", VALUES_DAG, work)
    check = functools.partial(xcom_refusal, max_bytes=1024)
    async with running_engine(
        store, tmp_path / "logs", [dag_file], engine_options={"check_value": check}
    ) as engine:
        run = await engine.run("values")
        tis = await task_instances(store, run.pk)
        logs = {task_id: engine.log_text("values", "r1", task_id, 1) for task_id in tis}
        again = await engine.run("values", "r2")
        assert engine.engine.supervisor.fatal_message is None
    expected = {
        "nul": "contains a NUL character",
        "nested_nul": "contains a NUL character",
        "bash_nul": "contains a NUL character",
        "large": "5,002 bytes of JSON, more than xcom.max_bytes (1,024)",
        "nan": "the return value['ratio'] is NaN or Infinity",
    }
    for task_id, fragment in expected.items():
        assert tis[task_id].state == TaskState.FAILED, task_id
        assert fragment in logs[task_id], logs[task_id]
    assert tis["fine"].state == TaskState.SUCCESS
    xcoms = {(x.task_id, x.key): x.value for x in await store.list_xcoms(run.pk)}
    assert xcoms == {("fine", "return_value"): {"rows": 3}}
    assert run.state == again.state == RunState.FAILED  # the second run ran to its end too


async def test_a_value_the_database_refuses_fails_its_try_and_the_engine_goes_on(
    store: PostgresStateStore, tmp_path: Path, work: Path
) -> None:
    # no value check: the NUL reaches PostgreSQL, which refuses the commit
    dag_file = write_dag(
        tmp_path / "dags",
        "refused",
        """
        def nul():
            return "a\\x00b"

        with DAG("refused", default_args={"cwd": W}):
            Python("bad", nul)
            Bash("other", "touch other_ran")
        """,
        work,
    )
    async with running_engine(store, tmp_path / "logs", [dag_file]) as engine:
        run = await engine.run("refused")
        tis = await task_instances(store, run.pk)
        text = engine.log_text("refused", "r1", "bad", 1)
        second = await engine.run("refused", "r2")
        assert engine.engine.supervisor.fatal_message is None
    assert tis["bad"].state == TaskState.FAILED
    assert "the database refused this try's return value" in text and "the try is failed" in text, text
    assert tis["other"].state == TaskState.SUCCESS and (work / "other_ran").exists()
    assert await store.list_xcoms(run.pk) == []
    assert run.state == RunState.FAILED
    assert second.state == RunState.FAILED
