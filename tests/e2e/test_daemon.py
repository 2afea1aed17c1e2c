"""End to end: `orchestrator run` as a process, DAG files on disk, HTTP and the CLI in front."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from storage.embedded import SYSTEM_DATA_ROOT, EmbeddedPostgres, embedded_data_dir
from tests.e2e.harness import Daemon, wait_for

pytestmark = pytest.mark.e2e

ETL = textwrap.dedent(
    """
    from orchestrator import DAG, Bash, task

    with DAG("etl", schedule=None, max_active_runs=4, params={"day": "2026-01-01"}) as dag:
        extract = Bash(
            "extract",
            "echo extracting {{ params.day }} for run {{ run_id }} try {{ ti.try_number }} k={{ dag_run.conf.get('k') }}",
            retries=2, retry_delay=0, execution_timeout=600,
        )

        @task
        def transform(rows: int) -> dict:
            print("transforming", rows)
            return {"rows": rows * 2}

        load = Bash("load", "echo loaded {{ ti.xcom_pull('transform')['rows'] }} rows; echo $ORCHESTRATOR_TASK_ID $GREETING",
                    env={"GREETING": "hello {{ ds }}"}, append_env=True, trigger_rule="all_done")
        extract >> transform(21) >> load
    """
)


def test_a_dag_runs_end_to_end_with_templates_xcoms_and_env(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon()
    daemon.write_dag("etl.py", ETL)
    daemon.start()
    daemon.wait_dag("etl")

    created = daemon.trigger("etl", dag_run_id="first", conf={"k": 1})
    assert created["dag_run_id"] == "first" and created["dag_id"] == "etl"
    run = daemon.wait_run("etl", "first")
    assert run["state"] == "success", daemon.logs()

    tis = daemon.task_instances("etl", "first")
    assert {t: ti["state"] for t, ti in tis.items()} == {
        "extract": "success",
        "transform": "success",
        "load": "success",
    }
    assert all(ti["try_number"] == 1 for ti in tis.values())
    assert "extracting 2026-01-01 for run first try 1 k=1" in daemon.task_log("etl", "first", "extract", 1)
    assert "transforming 21" in daemon.task_log("etl", "first", "transform", 1)
    load_log = daemon.task_log("etl", "first", "load", 1)
    assert "loaded 42 rows" in load_log
    assert f"load hello {run['logical_date'][:10]}" in load_log


def test_the_same_run_id_twice_is_a_conflict_and_creates_nothing(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon()
    daemon.write_dag("etl.py", ETL)
    daemon.start()
    daemon.wait_dag("etl")
    daemon.trigger("etl", dag_run_id="once")
    second = daemon.post("/api/v1/dags/etl/dagRuns", {"dag_run_id": "once"})
    assert second.status == 409
    assert "once" in second.body["detail"]
    assert daemon.get("/api/v1/dags/etl/dagRuns").body["total_entries"] == 1
    assert daemon.post("/api/v1/dags/nope/dagRuns", {}).status == 404


def test_failures_retry_then_propagate_by_trigger_rule(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon()
    flaky_marker = daemon.root / "flaky-ran-once"
    daemon.write_dag(
        "rules.py",
        textwrap.dedent(
            f"""
            from orchestrator import DAG, Bash
            with DAG("rules") as dag:
                flaky = Bash("flaky", "if [ -e {flaky_marker} ]; then echo second; else touch {flaky_marker}; exit 3; fi",
                             retries=1, retry_delay=0)
                broken = Bash("broken", "echo about to fail >&2; exit 1")
                after_broken = Bash("after_broken", "echo never")
                cleanup = Bash("cleanup", "echo cleanup", trigger_rule="all_done")
                on_failure = Bash("on_failure", "echo alert", trigger_rule="one_failed")
                flaky >> broken >> after_broken >> cleanup
                broken >> on_failure
            """
        ),
    )
    daemon.start()
    daemon.wait_dag("rules")
    daemon.trigger("rules", dag_run_id="r1")
    run = daemon.wait_run("rules", "r1")
    states = {t: ti["state"] for t, ti in daemon.task_instances("rules", "r1").items()}
    assert states == {
        "flaky": "success",
        "broken": "failed",
        "after_broken": "upstream_failed",
        "cleanup": "success",
        "on_failure": "success",
    }
    assert run["state"] == "success"  # the leaves (cleanup, on_failure) succeeded: Airflow's rule
    tis = daemon.task_instances("rules", "r1")
    assert tis["flaky"]["try_number"] == 2
    assert "second" in daemon.task_log("rules", "r1", "flaky", 2)
    first_try = daemon.task_log("rules", "r1", "flaky", 1)
    assert "exit code 3" in first_try or "code 3" in first_try
    assert "about to fail" in daemon.task_log("rules", "r1", "broken", 1)


def test_execution_timeout_kills_the_task(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon()
    daemon.write_dag(
        "slow.py",
        textwrap.dedent(
            """
            from orchestrator import DAG, Bash
            with DAG("slow") as dag:
                Bash("sleeper", "sleep 300 & sleep 300", execution_timeout=0.5)
            """
        ),
    )
    daemon.start()
    daemon.wait_dag("slow")
    daemon.trigger("slow", dag_run_id="t")
    run = daemon.wait_run("slow", "t", timeout=30)
    assert run["state"] == "failed"
    assert "timed out" in daemon.task_log("slow", "t", "sleeper", 1).lower()


def test_new_broken_and_fixed_dag_files_are_followed_live(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon()
    daemon.write_dag("etl.py", ETL)
    daemon.start()
    daemon.wait_dag("etl")

    daemon.write_dag(
        "fresh.py",
        "from orchestrator import DAG, Bash\nwith DAG('fresh') as dag:\n    Bash('hello', 'echo hi')\n",
    )
    daemon.wait_dag("fresh", timeout=5)

    daemon.write_dag(
        "broken.py", "from orchestrator import DAG\nraise RuntimeError('boom in the DAG file')\n"
    )
    daemon.write_dag(
        "cycle.py",
        "from orchestrator import DAG, Bash\nwith DAG('cyclic') as dag:\n"
        "    a = Bash('a', 'true'); b = Bash('b', 'true'); a >> b >> a\n",
    )

    def errors() -> dict[str, str] | None:
        body = daemon.get("/api/v1/importErrors").body
        found = {e["filename"].rsplit("/", 1)[-1]: e["stack_trace"] for e in body["import_errors"]}
        return found if {"broken.py", "cycle.py"} <= found.keys() else None

    found = wait_for(errors, 5, "both import errors")
    assert "boom in the DAG file" in found["broken.py"]
    assert "cycle" in found["cycle.py"].lower()
    cli_errors = daemon.cli("dags", "errors").stdout
    assert "broken.py" in cli_errors and "boom in the DAG file" in cli_errors

    # every other DAG keeps working
    daemon.trigger("fresh", dag_run_id="still-works")
    assert daemon.wait_run("fresh", "still-works")["state"] == "success"

    daemon.write_dag(
        "broken.py",
        "from orchestrator import DAG, Bash\nwith DAG('repaired') as dag:\n    Bash('x', 'true')\n",
    )
    daemon.wait_dag("repaired", timeout=5)
    wait_for(
        lambda: all(
            not e["filename"].endswith("broken.py")
            for e in daemon.get("/api/v1/importErrors").body["import_errors"]
        ),
        5,
        "the fixed file's import error to clear",
    )


def test_cli_triggers_and_watches_a_run(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon()
    daemon.write_dag("etl.py", ETL)
    daemon.start()
    daemon.wait_dag("etl")

    triggered = daemon.cli("trigger", "etl", "--conf", json.dumps({"k": 7}), "--run-id", "from-cli")
    assert "from-cli" in triggered.stdout
    daemon.wait_run("etl", "from-cli")
    assert "from-cli" in daemon.cli("runs", "etl").stdout
    tasks = daemon.cli("tasks", "etl", "from-cli", "--output", "json").stdout
    assert {t["task_id"]: t["state"] for t in json.loads(tasks)["task_instances"]} == {
        "extract": "success",
        "transform": "success",
        "load": "success",
    }
    assert "k=7" in daemon.cli("logs", "etl", "from-cli", "extract").stdout
    assert "etl" in daemon.cli("dags", "list").stdout
    duplicate = daemon.cli("trigger", "etl", "--run-id", "from-cli", check=False)
    assert duplicate.returncode == 1 and "from-cli" in duplicate.stderr


def test_sigkill_mid_run_then_restart_finishes_without_rerunning_successes(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon()
    ledger = daemon.root / "ledger"
    gate = daemon.root / "gate"
    daemon.write_dag(
        "long.py",
        textwrap.dedent(
            f"""
            from orchestrator import DAG, Bash
            with DAG("long", max_active_tasks=4) as dag:
                prev = None
                for i in range(12):
                    # t05 blocks until the test opens the gate: the daemon dies while it runs
                    wait = "while [ ! -e {gate} ]; do sleep 0.05; done; " if i == 5 else ""
                    t = Bash(f"t{{i:02d}}", wait + f"echo t{{i:02d}} >> {ledger}", retries=1, retry_delay=0)
                    if prev is not None:
                        prev >> t
                    prev = t
            """
        ),
    )
    daemon.start()
    daemon.wait_dag("long")
    daemon.trigger("long", dag_run_id="crash")

    wait_for(
        lambda: daemon.task_instances("long", "crash")["t05"]["state"] == "running",
        20,
        "t05 to be running",
    )
    daemon.kill()  # t05's process survives its parent in its own session: the restart must kill it

    daemon.start()
    wait_for(
        lambda: daemon.task_instances("long", "crash")["t05"]["try_number"] == 2,
        20,
        "t05's second try",
    )
    gate.touch()
    run = daemon.wait_run("long", "crash", timeout=60)
    assert run["state"] == "success", daemon.logs()[-3000:]
    tis = daemon.task_instances("long", "crash")
    lines = ledger.read_text().split()
    for i in range(5):
        assert lines.count(f"t{i:02d}") == 1, f"t{i:02d} ran again after the restart"
        assert tis[f"t{i:02d}"]["try_number"] == 1
    assert tis["t05"]["try_number"] == 2
    assert lines.count("t05") == 1, "the orphaned first try of t05 was not killed"
    assert "the daemon stopped while try 1 was running" in daemon.task_log("long", "crash", "t05", 1)
    assert all(ti["state"] == "success" for ti in tis.values())


def test_sigterm_lets_running_tasks_finish_then_exits_cleanly(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon()
    started = daemon.root / "started"
    daemon.write_dag(
        "drain.py",
        textwrap.dedent(
            f"""
            from orchestrator import DAG, Bash
            with DAG("drain") as dag:
                first = Bash("first", "touch {started}; sleep 1; echo finished first")
                second = Bash("second", "echo second")
                first >> second
            """
        ),
    )
    daemon.start()
    daemon.wait_dag("drain")
    daemon.trigger("drain", dag_run_id="d")
    wait_for(started.exists, 20, "the first task to start")
    assert daemon.stop(signal.SIGTERM) == 0

    # the running task finished and was recorded; the next one waits, queued, for the next daemon
    daemon.start()
    run = daemon.wait_run("drain", "d")
    assert run["state"] == "success"
    tis = daemon.task_instances("drain", "d")
    assert tis["first"]["try_number"] == 1
    assert "finished first" in daemon.task_log("drain", "d", "first", 1)


def test_an_unknown_config_key_is_an_error_naming_key_and_file(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(extra_config="slotz = 3\n")
    daemon.write_config()
    with pytest.raises(AssertionError) as failure:
        daemon.start(timeout=20)
    message = str(failure.value)
    assert "slotz" in message and str(daemon.config_path) in message


def test_without_a_dsn_the_daemon_runs_its_own_postgresql(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(database_dsn=None)
    daemon.write_dag("etl.py", ETL)
    daemon.start(timeout=120)
    daemon.wait_dag("etl")
    daemon.trigger("etl", dag_run_id="embedded")
    assert daemon.wait_run("etl", "embedded")["state"] == "success"
    assert (daemon.state_dir / "postgres").is_dir()
    assert daemon.stop(signal.SIGTERM) == 0
    # the data survives a restart of the daemon and of its PostgreSQL
    daemon.start(timeout=120)
    assert daemon.run("etl", "embedded")["state"] == "success"
    assert daemon.stop(signal.SIGTERM) == 0


def test_a_paused_dag_holds_triggered_runs_until_unpaused_from_the_cli(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon()
    daemon.write_dag("etl.py", ETL)
    daemon.start()
    daemon.wait_dag("etl")
    assert "etl is paused" in daemon.cli("dags", "pause", "etl").stdout
    assert daemon.get("/api/v1/dags/etl").body["is_paused"] is True
    daemon.trigger("etl", dag_run_id="held")
    assert daemon.run("etl", "held")["state"] == "queued"
    assert all(ti["state"] is None for ti in daemon.task_instances("etl", "held").values())
    assert "etl is unpaused" in daemon.cli("dags", "unpause", "etl").stdout
    assert daemon.wait_run("etl", "held")["state"] == "success"


def test_db_migrate_on_the_embedded_defaults_leaves_no_server_running(
    make_daemon: Callable[..., Daemon],
) -> None:
    from storage.embedded import EmbeddedPostgres

    daemon = make_daemon(database_dsn=None)
    daemon.write_config()
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "db", "migrate", "--config", str(daemon.config_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "1" in result.stdout  # the versions applied
    assert not EmbeddedPostgres(daemon.state_dir / "postgres").is_running()


def test_a_deleted_dag_file_deactivates_its_dags_and_leaves_the_others(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon()
    daemon.write_dag("etl.py", ETL)
    gone = daemon.write_dag(
        "gone.py", "from orchestrator import DAG, Bash\nwith DAG('gone') as dag:\n    Bash('t', 'true')\n"
    )
    daemon.start()
    daemon.wait_dag("etl")
    daemon.wait_dag("gone")
    gone.unlink()
    wait_for(
        lambda: daemon.get("/api/v1/dags/gone").body["is_active"] is False, 5, "the DAG to be deactivated"
    )
    assert [d["dag_id"] for d in daemon.get("/api/v1/dags").body["dags"]] == ["etl"]
    assert daemon.post("/api/v1/dags/gone/dagRuns", {}).status == 404
    daemon.trigger("etl", dag_run_id="still-here")
    assert daemon.wait_run("etl", "still-here")["state"] == "success"


def test_a_second_daemon_on_the_same_database_starts_beside_the_first_as_a_replica(
    make_daemon: Callable[..., Daemon], workdir: Path, database_dsn: str
) -> None:
    first = make_daemon()
    first.write_dag("etl.py", ETL)
    first.start()
    second_root = workdir / "second"
    second_root.mkdir()
    second = Daemon(root=second_root, database_dsn=database_dsn)
    second.write_dag("etl.py", ETL)
    try:
        second.start(timeout=30)
        assert first.get("/health").status == 200  # the first one is untouched
        second.wait_dag("etl")
        second.trigger("etl", dag_run_id="on-the-second")
        assert first.wait_run("etl", "on-the-second")["state"] == "success"  # either one serves it
        assert first.stop(signal.SIGTERM) == 0
        second.trigger("etl", dag_run_id="after-the-first-left")
        assert second.wait_run("etl", "after-the-first-left")["state"] == "success"
        assert second.stop(signal.SIGTERM) == 0
    finally:
        if second.process is not None and second.process.poll() is None:
            second.kill()


@pytest.mark.skipif(os.geteuid() != 0, reason="the postgres user only matters when running as root")
def test_the_embedded_defaults_work_from_a_clone_in_a_0700_home_directory(workdir: Path) -> None:
    home = workdir / "root-home"
    home.mkdir(mode=0o700)
    clone = home / "clone"
    clone.mkdir()
    daemon = Daemon(root=clone, database_dsn=None)
    daemon.write_dag("etl.py", ETL)
    data_dir = embedded_data_dir(daemon.state_dir)
    assert data_dir.parent == SYSTEM_DATA_ROOT
    try:
        daemon.start()
        assert "the embedded PostgreSQL of this state directory lives in" in daemon.logs()
        daemon.wait_dag("etl")
        daemon.trigger("etl", dag_run_id="from_home")
        assert daemon.wait_run("etl", "from_home")["state"] == "success", daemon.logs()
        assert daemon.stop(signal.SIGTERM) == 0
    finally:
        if daemon.process is not None:
            daemon.kill()
        EmbeddedPostgres(data_dir).stop()
        shutil.rmtree(data_dir, ignore_errors=True)
