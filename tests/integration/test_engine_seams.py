"""The engine's seams, end to end on a real PostgreSQL: a task kind and an executor that only
this test registers, routing by `executor=`, Python tasks' env/append_env/cwd, retry delays
on the fake timer, committed changes on the event bus, a failing executor that fails its
try instead of hanging the run, waiting runs admitted from the store, and a try that had
started but was still recorded as `queued` when the daemon died.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest

from orchestrator.core.kinds import RenderInput, register_kind, unregister_kind
from orchestrator.core.records import NewRun, NewTaskInstance, TaskInstanceRecord
from orchestrator.core.states import RunState, TaskState
from orchestrator.ports import (
    Event,
    ExecutorEvents,
    LaunchRequest,
    RunChanged,
    TaskInstanceChanged,
    TaskOutcome,
)
from storage.postgres import PostgresStateStore
from tests.fakes import FakeClock, FakeTimers
from tests.integration.engine_harness import (
    gate_wait,
    running_engine,
    task_instances,
    wait_for,
    wait_run,
    wait_ti,
    write_dag,
)

pytestmark = pytest.mark.anyio


# --- a kind and an executor that only this test registers -----------------------------------


@dataclass(frozen=True, slots=True)
class ShoutPayload:
    kind: ClassVar[str] = "shout"
    text: str


class ShoutKind:
    """A task that upper-cases a template: its XCom is the shout."""

    name = "shout"
    operator = "ShoutOperator"
    operator_module = "tests.shout"
    template_fields: tuple[str, ...] = ("text",)

    def check(self, args: Mapping[str, Any]) -> list[str]:
        return [] if isinstance(args.get("text"), str) else ["is a shout task without text"]

    def payload(
        self, args: Mapping[str, Any], rendered: Mapping[str, Any], given: RenderInput
    ) -> ShoutPayload:
        return ShoutPayload(text=rendered["text"])


class InLoopExecutor:
    """Runs shout tasks in the event loop; records what it was given."""

    kinds = frozenset({"shout"})

    def __init__(self, events: ExecutorEvents, *, fail_submit: bool = False) -> None:
        self._events = events
        self._fail_submit = fail_submit
        self.requests: list[LaunchRequest] = []

    async def start(self) -> None:
        pass

    def submit(self, request: LaunchRequest) -> None:
        if self._fail_submit:
            raise RuntimeError("the in-loop executor is out of order")
        self.requests.append(request)
        loop = asyncio.get_running_loop()
        loop.call_soon(self._events.task_started, request.key, request.try_number, "in-loop")
        assert isinstance(request.payload, ShoutPayload)
        outcome = TaskOutcome(request.key, request.try_number, True, xcom_value=request.payload.text.upper())
        loop.call_soon(self._events.task_finished, outcome)

    def cancel(self, key: object) -> None:
        pass

    def running_count(self) -> int:
        return 0

    async def find_started(self, task: TaskInstanceRecord, token: str) -> bool:
        return False

    async def adopt(self, task: TaskInstanceRecord, token: str) -> bool:
        return False

    async def drain(self, grace: float) -> None:
        pass

    async def close(self) -> None:
        pass


SHOUT_OPERATOR = """
from typing import ClassVar
from orchestrator.authoring.operators import BaseOperator

class Shout(BaseOperator):
    kind: ClassVar[str] = "shout"

    def __init__(self, task_id, text, **kwargs):
        super().__init__(task_id, **kwargs)
        self.text = text

    def to_task_spec(self):
        return self._spec(args={"text": self.text})

"""


@pytest.fixture
def shout_kind() -> Iterator[None]:
    register_kind(ShoutKind())
    yield
    unregister_kind("shout")


async def test_a_kind_and_an_executor_registered_by_a_test_run_beside_the_built_in_ones(
    store: PostgresStateStore, work: Path, dags: Path, logs: Path, shout_kind: None
) -> None:
    dag_file = write_dag(
        dags,
        "shouting",
        SHOUT_OPERATOR
        + """
with DAG("shouting", default_args={"executor": "in_loop"}):
    hello = Shout("hello", "hello {{ run_id }}")
    echo = Bash("echo", "echo got {{ ti.xcom_pull('hello') }}", executor="local")
    hello >> echo
