"""Asset-triggered runs end to end on a real engine and PostgreSQL: a producer → consumer →
consumer chain runs each consumer exactly once per producer success, `|` and `&` conditions,
`triggering_asset_events` in templates and Python tasks, a success whose commit is refused
records no event, a paused consumer keeps its queue, events queued while no daemon ran make
their run at start-up (once), a restarted try still sees its run's events, and an external
event posted over HTTP fans out to every DAG waiting on it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from orchestrator.api import create_app
from orchestrator.core.records import NewAssetEvent, RunRecord
from orchestrator.core.states import FINISHED_RUN_STATES, RunState, TaskState
from orchestrator.engine.clock import SystemClock
from orchestrator.engine.timers import LoopTimers
from orchestrator.errors import InvalidRequest
from orchestrator.triggers.assets import AssetTrigger
from storage.postgres import PostgresStateStore
from tests.apiauth import api_settings, headers
from tests.integration.engine_harness import (
    EngineHarness,
    gate_wait,
    running_engine,
    wait_for,
    wait_run,
    wait_ti,
    write_dag,
)

pytestmark = pytest.mark.anyio

HEADER = "from orchestrator.authoring.assets import Asset\n"


@asynccontextmanager
async def asset_engine(
    store: PostgresStateStore, logs: Path, dag_files: Sequence[Path], **options: Any
) -> AsyncIterator[tuple[EngineHarness, AssetTrigger]]:
    """A running engine with the asset trigger wired as the daemon wires it."""
    triggers: list[AssetTrigger] = []

    async def wire(harness: EngineHarness) -> None:
        clock = SystemClock()
        trigger = AssetTrigger(harness.engine, store, clock, LoopTimers(clock))
        trigger.attach()
        await trigger.recover()
        triggers.append(trigger)

    async with running_engine(store, logs, dag_files, before_recover=wire, **options) as harness:
        triggers[0].start()
        yield harness, triggers[0]


async def runs_of(store: PostgresStateStore, dag_id: str) -> list[RunRecord]:
    runs, _ = await store.list_runs(dag_id, 100, 0)
    return sorted(runs, key=lambda run: run.pk)


async def wait_finished_runs(store: PostgresStateStore, dag_id: str, count: int) -> list[RunRecord]:
    """The DAG's runs once `count` of them exist and all are finished."""

    async def finished() -> list[RunRecord] | None:
        runs = await runs_of(store, dag_id)
        done = len(runs) >= count and all(run.state in FINISHED_RUN_STATES for run in runs)
        return runs if done else None

    return await wait_for(finished, 20, f"{count} finished runs of {dag_id}")


async def quiet(harness: EngineHarness, trigger: AssetTrigger) -> None:
    """Everything committed and nothing left for the asset trigger to look at."""
    for _ in range(3):
        await harness.engine.writer.flushed()
        await trigger.settled()


def dag_file(dags: Path, name: str, body: str, work: Path) -> Path:
    path = write_dag(dags, name, body, work)
    path.write_text(HEADER + path.read_text())
    return path


