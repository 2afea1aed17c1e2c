"""Templates cannot stop, stall or exhaust the engine: a template past a limit fails its own try
with the reason in its log, a template that can loop renders off the event loop, and the
other runs carry on meanwhile. Real engine, real PostgreSQL, real processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.core.states import RunState, TaskState
from orchestrator.core.template_limits import TemplateLimits
from storage.postgres import PostgresStateStore
from tests.integration.engine_harness import running_engine, task_instances, wait_run, wait_ti, write_dag

pytestmark = pytest.mark.anyio

#: about 2e7 template iterations: seconds of CPU when rendered inline, in the event loop
LONG_LOOP = "{% for i in range(2000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}"
#: a loop no deadline short of minutes lets finish
ENDLESS_LOOP = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


@pytest.fixture
def work(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


async def test_a_template_past_the_render_timeout_fails_its_try_with_the_reason(
    store: PostgresStateStore, tmp_path: Path, work: Path
) -> None:
    dag_file = write_dag(
        tmp_path / "dags",
        "slow_template",
        f"""
        with DAG("slow_template", default_args={{"cwd": W}}):
            Bash("spin", "{LONG_LOOP}touch rendered", retries=1, retry_delay=0)
        """,
        work,
    )
    limits = TemplateLimits(render_timeout=0.05)
    async with running_engine(
        store, tmp_path / "logs", [dag_file], engine_options={"template_limits": limits}
    ) as engine:
        run = await engine.run("slow_template")
        tis = await task_instances(store, run.pk)
        logs = [engine.log_text("slow_template", "r1", "spin", n) for n in (1, 2)]
    assert run.state == RunState.FAILED
    assert (tis["spin"].state, tis["spin"].try_number) == (TaskState.FAILED, 2)
    assert not (work / "rendered").exists()
    for number, text in enumerate(logs, start=1):
        assert f"try {number} failed" in text, text
        assert "templates.render_timeout (0.05 s)" in text, text


async def test_a_template_past_the_output_limit_fails_its_try_and_the_run_carries_on(
    store: PostgresStateStore, tmp_path: Path, work: Path
) -> None:
    dag_file = write_dag(
        tmp_path / "dags",
        "big_template",
        """
        with DAG("big_template", default_args={"cwd": W}):
            big = Bash("big", "echo {{ 'x' * 100000000 }}")
            after = Bash("after", "touch after_ran", trigger_rule="all_done")
            big >> after
        """,
        work,
    )
    async with running_engine(store, tmp_path / "logs", [dag_file]) as engine:
        run = await engine.run("big_template")
        tis = await task_instances(store, run.pk)
        text = engine.log_text("big_template", "r1", "big", 1)
    assert tis["big"].state == TaskState.FAILED
    assert tis["after"].state == TaskState.SUCCESS and (work / "after_ran").exists()
    assert "the repetition would be 100,000,000 long, more than templates.max_output_bytes" in text, text


async def test_a_looping_template_renders_off_the_loop_while_other_runs_finish(
    store: PostgresStateStore, tmp_path: Path, work: Path
) -> None:
    dags = tmp_path / "dags"
    spinning = write_dag(
        dags,
        "spinning",
        f"""
        with DAG("spinning", default_args={{"cwd": W}}):
            Bash("spin", "{ENDLESS_LOOP}touch rendered")
        """,
        work,
    )
    quick = write_dag(
        dags,
        "quick",
        """
        with DAG("quick", default_args={"cwd": W}):
            Bash("q", "echo {{ ds }} > quick_ran")
        """,
        work,
    )
    # a deadline far beyond what the quick run needs: the spinning render is still under way
    limits = TemplateLimits(render_timeout=60.0)
    async with running_engine(
        store, tmp_path / "logs", [spinning, quick], engine_options={"template_limits": limits}
    ) as engine:
        spin_run, _ = await engine.trigger("spinning")
        await wait_ti(store, spin_run.pk, "spin", [TaskState.QUEUED])
        quick_run = await engine.run("quick")
        spin = (await task_instances(store, spin_run.pk))["spin"]
        # leaving the block drains the engine: the render stops and its try stays queued
    assert quick_run.state == RunState.SUCCESS and (work / "quick_ran").exists()
    assert spin.state == TaskState.QUEUED and spin.try_number == 1
    after = (await task_instances(store, spin_run.pk))["spin"]
    assert after.state == TaskState.QUEUED and not (work / "rendered").exists()
    assert (await wait_run(store, "quick", "r1")).state == RunState.SUCCESS


async def test_the_shipped_example_passes_conf_to_the_shell_as_data(
    store: PostgresStateStore, tmp_path: Path
) -> None:
    example = Path(__file__).resolve().parents[2] / "dags" / "example_etl.py"
    marker = tmp_path / "injected"
    day = f"$(touch {marker})"
    async with running_engine(store, tmp_path / "logs", [example]) as engine:
        run, _ = await engine.trigger("example_etl", conf={"day": day})
        finished = await wait_run(store, "example_etl", run.run_id)
        extract = engine.log_text("example_etl", run.run_id, "extract", 1)
        load = engine.log_text("example_etl", run.run_id, "load", 1)
    assert finished.state == RunState.SUCCESS
    assert not marker.exists()
    assert f"extracting {day} for run {run.run_id}" in extract, extract
    assert f"loading 42 rows for {day}" in load, load