""",
        work,
    )
    made: list[InLoopExecutor] = []

    def make(events: ExecutorEvents) -> InLoopExecutor:
        made.append(InLoopExecutor(events))
        return made[0]

    async with running_engine(store, logs, [dag_file], extra_executors={"in_loop": make}) as engine:
        run = await engine.run("shouting")
        tis = await task_instances(store, run.pk)
        xcoms = {x.task_id: x.value for x in await store.list_xcoms(run.pk)}

    assert run.state == RunState.SUCCESS
    assert tis["hello"].operator == "ShoutOperator"
    assert [request.payload for request in made[0].requests] == [ShoutPayload(text="hello r1")]
    assert xcoms == {"hello": "HELLO R1", "echo": "got HELLO R1"}


async def test_a_task_for_an_executor_that_is_not_configured_fails_with_the_configured_ones(
    store: PostgresStateStore, work: Path, dags: Path, logs: Path, shout_kind: None
) -> None:
    dag_file = write_dag(
        dags,
        "nowhere",
        SHOUT_OPERATOR
        + """
with DAG("nowhere"):
    Shout("loud", "x", executor="kubernetes")
    Shout("local_cannot", "y")
""",
        work,
    )
    async with running_engine(store, logs, [dag_file]) as engine:
        run = await engine.run("nowhere")
        tis = await task_instances(store, run.pk)
        loud = engine.log_text("nowhere", "r1", "loud", 1)
        local = engine.log_text("nowhere", "r1", "local_cannot", 1)

    assert run.state == RunState.FAILED
    assert tis["loud"].state == tis["local_cannot"].state == TaskState.FAILED
    assert "asks for executor 'kubernetes', which is not configured; configured executors: local" in loud
    assert "executor 'local' cannot run 'shout' tasks" in local


async def test_an_executor_that_raises_on_submit_fails_the_try_and_the_run_does_not_hang(
    store: PostgresStateStore, work: Path, dags: Path, logs: Path, shout_kind: None
) -> None:
    dag_file = write_dag(
        dags,
        "broken",
        SHOUT_OPERATOR
        + """
with DAG("broken"):
    Shout("first", "x", executor="broken", retries=1, retry_delay=0) >> Bash("after", "true")
    Bash("beside", "echo fine")
""",
        work,
    )
    executors = {"broken": lambda events: InLoopExecutor(events, fail_submit=True)}
    async with running_engine(store, logs, [dag_file], extra_executors=executors) as engine:
        run = await engine.run("broken")
        tis = await task_instances(store, run.pk)
        first_try = engine.log_text("broken", "r1", "first", 1)

    assert run.state == RunState.FAILED
    assert (tis["first"].state, tis["first"].try_number) == (TaskState.FAILED, 2)
    assert tis["after"].state == TaskState.UPSTREAM_FAILED
    assert tis["beside"].state == TaskState.SUCCESS
    assert "the launch on executor 'broken' failed" in first_try
    assert "RuntimeError: the in-loop executor is out of order" in first_try


# --- Python tasks get env, append_env and cwd as shell tasks do ---------------------------------

ENV_DAG = """
import json, os

def show(name):
    keys = sorted(k for k in os.environ if not k.startswith(("AIRFLOW_CTX_", "ORCHESTRATOR_")))
    with open(os.path.join(W, name), "w") as out:
        json.dump({"keys": keys, "cwd": os.getcwd(), "greeting": os.environ.get("GREETING")}, out)

with DAG("py_env"):
    Python("only", show, op_args=["only"], env={"GREETING": "hi {{ run_id }}"}, cwd=W)
    Python("appended", show, op_args=["appended"], env={"GREETING": "hey"}, append_env=True)
    Python("inherited", show, op_args=["inherited"])
    Python("bad_cwd", show, op_args=["bad"], cwd=W + "/missing")