async def test_a_producer_consumer_consumer_chain_runs_each_consumer_once_per_success(
    store: PostgresStateStore, dags: Path, logs: Path, work: Path
) -> None:
    path = dag_file(
        dags,
        "chain",
        """
        @task
        def count_events(triggering_asset_events):
            print("python saw", sorted(triggering_asset_events), len(triggering_asset_events["s3://chain/b"]))

        with DAG("producer"):
            Bash("make", "echo made", outlets=[Asset("s3://chain/a")])

        with DAG("middle", schedule=Asset("s3://chain/a")):
            Bash(
                "relay",
                "echo from {{ triggering_asset_events['s3://chain/a'][0].source_dag_id }}"
                "/{{ triggering_asset_events['s3://chain/a'][0].source_task_id }}",
                outlets=[Asset("s3://chain/b")],
            )

        with DAG("last", schedule=[Asset("s3://chain/b")]):
            Bash("end", "echo type={{ dag_run.run_type }} conf={{ dag_run.conf }}")
            count_events()
        """,
        work,
    )
    async with asset_engine(store, logs, [path]) as (harness, trigger):
        for round_ in (1, 2):
            produced = await harness.run("producer", run_id=f"p{round_}")
            assert produced.state == RunState.SUCCESS
            middle = await wait_finished_runs(store, "middle", round_)
            last = await wait_finished_runs(store, "last", round_)
            await quiet(harness, trigger)
            assert len(await runs_of(store, "middle")) == round_
            assert len(await runs_of(store, "last")) == round_
        assert all(run.state == RunState.SUCCESS for run in middle + last)
        run = last[-1]
        assert run.run_type == "asset_triggered" and run.conf == {} and not run.external_trigger
        assert run.data_interval_start <= run.data_interval_end <= run.logical_date
        assert "from producer/make" in harness.log_text("middle", middle[0].run_id, "relay", 1)
        assert "type=asset_triggered conf={}" in harness.log_text("last", run.run_id, "end", 1)
        assert "python saw ['s3://chain/b'] 1" in harness.log_text("last", run.run_id, "count_events", 1)
        events, total = await store.list_asset_events(10, 0, uri="s3://chain/a")
        assert total == 2 and [e.source_run_id for e in events] == ["p1", "p2"]
        assert [e.created_dagruns for e in events] == [(("middle", m.run_id),) for m in middle]


async def test_any_and_all_conditions(store: PostgresStateStore, dags: Path, logs: Path, work: Path) -> None:
    path = dag_file(
        dags,
        "conditions",
        """
        with DAG("make_a"):
            Bash("t", "true", outlets=[Asset("s3://a")])
        with DAG("make_b"):
            Bash("t", "true", outlets=[Asset("s3://b")])
        with DAG("either", schedule=Asset("s3://a") | Asset("s3://b")):
            Bash("t", "echo {{ triggering_asset_events | list | sort | join(',') }}")
        with DAG("both", schedule=Asset("s3://a") & Asset("s3://b")):
            Bash("t", "echo {{ triggering_asset_events | list | sort | join(',') }}")
        """,
        work,
    )
    async with asset_engine(store, logs, [path]) as (harness, trigger):
        await harness.run("make_a", "a1")
        await wait_finished_runs(store, "either", 1)
        await quiet(harness, trigger)
        assert await runs_of(store, "both") == []
        await harness.run("make_b", "b1")
        either = await wait_finished_runs(store, "either", 2)
        (both,) = await wait_finished_runs(store, "both", 1)
        await quiet(harness, trigger)
        assert len(await runs_of(store, "either")) == 2 and len(await runs_of(store, "both")) == 1
        assert "s3://a,s3://b" in harness.log_text("both", both.run_id, "t", 1)
        assert "s3://b" in harness.log_text("either", either[1].run_id, "t", 1)
        # `both` consumed a and b: a new a alone does not run it again
        await harness.run("make_a", "a2")
        await wait_finished_runs(store, "either", 3)
        await quiet(harness, trigger)
        assert len(await runs_of(store, "both")) == 1


async def test_a_success_the_database_refuses_records_no_asset_event(
    store: PostgresStateStore, dags: Path, logs: Path, work: Path
) -> None:
    path = dag_file(
        dags,
        "refused",
        """
        @task(outlets=[Asset("s3://refused")])
        def nul():
            return "nul\\x00byte"

        with DAG("producer"):
            nul()
        with DAG("consumer", schedule=Asset("s3://refused")):
            Bash("t", "true")
        """,
        work,
    )
    async with asset_engine(store, logs, [path]) as (harness, trigger):
        run = await harness.run("producer")
        await quiet(harness, trigger)
        assert run.state == RunState.FAILED
        assert "the database refused this try's return value" in harness.log_text("producer", "r1", "nul", 1)
        assert (await store.list_asset_events(10, 0))[1] == 0
        assert await runs_of(store, "consumer") == []


