"""Webhooks end to end: `orchestrator run` with a [webhooks.github-push] table, a GitHub-signed push
over HTTP, the run it starts succeeding with the mapped conf in its task's log, the delivery log
through the CLI, and a daemon that refuses to start without its webhook's secret."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.harness import Daemon, wait_for

pytestmark = pytest.mark.e2e

SECRET = "e2e-webhook-secret-0123456789"

WEBHOOK_CONFIG = """
[webhooks.github-push]
dag_id = "build"
auth = "github"
secret_env = "GITHUB_WEBHOOK_SECRET"
delivery_id_header = "X-GitHub-Delivery"
conf = { ref = "ref", repo = "repository.full_name" }
filter = { "headers.X-GitHub-Event" = ["push"], "ref" = ["refs/heads/main"] }
"""

BUILD_DAG = """
from orchestrator import DAG, Bash

with DAG("build"):
    Bash("checkout", 'echo "checking out {{ dag_run.conf["ref"] }} of {{ dag_run.conf["repo"] }}"')
    Bash("environment", 'echo "secret=[${GITHUB_WEBHOOK_SECRET:-}]"')
"""


def deliver(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def github_headers(body: bytes, delivery: str, secret: str = SECRET) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
    }


def test_a_github_signed_push_runs_the_dag_with_the_mapped_conf(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(extra_config=WEBHOOK_CONFIG, env={"GITHUB_WEBHOOK_SECRET": SECRET})
    daemon.write_dag("build.py", BUILD_DAG)
    daemon.start()
    daemon.wait_dag("build")
    url = daemon.url + "/api/v1/webhooks/github-push"
    body = json.dumps(
        {"ref": "refs/heads/main", "repository": {"full_name": "acme/app"}, "after": "c0ffee"}
    ).encode()

    status, answer = deliver(url, body, github_headers(body, "e2e-1"))
    assert (status, answer) == (202, {"dag_run_id": "webhook__github-push__e2e-1", "created": True})
    run = daemon.wait_run("build", "webhook__github-push__e2e-1")
    assert run["state"] == "success" and run["conf"] == {"ref": "refs/heads/main", "repo": "acme/app"}
    assert run["run_type"] == "manual"
    assert "checking out refs/heads/main of acme/app" in daemon.task_log(
        "build", run["dag_run_id"], "checkout", 1
    )

    # the daemon read the secret and took it out of the environment tasks inherit
    assert "secret=[]" in daemon.task_log("build", run["dag_run_id"], "environment", 1)

    assert deliver(url, body, github_headers(body, "e2e-1"))[0] == 200  # a redelivery
    assert deliver(url, body, github_headers(body, "e2e-2", "wrong-secret"))[0] == 401

    table = daemon.cli("webhooks", "deliveries", "github-push").stdout
    lines = table.splitlines()
    assert lines[0].split() == [
        "received_at",
        "delivery_id",
        "status",
        "created",
        "dag_id",
        "dag_run_id",
        "reason",
    ]
    assert len(lines) == 5 and "e2e-2" in lines[2] and "401" in lines[2]
    listed = json.loads(daemon.cli("webhooks", "deliveries", "github-push", "--output", "json").stdout)
    assert listed["total_entries"] == 3
    assert [d["status"] for d in listed["deliveries"]] == [401, 200, 202]

    assert daemon.stop() == 0
    assert SECRET not in daemon.logs()


def test_the_daemon_refuses_to_start_without_the_webhooks_secret(workdir: Path, database_dsn: str) -> None:
    daemon = Daemon(root=workdir, database_dsn=database_dsn, extra_config=WEBHOOK_CONFIG)
    daemon.write_config()
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", "--config", str(daemon.config_path)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "GITHUB_WEBHOOK_SECRET"},
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "error: webhooks.github-push.secret_env names GITHUB_WEBHOOK_SECRET, which is not set"
    ), result.stderr


ASSET_WEBHOOK_CONFIG = """
[webhooks.orders-landed]
asset_uri = "s3://lake/orders"
auth = "token"
secret_env = "ORDERS_TOKEN"
delivery_id_header = "X-Delivery"
conf = { rows = "detail.rows" }
"""

ASSET_CONSUMERS = """
from orchestrator import DAG, Asset, Bash

orders = Asset("s3://lake/orders")
for name in ("report", "refresh"):
    with DAG(name, schedule=[orders]):
        Bash("read", "echo {name} saw {{{{ triggering_asset_events['s3://lake/orders'][0].extra.rows }}}} rows".format(name=name))
"""


def test_a_webhook_declared_with_an_asset_uri_fans_out_to_every_dag_waiting_on_the_asset(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(extra_config=ASSET_WEBHOOK_CONFIG, env={"ORDERS_TOKEN": "t0ken-for-orders"})
    daemon.write_dag("consumers.py", ASSET_CONSUMERS)
    daemon.start()
    daemon.wait_dag("report")
    daemon.wait_dag("refresh")
    url = daemon.url + "/api/v1/webhooks/orders-landed"
    body = json.dumps({"detail": {"rows": 42}}).encode()
    headers = {
        "Content-Type": "application/json",
        "Authorization": "Bearer t0ken-for-orders",
        "X-Delivery": "d-1",
    }

    status, answer = deliver(url, body, headers)
    assert status == 202 and answer["created"] is True, answer
    again, repeated = deliver(url, body, headers)  # the same delivery id: no second event
    assert again == 200 and repeated["created"] is False, repeated
    wrong, _ = deliver(url, body, {**headers, "Authorization": "Bearer nope"})
    assert wrong == 401

    for dag_id in ("report", "refresh"):
        runs = wait_for(
            lambda dag_id=dag_id: daemon.get(f"/api/v1/dags/{dag_id}/dagRuns").body["dag_runs"] or None,
            30,
            f"the asset-triggered run of {dag_id}",
        )
        assert len(runs) == 1 and runs[0]["run_type"] in ("asset_triggered", "dataset_triggered")
        run = daemon.wait_run(dag_id, runs[0]["dag_run_id"])
        assert run["state"] == "success"
        assert f"{dag_id} saw 42 rows" in daemon.task_log(dag_id, run["dag_run_id"], "read", 1)
    events = daemon.get("/api/v1/assets/events?asset_uri=s3://lake/orders").body
    assert events["total_entries"] == 1