"""


async def test_python_tasks_take_env_append_env_and_cwd_like_shell_tasks(
    store: PostgresStateStore, work: Path, dags: Path, logs: Path
) -> None:
    import json

    dag_file = write_dag(dags, "py_env", ENV_DAG, work)
    async with running_engine(store, logs, [dag_file]) as engine:
        run = await engine.run("py_env")
        tis = await task_instances(store, run.pk)
        bad_log = engine.log_text("py_env", "r1", "bad_cwd", 1)

    only = json.loads((work / "only").read_text())
    appended = json.loads((work / "appended").read_text())
    inherited = json.loads((work / "inherited").read_text())
    assert only == {"keys": ["GREETING"], "cwd": str(work), "greeting": "hi r1"}
    assert appended["greeting"] == "hey" and "PATH" in appended["keys"]
    assert inherited["greeting"] is None and "PATH" in inherited["keys"]
    assert inherited["cwd"] != str(work)  # the worker went back to its own directory
    assert tis["bad_cwd"].state == TaskState.FAILED
    assert f"cannot run bad_cwd in its cwd {str(work / 'missing')!r}" in bad_log


# --- time through the timer port -------------------------------------------------------------


async def test_a_retry_is_queued_when_its_delay_has_passed_on_the_timer_port(
    store: PostgresStateStore, work: Path, dags: Path, logs: Path
) -> None:
    dag_file = write_dag(
        dags,
        "delayed",
        """
        with DAG("delayed", default_args={"cwd": W}):
            Bash("delayed", "echo x >> tries; [ $(wc -l < tries) -ge 2 ]", retries=1, retry_delay=600)
        """,
        work,
    )
    clock = FakeClock(datetime(2026, 3, 1, tzinfo=UTC))
    timers = FakeTimers(clock)
    async with running_engine(store, logs, [dag_file], clock=clock, timers=timers) as engine:
        record, _ = await engine.trigger("delayed")
        waiting = await wait_ti(store, record.pk, "delayed", [TaskState.UP_FOR_RETRY])
        assert waiting.next_retry_at == waiting.end_date + timedelta(seconds=600)  # type: ignore[operator]
        timers.advance(599)
        assert max(timers.pending()) == pytest.approx(1.0)
        assert (await task_instances(store, record.pk))["delayed"].try_number == 1
        timers.advance(1)

        async def finished() -> bool:
            timers.advance(0.01)  # the lazy write of `running` is a timer too
            run = await store.get_run("delayed", "r1")
            return run is not None and run.state == RunState.SUCCESS

        await wait_for(finished, 15, "the retried run to succeed")
        retried = (await task_instances(store, record.pk))["delayed"]

    assert retried.try_number == 2
    assert retried.queued_at == waiting.next_retry_at
    assert len((work / "tries").read_text().split()) == 2


# --- events out ------------------------------------------------------------------------------


async def test_every_committed_change_is_published_after_its_commit(
    store: PostgresStateStore, work: Path, dags: Path, logs: Path
) -> None:
    dag_file = write_dag(
        dags,
        "told",
        """
        with DAG("told"):
            Bash("a", "echo a") >> Bash("b", "echo b")
        """,
        work,
    )
    seen: list[tuple[Event, str | None]] = []

    async def listen(subscription: AsyncIterator[Event]) -> None:
        async for event in subscription:
            # what the store holds when the event arrives: the change is already committed
            if isinstance(event, RunChanged):
                stored = await store.get_run(event.run.dag_id, event.run.run_id)
                seen.append((event, stored.state.value if stored else None))
            elif isinstance(event, TaskInstanceChanged):
                row = await store.get_task_instance(event.task_instance.key)
                seen.append((event, row.state.value if row else None))

    async with running_engine(store, logs, [dag_file]) as engine:
        subscription = engine.engine.events.subscribe()
        listener = asyncio.ensure_future(listen(subscription))
        run = await engine.run("told")

        def complete() -> bool:
            return any(isinstance(e, RunChanged) and e.run.state == RunState.SUCCESS for e, _ in seen)

        async def done() -> bool:
            return complete()

        await wait_for(done, 15, "the run's success event")
        subscription.close()
        await listener

    assert run.state == RunState.SUCCESS
    run_states = [e.run.state for e, _ in seen if isinstance(e, RunChanged)]
    assert run_states[-1] == RunState.SUCCESS and RunState.RUNNING in run_states
    for task_id in ("a", "b"):
        states = [
            e.task_instance.state
            for e, _ in seen
            if isinstance(e, TaskInstanceChanged) and e.task_instance.task_id == task_id
        ]
        assert states[0] == TaskState.QUEUED and states[-1] == TaskState.SUCCESS
    # an event whose state the store does not yet have would show a published-before-commit
    ordered = [s for e, s in seen if isinstance(e, RunChanged) and e.run.state == RunState.SUCCESS]
    assert ordered == ["success"]


# --- waiting runs live in PostgreSQL -----------------------------------------------------------


async def test_a_queued_run_written_to_the_store_by_someone_else_is_admitted_from_there(
    store: PostgresStateStore, work: Path, dags: Path, logs: Path
) -> None:
    gate = work / "gate"
    dag_file = write_dag(
        dags,
        "one_at_a_time",
        f"""
        with DAG("one_at_a_time", max_active_runs=1):
            Bash("wait", {gate_wait(gate)!r})
        """,
        work,
    )
    async with running_engine(store, logs, [dag_file]) as engine:
        first, _ = await engine.trigger("one_at_a_time", "first")
        await wait_ti(store, first.pk, "wait", [TaskState.RUNNING])
        now = datetime.now(UTC)
        other, created = await store.create_run(
            NewRun("one_at_a_time", "from_elsewhere", "manual", {}, now, now, now, now),
            [NewTaskInstance("wait", "BashOperator", 1)],
        )
        assert created and other.state == RunState.QUEUED
        gate.touch()
        done = await wait_run(store, "one_at_a_time", "from_elsewhere")

    assert done.state == RunState.SUCCESS


async def test_a_created_run_that_a_fill_pass_started_first_is_not_started_again(
    store: PostgresStateStore, work: Path, dags: Path, logs: Path
) -> None:
    # a trigger writes its run, then awaits the pause flags before starting it; a fill pass
    # (another run of the DAG finished) may find the committed run in the store meanwhile
    dag_file = write_dag(dags, "raced", 'with DAG("raced"):\n    Bash("t", "true")\n', work)
    async with running_engine(store, logs, [dag_file]) as engine:
        now = datetime.now(UTC)
        record, created = await store.create_run(
            NewRun("raced", "r1", "manual", {}, now, now, now, now),
            engine.engine.new_task_instances(engine.registry.get("raced")),  # type: ignore[arg-type]
        )
        assert created
        engine.engine.admission.fill_from_store("raced")

        async def started() -> bool:
            if record.pk in engine.engine.progress.runs:
                return True
            stored = await store.get_run("raced", "r1")
            return stored is not None and stored.state != RunState.QUEUED

        await wait_for(started, 10, "the fill pass to start the run")
        await engine.engine.admit_created(record)  # the trigger's own start comes second
        done = await wait_run(store, "raced", "r1")
        ti = (await task_instances(store, record.pk))["t"]

    assert done.state == RunState.SUCCESS
    assert (ti.state, ti.try_number) == (TaskState.SUCCESS, 1)


# --- a try that crashed too early is not run twice ---------------------------------------------


async def test_a_started_try_still_recorded_as_queued_is_not_started_again_after_a_crash(
    store: PostgresStateStore, work: Path, dags: Path, logs: Path
) -> None:
    gate = work / "gate"
    # try 1 leaves a detached child that outlives its process group (as an orphan would);
    # try 2 succeeds at once
    command = (
        'if [ "$ORCHESTRATOR_TRY_NUMBER" = 1 ]; then '
        f"setsid sh -c 'echo $$ > {work}/orphan; {gate_wait(gate)}' & "
        f"{gate_wait(gate)}; fi"
    )
    dag_file = write_dag(
        dags,
        "early",
        f"""
        with DAG("early"):
            Bash("work", {command!r}, retries=1, retry_delay=0)
        """,
        work,
    )
    clock = FakeClock(datetime.now(UTC))
    timers = FakeTimers(clock)  # the lazy write of `running` never fires: the crash comes first
    async with running_engine(store, logs, [dag_file], clock=clock, timers=timers) as engine:
        record, _ = await engine.trigger("early")

        async def orphan_pid() -> int | None:
            text = (work / "orphan").read_text().strip() if (work / "orphan").exists() else ""
            return int(text) if text else None

        pid = await wait_for(orphan_pid, 15, "try 1's detached child to start")
        assert (await task_instances(store, record.pk))["work"].state == TaskState.QUEUED
        engine.crash()

    try:
        assert _alive(pid), "the detached child should outlive the crashed engine"
        async with running_engine(store, logs, [dag_file]) as engine:
            run = await wait_run(store, "early", "r1")
            tis = await task_instances(store, record.pk)
            first_try = engine.log_text("early", "r1", "work", 1)
        assert run.state == RunState.SUCCESS
        assert tis["work"].try_number == 2
        assert "the try is counted as failed" in first_try
        assert not _alive(pid), "the orphan of try 1 must be stopped, not left running beside try 2"
    finally:
        gate.touch()
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][:1] not in ("Z", "X")
    except FileNotFoundError:
        return False


# --- a run keeps its DAG version -----------------------------------------------------------------

VERSIONED = """
def answer():
    return "{version}"

