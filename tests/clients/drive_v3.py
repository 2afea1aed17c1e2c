"""Drive /api/v2 with the official `apache-airflow-client` 3.x, as an Airflow 3 script would.

Run as `python drive_v3.py URL TOKEN DAG_ID` with the 3.x client on PYTHONPATH (and nothing of
this project: the client is all it uses). Exchanges the API token for an access token at
POST /auth/token, then lists DAGs, reads one, pauses and unpauses it,
triggers a run with conf and a null logical_date, waits (with a deadline) for the run to finish,
then reads the run, its task instances and each task's log of try 1, and prints what it saw as
one JSON object on stdout. Every answer goes through the client's strict response models, so a
missing or mistyped field fails the script.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from typing import Any

import airflow_client.client as client
from airflow_client.client.api.dag_api import DAGApi
from airflow_client.client.api.dag_run_api import DagRunApi
from airflow_client.client.api.monitor_api import MonitorApi
from airflow_client.client.api.task_instance_api import TaskInstanceApi
from airflow_client.client.api.version_api import VersionApi
from airflow_client.client.models.dag_patch_body import DAGPatchBody
from airflow_client.client.models.trigger_dag_run_post_body import TriggerDAGRunPostBody

DEADLINE = 30.0
FINISHED = {"success", "failed"}


def wait_finished(runs: DagRunApi, dag_id: str, run_id: str) -> Any:
    """The run once it is finished; fails after DEADLINE s."""
    deadline = time.monotonic() + DEADLINE
    while True:
        run = runs.get_dag_run(dag_id, run_id)
        if run.state.value in FINISHED:
            return run
        if time.monotonic() > deadline:
            raise SystemExit(f"run {dag_id}/{run_id} did not finish within {DEADLINE} s: {run.state}")
        time.sleep(0.05)  # pacing between polls of the run's state


def log_text(content: Any) -> list[str]:
    """The log's lines, whichever of its two shapes (structured messages or strings) came."""
    return [line if isinstance(line, str) else line.event for line in content.actual_instance]


def access_token(url: str, token: str) -> str:
    """An access token from POST /auth/token, as Airflow 3's docs tell scripts to get one."""
    body = json.dumps({"username": "script", "password": token}).encode()
    request = urllib.request.Request(
        f"{url}/auth/token", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=10) as answer:
        issued: str = json.load(answer)["access_token"]
        return issued


def main(url: str, token: str, dag_id: str) -> dict[str, Any]:
    configuration = client.Configuration(host=url, access_token=access_token(url, token))
    with client.ApiClient(configuration) as api:
        dags, runs, tis = DAGApi(api), DagRunApi(api), TaskInstanceApi(api)
        listed = dags.get_dags()
        dag = dags.get_dag(dag_id)
        paused = dags.patch_dag(dag_id, DAGPatchBody(is_paused=True)).is_paused
        unpaused = dags.patch_dag(dag_id, DAGPatchBody(is_paused=False)).is_paused
        body = TriggerDAGRunPostBody(logical_date=None, conf={"greeting": "hello from v3"})
        triggered = runs.trigger_dag_run(dag_id, body)
        run = wait_finished(runs, dag_id, triggered.dag_run_id)
        listed_runs = runs.get_dag_runs(dag_id)
        instances = tis.get_task_instances(dag_id, run.dag_run_id)
        logs = {
            ti.task_id: log_text(tis.get_log(dag_id, run.dag_run_id, ti.task_id, 1).content)
            for ti in instances.task_instances
        }
        one = tis.get_task_instance(dag_id, run.dag_run_id, instances.task_instances[0].task_id)
        health = MonitorApi(api).get_health()
        version = VersionApi(api).get_version()
        missing: dict[str, Any] = {}
        try:
            dags.get_dag("no-such-dag")
        except client.ApiException as exc:
            missing = {"status": exc.status, "body": json.loads(exc.body)}
    return {
        "dag_ids": [d.dag_id for d in listed.dags],
        "total_entries": listed.total_entries,
        "dag": {"dag_id": dag.dag_id, "is_stale": dag.is_stale, "bundle_name": dag.bundle_name},
        "paused": paused,
        "unpaused": unpaused,
        "triggered": {
            "dag_run_id": triggered.dag_run_id,
            "conf": triggered.conf,
            "state": triggered.state.value,
            "run_type": triggered.run_type.value,
            "logical_date_has_offset": triggered.logical_date is None
            or triggered.logical_date.utcoffset() is not None,
        },
        "run": {"state": run.state.value, "conf": run.conf, "run_after": run.run_after.isoformat()},
        "listed_run_ids": [r.dag_run_id for r in listed_runs.dag_runs],
        "task_instances": {ti.task_id: ti.state.value for ti in instances.task_instances},
        "task_instance": {"task_id": one.task_id, "try_number": one.try_number, "id": str(one.id)},
        "logs": logs,
        "health": health.metadatabase.status,
        "version": version.version,
        "missing_dag": missing,
    }


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