async def test_a_paused_consumer_keeps_its_queue_and_runs_once_when_unpaused(
    store: PostgresStateStore, dags: Path, logs: Path, work: Path
) -> None:
    path = dag_file(
        dags,
        "paused",
        """
        with DAG("producer"):
            Bash("t", "true", outlets=[Asset("s3://p")])
        with DAG("consumer", schedule=Asset("s3://p")):
            Bash("t", "echo events={{ triggering_asset_events['s3://p'] | length }}")
        """,
        work,
    )
    async with asset_engine(store, logs, [path]) as (harness, trigger):
        await harness.engine.set_paused("consumer", True)
        await harness.run("producer", "p1")
        await harness.run("producer", "p2")
        await quiet(harness, trigger)
        assert await runs_of(store, "consumer") == []
        await harness.engine.set_paused("consumer", False)
        (run,) = await wait_finished_runs(store, "consumer", 1)
        await quiet(harness, trigger)
        assert len(await runs_of(store, "consumer")) == 1
        assert "events=2" in harness.log_text("consumer", run.run_id, "t", 1)


async def test_events_queued_while_no_daemon_ran_make_one_run_at_start_up(
    store: PostgresStateStore, dags: Path, logs: Path, work: Path
) -> None:
    path = dag_file(
        dags,
        "restart",
        """
        with DAG("consumer", schedule=Asset("s3://r")):
            Bash("t", "echo rows={{ triggering_asset_events['s3://r'][0].extra.rows }}")
        """,
        work,
    )
    async with asset_engine(store, logs, [path]):
        pass  # the DAG is known (its queue rows need it), then the daemon stops
    # committed, then the daemon died before it looked at the queue
    await store.record_asset_event(NewAssetEvent("s3://r", datetime.now(UTC), {"rows": 7}))
    async with asset_engine(store, logs, [path]) as (harness, trigger):
        (run,) = await wait_finished_runs(store, "consumer", 1)
        await quiet(harness, trigger)
        assert run.state == RunState.SUCCESS
        assert "rows=7" in harness.log_text("consumer", run.run_id, "t", 1)
    async with asset_engine(store, logs, [path]) as (harness, trigger):
        await quiet(harness, trigger)
        assert len(await runs_of(store, "consumer")) == 1  # consumed once, whatever restarts


async def test_a_try_restarted_after_a_crash_still_sees_its_triggering_events(
    store: PostgresStateStore, dags: Path, logs: Path, work: Path
) -> None:
    gate = work / "gate"
    path = dag_file(
        dags,
        "crash",
        f"""
        with DAG("consumer", schedule=Asset("s3://c")):
            Bash(
                "t",
                "echo try={{{{ ti.try_number }}}} rows={{{{ triggering_asset_events['s3://c'][0].extra.rows }}}}; "
                + {gate_wait(gate)!r},
                retries=1,
                retry_delay=0,
            )
        """,
        work,
    )
    async with asset_engine(store, logs, [path]) as (harness, trigger):
        await trigger.record_asset_event("s3://c", {"rows": 5})
        (run,) = await wait_for(lambda: runs_of(store, "consumer"), 10, "the consumer's run")
        await wait_ti(store, run.pk, "t", [TaskState.RUNNING])
        harness.crash()
    gate.touch()
    async with asset_engine(store, logs, [path]) as (harness, _):
        finished = await wait_run(store, "consumer", run.run_id)
        assert finished.state == RunState.SUCCESS
        assert "try=2 rows=5" in harness.log_text("consumer", run.run_id, "t", 2)
        assert len(await runs_of(store, "consumer")) == 1