with DAG("versioned", max_active_runs=4):
    Bash("gate", {gate!r}) >> Python("answer", answer)
"""


async def test_a_run_runs_the_python_callables_of_the_dag_version_it_was_triggered_with(
    store: PostgresStateStore, work: Path, dags: Path, logs: Path
) -> None:
    gate = work / "gate"
    dag_file = write_dag(dags, "versioned", VERSIONED.format(version="v1", gate=gate_wait(gate)), work)
    async with running_engine(store, logs, [dag_file]) as engine:
        first, _ = await engine.trigger("versioned", "first")
        await wait_ti(store, first.pk, "gate", [TaskState.RUNNING])
        write_dag(dags, "versioned", VERSIONED.format(version="v2", gate=gate_wait(gate)), work)
        await engine.reload(dag_file)
        second, _ = await engine.trigger("versioned", "second")
        gate.touch()
        await wait_run(store, "versioned", "first")
        await wait_run(store, "versioned", "second")
        answers = {
            run.run_id: {x.task_id: x.value for x in await store.list_xcoms(run.pk)}["answer"]
            for run in (first, second)
        }

    assert answers == {"first": "v1", "second": "v2"}


async def test_a_run_waiting_across_a_restart_keeps_its_dag_version(
    store: PostgresStateStore, work: Path, dags: Path, logs: Path
) -> None:
    dag_file = write_dag(dags, "versioned", VERSIONED.format(version="v1", gate="true"), work)
    async with running_engine(store, logs, [dag_file]) as engine:
        await engine.engine.set_paused("versioned", True)
        waiting, _ = await engine.trigger("versioned", "waiting")
    # the file changes while the daemon is down; the new daemon parses the new version
    write_dag(dags, "versioned", VERSIONED.format(version="v2", gate="true"), work)
    async with running_engine(store, logs, [dag_file]) as engine:
        await engine.engine.set_paused("versioned", False)
        run = await wait_run(store, "versioned", "waiting")
        fresh = await engine.run("versioned", "fresh")
        values = {r.run_id: {x.task_id: x.value for x in await store.list_xcoms(r.pk)} for r in (run, fresh)}

    assert run.pk == waiting.pk and run.state == fresh.state == RunState.SUCCESS
    assert values["waiting"]["answer"] == "v1" and values["fresh"]["answer"] == "v2"


async def test_runs_that_fail_at_once_are_each_started_once_while_others_wait(
    store: PostgresStateStore, work: Path, dags: Path, logs: Path
) -> None:
    # each run ends in memory as soon as it starts (a template error, no retries), before its
    # rows are committed: admitting the next waiting run must not take it for a waiting one
    dag_file = write_dag(
        dags,
        "instant",
        """
        with DAG("instant", max_active_runs=1):
            Bash("bad", "echo {{ nope }}")
        """,
        work,
    )
    async with running_engine(store, logs, [dag_file]) as engine:
        for i in range(12):
            await engine.trigger("instant", f"r{i}")
        runs = [await wait_run(store, "instant", f"r{i}") for i in range(12)]
        await engine.engine.writer.flushed()
        notes = [engine.log_text("instant", f"r{i}", "bad", 1).count("try 1 failed") for i in range(12)]

    assert {run.state for run in runs} == {RunState.FAILED}
    assert notes == [1] * 12


# --- runs created together --------------------------------------------------------------------


async def test_runs_asked_for_at_once_are_created_once_each_and_a_refused_one_fails_alone(
    store: PostgresStateStore, work: Path, dags: Path, logs: Path
) -> None:
    dag_file = write_dag(
        dags, "flooded", 'with DAG("flooded", max_active_runs=4):\n    Bash("t", "true")\n', work
    )
    batches: list[int] = []
    create_runs = store.create_and_admit_runs

    async def counted(items, *args):  # type: ignore[no-untyped-def]
        batches.append(len(items))
        return await create_runs(items, *args)

    store.create_and_admit_runs = counted  # type: ignore[method-assign]
    async with running_engine(store, logs, [dag_file]) as engine:
        answers: list[tuple[str, object]] = []

        async def ask(run_id: str, conf: dict[str, object]) -> None:
            try:
                answer: object = await engine.engine.trigger_run(
                    "flooded", run_id=run_id, conf=conf, logical_date=None
                )
            except Exception as exc:
                answer = exc
            answers.append((run_id, answer))

        async with anyio.create_task_group() as group:
            for index in range(40):
                group.start_soon(ask, f"r{index % 30}", {"i": index})  # ten ids asked twice
            group.start_soon(ask, "refused", {"text": "nul \u0000 byte"})  # PostgreSQL cannot store it
        for index in range(30):
            await wait_run(store, "flooded", f"r{index}")

    refused = [answer for run_id, answer in answers if run_id == "refused"]
    assert len(refused) == 1 and isinstance(refused[0], Exception)
    others = [answer for run_id, answer in answers if run_id != "refused"]
    assert len(others) == 40 and not any(isinstance(answer, Exception) for answer in others)
    created = sorted(answer[0].run_id for answer in others if answer[1])  # type: ignore[index]
    assert created == sorted(f"r{index}" for index in range(30))  # each id created exactly once
    runs, total = await store.list_runs("flooded", 100, 0)
    assert total == 30 and all(run.state == RunState.SUCCESS for run in runs)
    assert await store.get_run("flooded", "refused") is None
    assert max(batches) > 1  # they were written together, the refused one with others
