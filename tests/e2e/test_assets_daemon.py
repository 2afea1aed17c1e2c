"""End to end: assets through `orchestrator run` as a process: an external event posted over HTTP
fans out to every DAG waiting on it, a producer → consumer → consumer chain, the CLI's listings,
and a restart that creates no run twice."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.harness import Daemon, wait_for

pytestmark = pytest.mark.e2e

DAGS = textwrap.dedent(
    """
    from orchestrator import DAG, Bash
    from orchestrator.authoring.assets import Asset

    for name in ("ext_one", "ext_two"):
        with DAG(name, schedule=Asset("s3://e2e/landing")):
            Bash("show", "echo rows={{ triggering_asset_events['s3://e2e/landing'][0].extra.rows }}")

    with DAG("producer"):
        Bash("make", "echo made", outlets=[Asset("s3://e2e/a")])

    with DAG("middle", schedule=Asset("s3://e2e/a")):
        Bash("relay", "echo relayed", outlets=[Asset("s3://e2e/b")])

    with DAG("last", schedule=Asset("s3://e2e/a") & Asset("s3://e2e/b")):
        Bash("end", "echo {{ dag_run.run_type }} {{ triggering_asset_events | list | sort | join(',') }}")
    """
)


def finished_runs(daemon: Daemon, dag_id: str, count: int) -> list[dict[str, Any]]:
    def done() -> list[dict[str, Any]] | None:
        runs = daemon.get(f"/api/v1/dags/{dag_id}/dagRuns").body["dag_runs"]
        return runs if len(runs) >= count and all(r["state"] in ("success", "failed") for r in runs) else None

    return wait_for(done, 30, f"{count} finished runs of {dag_id}")


def test_external_events_and_an_asset_chain_through_the_daemon(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon()
    daemon.write_dag("assets.py", DAGS)
    daemon.start()
    for dag_id in ("ext_one", "ext_two", "producer", "middle", "last"):
        daemon.wait_dag(dag_id)

    posted = daemon.post("/api/v1/assets/events", {"asset_uri": "s3://e2e/landing", "extra": {"rows": 12}})
    assert posted.status == 200, posted.text
    assert posted.body["asset_uri"] == "s3://e2e/landing" and posted.body["extra"] == {"rows": 12}
    for dag_id in ("ext_one", "ext_two"):
        (run,) = finished_runs(daemon, dag_id, 1)
        assert run["state"] == "success", daemon.logs()
        assert run["run_type"] == "asset_triggered"
        assert "rows=12" in daemon.task_log(dag_id, run["dag_run_id"], "show", 1)

    daemon.trigger("producer", dag_run_id="p1")
    assert daemon.wait_run("producer", "p1")["state"] == "success"
    (middle,) = finished_runs(daemon, "middle", 1)
    (last,) = finished_runs(daemon, "last", 1)
    assert middle["state"] == last["state"] == "success", daemon.logs()
    assert "asset_triggered s3://e2e/a,s3://e2e/b" in daemon.task_log("last", last["dag_run_id"], "end", 1)

    events = json.loads(daemon.cli("assets", "events", "--uri", "s3://e2e/landing", "-o", "json").stdout)
    (event,) = events["asset_events"]
    assert sorted(run["dag_id"] for run in event["created_dagruns"]) == ["ext_one", "ext_two"]
    table = daemon.cli("assets", "list").stdout
    assert "s3://e2e/a" in table and "producer.make" in table and "middle" in table
    assert "external" in daemon.cli("assets", "events").stdout

    # a restart looks at every queue again: nothing was left, nothing runs twice
    assert daemon.stop() == 0
    daemon.start()
    # a run to wait for once the file is parsed again (the store lists the DAG before that)
    body = {"dag_run_id": "manual_after_restart"}
    wait_for(lambda: daemon.post("/api/v1/dags/ext_one/dagRuns", body).status == 200, 30, "ext_one loaded")
    daemon.wait_run("ext_one", "manual_after_restart")
    for dag_id, expected in (("ext_two", 1), ("middle", 1), ("last", 1)):
        assert len(daemon.get(f"/api/v1/dags/{dag_id}/dagRuns").body["dag_runs"]) == expected