async def test_an_external_event_posted_over_http_fans_out_to_every_waiting_dag(
    store: PostgresStateStore, dags: Path, logs: Path, work: Path
) -> None:
    path = dag_file(
        dags,
        "external",
        """
        for name in ("left", "right"):
            with DAG(name, schedule=Asset("s3://landing/orders")):
                Bash("t", "echo got {{ triggering_asset_events['s3://landing/orders'][0].extra.rows }}")
        with DAG("unrelated", schedule=Asset("s3://other")):
            Bash("t", "true")
        """,
        work,
    )
    async with asset_engine(store, logs, [path]) as (harness, trigger):
        app = create_app(
            store, harness.engine, logs, harness.task_logs, settings=api_settings(), assets=trigger
        )
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}/api/v1"
        try:
            async with aiohttp.ClientSession(headers=headers()) as http:
                body = {"asset_uri": "s3://landing/orders", "extra": {"rows": 42}}
                async with http.post(f"{base}/assets/events", json=body) as response:
                    assert response.status == 200
                    event = await response.json()
                assert event["asset_uri"] == event["dataset_uri"] == "s3://landing/orders"
                assert event["extra"] == {"rows": 42} and event["source_dag_id"] is None
                assert {"id", "timestamp", "created_dagruns", "source_task_id", "source_run_id"} <= set(event)
                left = await wait_finished_runs(store, "left", 1)
                right = await wait_finished_runs(store, "right", 1)
                await quiet(harness, trigger)
                assert await runs_of(store, "unrelated") == []
                assert "got 42" in harness.log_text("left", left[0].run_id, "t", 1)
                async with http.get(
                    f"{base}/assets/events", params={"asset_uri": "s3://landing/orders"}
                ) as response:
                    listed = await response.json()
                assert listed["total_entries"] == 1
                created = {
                    (run["dag_id"], run["dag_run_id"]) for run in listed["asset_events"][0]["created_dagruns"]
                }
                assert created == {("left", left[0].run_id), ("right", right[0].run_id)}
                async with http.get(f"{base}/datasets") as response:
                    datasets = await response.json()
                (dataset,) = [d for d in datasets["datasets"] if d["uri"] == "s3://landing/orders"]
                assert [d["dag_id"] for d in dataset["consuming_dags"]] == ["left", "right"]
                for bad, detail in (
                    ({"extra": {}}, "must name the asset"),
                    ({"asset_uri": "s3://x", "extra": [1]}, "extra must be a JSON object"),
                    ({"asset_uri": "has space"}, "without spaces"),
                    ({"asset_uri": "s3://x", "dag_id": "left"}, "dag_id"),
                ):
                    async with http.post(f"{base}/assets/events", json=bad) as response:
                        assert response.status == 400, bad
                        assert detail in (await response.json())["detail"]
        finally:
            await runner.cleanup()


async def test_a_consumer_reloaded_with_a_condition_its_queue_now_meets_runs(
    store: PostgresStateStore, dags: Path, logs: Path, work: Path
) -> None:
    body = """
        with DAG("consumer", schedule=Asset("s3://x") & Asset("s3://y")):
            Bash("t", "echo {{ triggering_asset_events | list | join(',') }}")
        """
    path = dag_file(dags, "reload", body, work)
    async with asset_engine(store, logs, [path]) as (harness, trigger):
        await trigger.record_asset_event("s3://x", {})
        await quiet(harness, trigger)
        assert await runs_of(store, "consumer") == []
        dag_file(dags, "reload", body.replace('Asset("s3://x") & Asset("s3://y")', 'Asset("s3://x")'), work)
        await harness.reload(path)
        (run,) = await wait_finished_runs(store, "consumer", 1)
        assert run.state == RunState.SUCCESS
        assert "s3://x" in harness.log_text("consumer", run.run_id, "t", 1)


async def test_the_sink_records_a_delivery_once_per_idempotency_key(
    store: PostgresStateStore, dags: Path, logs: Path, work: Path
) -> None:
    path = dag_file(
        dags,
        "sink",
        """
        with DAG("consumer", schedule=Asset("s3://hook")):
            Bash("t", "true")
        """,
        work,
    )
    async with asset_engine(store, logs, [path]) as (harness, trigger):
        first = await trigger.record_asset_event("s3://hook", {"n": 1}, idempotency_key="delivery-7")
        await wait_finished_runs(store, "consumer", 1)
        again = await trigger.record_asset_event("s3://hook", {"n": 2}, idempotency_key="delivery-7")
        await quiet(harness, trigger)
        assert first[1] and again == (first[0], False)
        assert len(await runs_of(store, "consumer")) == 1
        with pytest.raises(InvalidRequest, match="non-empty string"):
            await trigger.record_asset_event("", {})
