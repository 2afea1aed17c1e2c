"""The engine end to end: the real Engine, writer and LocalExecutor on a real PostgreSQL.

Each test writes DAG files with the authoring API into a temporary folder, loads them in
process, triggers runs through `Engine.trigger_run` and checks what the store and the task
logs show: order, XComs, capacity limits, retries, trigger rules, recovery after a crash and
draining on shutdown.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from orchestrator.authoring.loader import load_dag_specs
from orchestrator.core.records import ChangeSet, NewRun, NewTaskInstance, XComRecord
from orchestrator.core.states import FINISHED_TASK_STATES, RunState, TaskState
from orchestrator.engine.clock import SystemClock
from storage.postgres import PostgresStateStore
from tests.integration.engine_harness import (
    gate_wait,
    running_engine,
    task_instances,
    wait_run,
    wait_ti,
    write_dag,
)

pytestmark = pytest.mark.anyio

ACTIVE = (TaskState.QUEUED, TaskState.RUNNING)


async def test_chain_runs_in_order_with_one_try_each_and_a_log_per_try(
    store: PostgresStateStore, work: Path, dags: Path, logs: Path
) -> None:
    dag_file = write_dag(
        dags,
        "chain",
        """
        with DAG("chain", default_args={"cwd": W}):
            tasks = [Bash(f"t{i}", f"echo t{i} >> order.txt; echo wrote t{i}") for i in range(5)]
            for up, down in zip(tasks, tasks[1:]):
                up >> down
        """,
        work,
    )
    async with running_engine(store, logs, [dag_file]) as engine:
        run = await engine.run("chain")
        tis = await task_instances(store, run.pk)

    assert run.state == RunState.SUCCESS
    assert (work / "order.txt").read_text().split() == [f"t{i}" for i in range(5)]
    assert {ti.task_id: (ti.state, ti.try_number) for ti in tis.values()} == {
        f"t{i}": (TaskState.SUCCESS, 1) for i in range(5)
    }
    # each task started only after its upstream had ended
    for i in range(4):
        up, down = tis[f"t{i}"], tis[f"t{i + 1}"]
        assert up.end_date is not None and down.start_date is not None
        assert up.end_date <= down.start_date
    for i in range(5):
        assert engine.log_files("chain", "r1", f"t{i}") == ["attempt=1.log"]
        text = engine.log_text("chain", "r1", f"t{i}", 1)
        assert f"try 1 of chain/r1/t{i} started: echo t{i} >> order.txt; echo wrote t{i}" in text
        assert f"wrote t{i}" in text


async def test_xcoms_flow_from_bash_to_python_to_a_bash_template(
    store: PostgresStateStore, work: Path, dags: Path, logs: Path
) -> None:
    dag_file = write_dag(
        dags,
        "xcoms",
        """
        @task
        def double(value):
            print("doubling", value)
            return {"doubled": int(value) * 2}

        with DAG("xcoms"):
            produce = Bash("produce", "echo not this line; echo 21")
            doubled = double(produce.output)
            show = Bash("show", "echo got {{ ti.xcom_pull('double')['doubled'] }}")
            doubled >> show
        """,
        work,
    )
    async with running_engine(store, logs, [dag_file]) as engine:
        run = await engine.run("xcoms")
        xcoms = await store.list_xcoms(run.pk)

    assert run.state == RunState.SUCCESS
    values = {(x.task_id, x.key): x.value for x in xcoms}
    assert values == {
        ("produce", "return_value"): "21",
        ("double", "return_value"): {"doubled": 42},
        ("show", "return_value"): "got 42",
    }
    assert "doubling 21" in engine.log_text("xcoms", "r1", "double", 1)
    assert "got 42" in engine.log_text("xcoms", "r1", "show", 1)


async def test_max_active_tasks_bounds_concurrency_and_waiting_tasks_are_scheduled(
    store: PostgresStateStore, work: Path, dags: Path, logs: Path
) -> None:
    dag_file = write_dag(
        dags,
        "capped",
        """
        with DAG("capped", max_active_tasks=2, default_args={"cwd": W}):
            for i in range(6):
                Bash(f"t{i}", f"date +%s.%N > start_t{i}; sleep 0.2; date +%s.%N > end_t{i}")
        """,
        work,
    )
    # the executor has room for all six: only the DAG's max_active_tasks can hold them back
    async with running_engine(store, logs, [dag_file], slots=8) as engine:
        record, _ = await engine.trigger("capped")
        await engine.engine.writer.flushed()
        first = await task_instances(store, record.pk)
        run = await wait_run(store, "capped", "r1")

    # the run's first commit queued two tasks and left four waiting for capacity
    states = sorted(ti.state for ti in first.values())
    assert states.count(TaskState.SCHEDULED) == 4, states
    assert sum(state in ACTIVE for state in states) == 2, states
    assert run.state == RunState.SUCCESS
    intervals = [
        (float((work / f"start_t{i}").read_text()), float((work / f"end_t{i}").read_text())) for i in range(6)
    ]
    for start, _ in intervals:
        overlapping = sum(1 for s, e in intervals if s <= start < e)
        assert overlapping <= 2, f"{overlapping} tasks ran at once: {intervals}"
    # the bound is reached, not just respected (two at a time, three waves)
    assert max(sum(1 for s, e in intervals if s <= start < e) for start, _ in intervals) == 2


async def test_max_active_runs_holds_the_second_run_queued_until_the_first_ends(
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
        second, created = await engine.trigger("one_at_a_time", "second")
        assert created
        await wait_ti(store, first.pk, "wait", [TaskState.RUNNING])
        await engine.engine.writer.flushed()
        held = await store.get_run("one_at_a_time", "second")
        held_tis = await task_instances(store, second.pk)
        gate.touch()
        first_done = await wait_run(store, "one_at_a_time", "first")
        second_done = await wait_run(store, "one_at_a_time", "second")

    assert held is not None and held.state == RunState.QUEUED and held.start_date is None
    assert {ti.state for ti in held_tis.values()} == {TaskState.NONE}
    assert first_done.state == second_done.state == RunState.SUCCESS
    assert first_done.end_date is not None and second_done.start_date is not None
    assert second_done.start_date >= first_done.end_date


async def test_template_error_fails_each_try_without_running_it(
    store: PostgresStateStore, work: Path, dags: Path, logs: Path
) -> None:
    dag_file = write_dag(
        dags,
        "bad_template",
        """
        with DAG("bad_template", default_args={"cwd": W}):
            broken = Bash("broken", "touch ran; echo {{ nope }}", retries=1, retry_delay=0)
            after = Bash("after", "touch after_ran")
            broken >> after
        """,
        work,
    )
    async with running_engine(store, logs, [dag_file]) as engine:
        run = await engine.run("bad_template")
        tis = await task_instances(store, run.pk)

    assert run.state == RunState.FAILED
    assert (tis["broken"].state, tis["broken"].try_number) == (TaskState.FAILED, 2)
    assert tis["after"].state == TaskState.UPSTREAM_FAILED
    assert tis["after"].try_number == 0
    assert not (work / "ran").exists() and not (work / "after_ran").exists()
    assert engine.log_files("bad_template", "r1", "broken") == ["attempt=1.log", "attempt=2.log"]
    for try_number in (1, 2):
        text = engine.log_text("bad_template", "r1", "broken", try_number)
        assert f"try {try_number} failed" in text and "nope" in text, text
        assert "started:" not in text  # the executor never saw it


async def test_retries_until_success(store: PostgresStateStore, work: Path, dags: Path, logs: Path) -> None:
    dag_file = write_dag(
        dags,
        "flaky",
        """
        with DAG("flaky", default_args={"cwd": W}):
            Bash(
                "flaky",
                "echo try $AIRFLOW_CTX_TRY_NUMBER; echo x >> tries; [ $(wc -l < tries) -ge 3 ]",
                retries=2,
                retry_delay=0,
            )
        """,
        work,
    )
    async with running_engine(store, logs, [dag_file]) as engine:
        run = await engine.run("flaky")
        tis = await task_instances(store, run.pk)

    assert run.state == RunState.SUCCESS
    assert (tis["flaky"].state, tis["flaky"].try_number) == (TaskState.SUCCESS, 3)
    assert engine.log_files("flaky", "r1", "flaky") == ["attempt=1.log", "attempt=2.log", "attempt=3.log"]
    for try_number in (1, 2):
        text = engine.log_text("flaky", "r1", "flaky", try_number)
        assert f"\ntry {try_number}\n" in text and "exited with code 1" in text
    last = engine.log_text("flaky", "r1", "flaky", 3)
    assert "\ntry 3\n" in last and "finished in" in last and ": success" in last
    assert len((work / "tries").read_text().split()) == 3


async def test_a_template_error_in_a_task_waiting_for_capacity(
    store: PostgresStateStore, work: Path, dags: Path, logs: Path
) -> None:
    dag_file = write_dag(
        dags,
        "capped_error",
        """
        with DAG("capped_error", max_active_tasks=1, default_args={"cwd": W}):
            Bash("first", "sleep 0.1; touch first_ran")
            Bash("broken", "echo {{ nope }}") >> Bash("after_broken", "touch after_broken_ran")
            Bash("other", "touch other_ran")
        """,
        work,
    )
    async with running_engine(store, logs, [dag_file]) as engine:
        record, _ = await engine.trigger("capped_error")
        await engine.engine.writer.flushed()
        queued_first = await task_instances(store, record.pk)
        run = await wait_run(store, "capped_error", "r1")
        tis = await task_instances(store, record.pk)

    assert queued_first["broken"].state == TaskState.SCHEDULED  # it failed later, when its turn came
    assert run.state == RunState.FAILED
    assert {t: ti.state for t, ti in tis.items()} == {
        "first": TaskState.SUCCESS,
        "broken": TaskState.FAILED,
        "after_broken": TaskState.UPSTREAM_FAILED,
        "other": TaskState.SUCCESS,
    }
    assert sorted(p.name for p in work.iterdir()) == ["first_ran", "other_ran"]
    assert "nope" in engine.log_text("capped_error", "r1", "broken", 1)


async def test_one_success_fires_while_another_upstream_still_runs(
    store: PostgresStateStore, work: Path, dags: Path, logs: Path
) -> None:
    gate = work / "gate"
    dag_file = write_dag(
        dags,
        "first_wins",
        f"""
        with DAG("first_wins"):
            slow = Bash("slow", {gate_wait(gate)!r})
            fast = Bash("fast", "true")
            either = Bash("either", "true", trigger_rule="one_success")
            [slow, fast] >> either
        """,
        work,
    )
    async with running_engine(store, logs, [dag_file]) as engine:
        record, _ = await engine.trigger("first_wins")
        await wait_ti(store, record.pk, "either", [TaskState.SUCCESS])
        while_either_done = await task_instances(store, record.pk)
        gate.touch()
        run = await wait_run(store, "first_wins", "r1")

    assert while_either_done["slow"].state == TaskState.RUNNING
    assert while_either_done["fast"].state == TaskState.SUCCESS
    assert run.state == RunState.SUCCESS


async def test_skips_come_from_trigger_rules_and_propagate(
    store: PostgresStateStore, work: Path, dags: Path, logs: Path
) -> None:
    dag_file = write_dag(
        dags,
        "skips",
        """
        with DAG("skips", default_args={"cwd": W}):
            ok = Bash("ok", "true")
            on_failure = Bash("on_failure", "touch on_failure_ran", trigger_rule="all_failed")
            after_skip = Bash("after_skip", "touch after_skip_ran")
            when_skipped = Bash("when_skipped", "touch when_skipped_ran", trigger_rule="all_skipped")
            joined = Bash("joined", "touch joined_ran", trigger_rule="none_failed_min_one_success")
            alarm = Bash("alarm", "touch alarm_ran", trigger_rule="one_failed")
            ok >> on_failure >> [after_skip, when_skipped]
            [ok, on_failure] >> joined
            [ok, joined] >> alarm
        """,
        work,
    )
    async with running_engine(store, logs, [dag_file]) as engine:
        run = await engine.run("skips")
        tis = await task_instances(store, run.pk)

    assert {task_id: ti.state for task_id, ti in tis.items()} == {
        "ok": TaskState.SUCCESS,
        "on_failure": TaskState.SKIPPED,  # all_failed, but its upstream succeeded
        "after_skip": TaskState.SKIPPED,  # all_success with a skipped upstream
        "when_skipped": TaskState.SUCCESS,  # all_skipped
        "joined": TaskState.SUCCESS,  # none_failed_min_one_success: one success + one skip
        "alarm": TaskState.SKIPPED,  # one_failed, nothing failed
    }
    assert sorted(p.name for p in work.iterdir()) == ["joined_ran", "when_skipped_ran"]
    assert tis["on_failure"].try_number == tis["after_skip"].try_number == 0
    assert run.state == RunState.SUCCESS


@pytest.mark.parametrize(
    ("with_all_success_leaf", "outcome"), [(False, RunState.SUCCESS), (True, RunState.FAILED)]
)
async def test_failure_handlers_run_and_the_leaves_decide_the_run(
    store: PostgresStateStore,
    work: Path,
    dags: Path,
    logs: Path,
    with_all_success_leaf: bool,
    outcome: RunState,
) -> None:
    dag_file = write_dag(
        dags,
        "handlers",
        f"""
        with DAG("handlers", default_args={{"cwd": W}}):
            broken = Bash("broken", "exit 3")
            broken >> Bash("on_failure", "touch on_failure_ran", trigger_rule="one_failed")
            broken >> Bash("cleanup", "touch cleanup_ran", trigger_rule="all_done")
            if {with_all_success_leaf}:
                broken >> Bash("normal", "touch normal_ran")
        """,
        work,
    )
    async with running_engine(store, logs, [dag_file]) as engine:
        run = await engine.run("handlers")
        tis = await task_instances(store, run.pk)

    expected = {"broken": TaskState.FAILED, "on_failure": TaskState.SUCCESS, "cleanup": TaskState.SUCCESS}
    if with_all_success_leaf:
        expected["normal"] = TaskState.UPSTREAM_FAILED
    assert {t: ti.state for t, ti in tis.items()} == expected
    assert tis["broken"].exit_code == 3
    assert sorted(p.name for p in work.iterdir()) == ["cleanup_ran", "on_failure_ran"]
    # Airflow's rule: a run fails when a leaf failed; `broken` is not a leaf
    assert run.state == outcome


async def test_triggering_an_existing_run_id_returns_it_and_creates_nothing(
    store: PostgresStateStore, work: Path, dags: Path, logs: Path
) -> None:
    dag_file = write_dag(
        dags,
        "dup",
        """
        with DAG("dup", default_args={"cwd": W}):
            Bash("once", "echo x >> ran")
        """,
        work,
    )
    async with running_engine(store, logs, [dag_file]) as engine:
        first, created_first = await engine.trigger("dup", "same")
        again, created_again = await engine.trigger("dup", "same")
        run = await wait_run(store, "dup", "same")
        after_finish, created_after = await engine.trigger("dup", "same")
        runs, total = await store.list_runs("dup", limit=10, offset=0)

    assert (created_first, created_again, created_after) == (True, False, False)
    assert again.pk == first.pk == after_finish.pk == run.pk
    assert total == 1 and [r.pk for r in runs] == [first.pk]
    assert (work / "ran").read_text().split() == ["x"]
    assert run.state == RunState.SUCCESS


RECOVERY_DAG = """
with DAG("recovery", default_args={"cwd": W, "retries": 1, "retry_delay": 0}):
    a = Bash("a", "echo a >> a_ran; echo from-a")
    b = Bash("b", "echo b{{ ti.try_number }} | tee -a b_ran; if [ {{ ti.try_number }} -eq 1 ]; then GATE; fi")
    c = Bash("c", "echo c-{{ ti.xcom_pull('a') }} >> c_ran")
    d = Bash("d", "echo d{{ ti.try_number }} >> d_ran")
    a >> [b, c, d]
"""


async def test_recovery_after_a_crash_mid_run(
    store: PostgresStateStore, work: Path, dags: Path, logs: Path
) -> None:
    dag_file = write_dag(dags, "recovery", RECOVERY_DAG.replace("GATE", gate_wait(work / "never")), work)
    async with running_engine(store, logs, [dag_file]) as first:
        record, _ = await first.trigger("recovery")
        lost = await wait_ti(store, record.pk, "b", [TaskState.RUNNING])
        await wait_ti(store, record.pk, "d", [TaskState.SUCCESS])
        await wait_ti(store, record.pk, "c", [TaskState.SUCCESS])
        first.crash()
    crashed = await task_instances(store, record.pk)
    assert crashed["b"].state == TaskState.RUNNING  # nothing after the crash was committed

    async with running_engine(store, logs, [dag_file]) as second:
        run = await wait_run(store, "recovery", "r1")
        tis = await task_instances(store, record.pk)

    assert run.state == RunState.SUCCESS
    assert {task_id: (ti.state, ti.try_number) for task_id, ti in tis.items()} == {
        "a": (TaskState.SUCCESS, 1),
        "b": (TaskState.SUCCESS, 2),
        "c": (TaskState.SUCCESS, 1),
        "d": (TaskState.SUCCESS, 1),
    }
    assert (work / "a_ran").read_text().split() == ["a"]  # not rerun
    assert (work / "b_ran").read_text().split() == ["b1", "b2"]
    note = second.log_text("recovery", "r1", "b", 1)
    assert f"the daemon stopped while try 1 was running ({lost.external_id} on " in note
    assert "the try is counted as failed" in note
    assert tis["b"].daemon_id == "test"


async def test_recovery_of_a_crash_state_built_in_the_store(
    store: PostgresStateStore, work: Path, dags: Path, logs: Path
) -> None:
    dag_file = write_dag(dags, "recovery", RECOVERY_DAG.replace("GATE", "true"), work)
    now = SystemClock().now()
    run, created = await store.create_run(
        NewRun("recovery", "r1", "manual", {}, now, now, now, now),
        [NewTaskInstance(task_id, "BashOperator", 1) for task_id in "abcd"],
    )
    assert created
    tis = await task_instances(store, run.pk)
    host = socket.gethostname()
    running = replace(run, state=RunState.RUNNING, start_date=now)
    a = replace(tis["a"], state=TaskState.SUCCESS, try_number=1, start_date=now, end_date=now, duration=0.0)
    b = replace(
        tis["b"],
        state=TaskState.RUNNING,
        try_number=1,
        queued_at=now,
        start_date=now,
        external_id="pid:999999",
        daemon_id="dead-daemon",
        hostname=host,
    )
    c = replace(tis["c"], state=TaskState.QUEUED, try_number=1, queued_at=now)
    d = replace(
        tis["d"],
        state=TaskState.UP_FOR_RETRY,
        try_number=1,
        end_date=now,
        next_retry_at=now - timedelta(seconds=1),
        exit_code=1,
    )
    pushed = XComRecord(run.pk, "a", -1, "return_value", "from-a")
    await store.commit(ChangeSet(tasks=[a, b, c, d], runs=[running], xcoms=[pushed]))

    async with running_engine(store, logs, [dag_file]) as engine:
        finished = await wait_run(store, "recovery", "r1")
        after = await task_instances(store, run.pk)

    assert finished.state == RunState.SUCCESS
    assert {task_id: (ti.state, ti.try_number) for task_id, ti in after.items()} == {
        "a": (TaskState.SUCCESS, 1),  # not rerun
        "b": (TaskState.SUCCESS, 2),  # the lost try counted as failed, then retried
        "c": (TaskState.SUCCESS, 1),  # dispatched with the try it was queued for
        "d": (TaskState.SUCCESS, 2),  # re-queued by its retry timer
    }
    assert not (work / "a_ran").exists()
    assert (work / "b_ran").read_text().split() == ["b2"]
    assert (work / "c_ran").read_text().split() == ["c-from-a"]  # a's XCom was recovered too
    assert (work / "d_ran").read_text().split() == ["d2"]
    note = engine.log_text("recovery", "r1", "b", 1)
    assert f"the daemon stopped while try 1 was running (pid:999999 on {host})" in note
    assert "re-queued after a daemon restart" in engine.log_text("recovery", "r1", "c", 1)
    assert engine.log_files("recovery", "r1", "b") == ["attempt=1.log", "attempt=2.log"]


async def test_recovery_keeps_the_capacity_limits(
    store: PostgresStateStore, work: Path, dags: Path, logs: Path
) -> None:
    dag_file = write_dag(
        dags,
        "capped_recovery",
        """
        with DAG("capped_recovery", max_active_runs=1, max_active_tasks=1, default_args={"cwd": W}):
            for name in ("x", "y"):
                Bash(
                    name,
                    f"date +%s.%N >> start_{name}; sleep 0.1; date +%s.%N >> end_{name}",
                    retries=1,
                    retry_delay=0,
                )
        """,
        work,
    )
    now = SystemClock().now()
    tasks = [NewTaskInstance(task_id, "BashOperator", 1) for task_id in ("x", "y")]
    first, _ = await store.create_run(
        NewRun("capped_recovery", "r1", "manual", {}, now, now, now, now), tasks
    )
    later = now + timedelta(milliseconds=1)
    second, _ = await store.create_run(
        NewRun("capped_recovery", "r2", "manual", {}, later, later, later, later), tasks
    )
    tis = await task_instances(store, first.pk)
    # the crash: x was running (its process is gone), y waited for max_active_tasks
    x = replace(tis["x"], state=TaskState.RUNNING, try_number=1, queued_at=now, start_date=now)
    x = replace(x, external_id="pid:999999", daemon_id="dead", hostname=socket.gethostname())
    y = replace(tis["y"], state=TaskState.SCHEDULED)
    await store.commit(ChangeSet(tasks=[x, y], runs=[replace(first, state=RunState.RUNNING, start_date=now)]))

    async with running_engine(store, logs, [dag_file]) as engine:
        held = await store.get_run("capped_recovery", "r2")
        done_first = await wait_run(store, "capped_recovery", "r1")
        done_second = await wait_run(store, "capped_recovery", "r2")
        first_tis = await task_instances(store, first.pk)
        second_tis = await task_instances(store, second.pk)

    assert held is not None and held.state == RunState.QUEUED
    assert done_first.state == done_second.state == RunState.SUCCESS
    assert {t: (ti.state, ti.try_number) for t, ti in first_tis.items()} == {
        "x": (TaskState.SUCCESS, 2),
        "y": (TaskState.SUCCESS, 1),
    }
    assert {t: (ti.state, ti.try_number) for t, ti in second_tis.items()} == {
        "x": (TaskState.SUCCESS, 1),
        "y": (TaskState.SUCCESS, 1),
    }
    assert done_first.end_date is not None and done_second.start_date is not None
    assert done_second.start_date >= done_first.end_date
    starts = [float(v) for name in "xy" for v in (work / f"start_{name}").read_text().split()]
    ends = [float(v) for name in "xy" for v in (work / f"end_{name}").read_text().split()]
    intervals = list(zip(starts, ends, strict=True))
    assert len(intervals) == 4
    for start, _ in intervals:
        assert sum(1 for s, e in intervals if s <= start < e) == 1, intervals
    assert "the daemon stopped while try 1 was running" in engine.log_text("capped_recovery", "r1", "x", 1)


async def test_drain_lets_the_running_task_finish_and_leaves_its_child_queued(
    store: PostgresStateStore, work: Path, dags: Path, logs: Path
) -> None:
    dag_file = write_dag(
        dags,
        "draining",
        """
        with DAG("draining", default_args={"cwd": W}):
            Bash("parent", "sleep 0.3; touch parent_done") >> Bash("child", "touch child_ran")
        """,
        work,
    )
    async with running_engine(store, logs, [dag_file]) as engine:
        record, _ = await engine.trigger("draining")
        await wait_ti(store, record.pk, "parent", [TaskState.RUNNING])
        await engine.drain(grace=5.0)
        tis = await task_instances(store, record.pk)
        run = await store.get_run("draining", "r1")

    assert (tis["parent"].state, tis["parent"].try_number) == (TaskState.SUCCESS, 1)
    assert (tis["child"].state, tis["child"].try_number) == (TaskState.QUEUED, 1)
    assert (work / "parent_done").exists() and not (work / "child_ran").exists()
    assert run is not None and run.state == RunState.RUNNING


async def test_a_python_task_that_raises_fails_the_run(
    store: PostgresStateStore, work: Path, dags: Path, logs: Path
) -> None:
    dag_file = write_dag(
        dags,
        "py_fail",
        """
        def explode():
            raise ValueError("the input table is empty")

        with DAG("py_fail"):
            Python("explode", explode) >> Bash("after", "true")
        """,
        work,
    )
    async with running_engine(store, logs, [dag_file]) as engine:
        run = await engine.run("py_fail")
        tis = await task_instances(store, run.pk)

    assert run.state == RunState.FAILED
    assert (tis["explode"].state, tis["explode"].try_number) == (TaskState.FAILED, 1)
    assert tis["explode"].duration is not None and tis["explode"].duration >= 0
    assert tis["after"].state == TaskState.UPSTREAM_FAILED
    text = engine.log_text("py_fail", "r1", "explode", 1)
    assert "ValueError: the input table is empty" in text
    assert "failed: ValueError: the input table is empty" in text


@pytest.mark.parametrize("change", ["task_added", "task_removed"])
async def test_a_dag_change_while_a_run_waits_for_max_active_runs_keeps_rows_and_tasks_in_step(
    store: PostgresStateStore, work: Path, dags: Path, logs: Path, change: str
) -> None:
    gate = work / "gate"
    body = f"""
    with DAG("evolving", max_active_runs=1, default_args={{"cwd": W}}):
        Bash("wait", {gate_wait(gate)!r})
    """
    extra = '    Bash("extra", "touch extra_ran")\n'
    before, after = (body, body + extra) if change == "task_added" else (body + extra, body)
    dag_file = write_dag(dags, "evolving", before, work)
    async with running_engine(store, logs, [dag_file]) as engine:
        first, _ = await engine.trigger("evolving", "first")
        second, _ = await engine.trigger("evolving", "second")
        await wait_ti(store, first.pk, "wait", [TaskState.RUNNING])
        # the file changes while the second run waits for the first (what the DAG folder does)
        write_dag(dags, "evolving", after, work)
        later = time.time_ns() + 10**9
        os.utime(dag_file, ns=(later, later))
        engine.registry.replace_file(str(dag_file), load_dag_specs(str(dag_file)))
        gate.touch()
        await wait_run(store, "evolving", "first")
        run = await wait_run(store, "evolving", "second")
        tis = await task_instances(store, second.pk)

    states = {task_id: ti.state for task_id, ti in tis.items()}
    assert run.state == RunState.SUCCESS
    # every task instance row of the finished run is finished ...
    assert all(state in FINISHED_TASK_STATES for state in states.values()), states
    # ... and a task ran exactly when its row says it succeeded
    ran_extra = (work / "extra_ran").exists()
    assert ran_extra == (states.get("extra") == TaskState.SUCCESS), (ran_extra, states)


async def test_a_paused_dag_holds_new_runs_in_queued_until_unpaused(
    store: PostgresStateStore, work: Path, dags: Path, logs: Path
) -> None:
    dag_file = write_dag(
        dags,
        "pausable",
        """
        with DAG("pausable", default_args={"cwd": W}):
            Bash("mark", "touch ran")
        """,
        work,
    )
    async with running_engine(store, logs, [dag_file]) as engine:
        assert await engine.engine.set_paused("pausable", True) is not None
        record, created = await engine.trigger("pausable", "while_paused")
        assert created
        await engine.engine.writer.flushed()
        held = await store.get_run("pausable", "while_paused")
        held_tis = await task_instances(store, record.pk)
        ran_while_paused = (work / "ran").exists()
        unpaused = await engine.engine.set_paused("pausable", False)
        done = await wait_run(store, "pausable", "while_paused")

    assert held is not None and held.state == RunState.QUEUED and held.start_date is None
    assert {ti.state for ti in held_tis.values()} == {TaskState.NONE}
    assert not ran_while_paused
    assert unpaused is not None and not unpaused.is_paused
    assert done.state == RunState.SUCCESS and (work / "ran").exists()


async def test_pausing_an_unknown_dag_answers_none(store: PostgresStateStore, logs: Path) -> None:
    async with running_engine(store, logs, []) as engine:
        assert await engine.engine.set_paused("nope", True) is None
