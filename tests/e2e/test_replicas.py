"""End to end: three replicas (daemons as processes) on one PostgreSQL, sharing one DAG folder.

- 30 runs of a 6-task chain, triggered round-robin through the three APIs, and one replica
  SIGKILLed once runs have progressed: every run succeeds, no task whose success was committed
  runs again, and the survivors serve every log that still exists (the killed replica's own
  tries' logs may be gone with it: those, and only those, may answer 404).
- A rolling restart (SIGTERM, wait for the exit, start again with the same state dir and
  daemon id) of each replica in turn while 10 runs go on: every run succeeds, no try is counted
  failed, no task runs twice.

Each task appends "<run_id> <task_id> <try_number> <replica>" to a marker file of the shared work
dir when it starts and again when it succeeds, so the test knows which replica ran which try.
The replicas' `daemon.takeover_after` is 3 s, to keep the file short.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.e2e.harness import Daemon, db_fetch, wait_for

pytestmark = pytest.mark.e2e

TOKEN = "e2e-replicas-shared-token-0123456789"
TOKENS = '[[api.tokens]]\nname = "e2e"\nrole = "admin"\ntoken_env = "E2E_REPLICAS_TOKEN"\n'
TAKEOVER_AFTER = 3
TASKS = [f"t{i}" for i in range(1, 7)]

Mark = tuple[str, str, int, str]  # run_id, task_id, try_number, replica


def chain_dag(dag_id: str, work: Path, *, sleep: float, max_active_runs: int) -> str:
    """A chain t1 >> ... >> t6 of bash tasks that mark their start and their success."""
    line = '"$ORCHESTRATOR_RUN_ID $ORCHESTRATOR_TASK_ID $ORCHESTRATOR_TRY_NUMBER $E2E_REPLICA"'
    command = (
        f"echo {line} >> {work / 'started'}; sleep {sleep}; "
        f'echo "ran $ORCHESTRATOR_TASK_ID try $ORCHESTRATOR_TRY_NUMBER on $E2E_REPLICA"; '
        f"echo {line} >> {work / 'succeeded'}"
    )
    return f"""
from orchestrator import DAG, Bash
with DAG({dag_id!r}, max_active_runs={max_active_runs}, max_active_tasks=64):
    previous = None
    for task_id in {TASKS!r}:
        task = Bash(task_id, {command!r}, retries=1, retry_delay=1, do_xcom_push=False)
        if previous is not None:
            previous >> task
        previous = task
"""


def make_replicas(make_daemon: Callable[..., Daemon], count: int = 3) -> list[Daemon]:
    """`count` replicas of one root: one DAG folder, the test's database, the same API token."""
    return [
        make_daemon(
            replica=f"r{i}",
            extra_config=TOKENS,
            token=TOKEN,
            env={
                "E2E_REPLICAS_TOKEN": TOKEN,
                "E2E_REPLICA": f"r{i}",  # for the tasks' marker lines
                "ORCHESTRATOR_DAEMON__DAEMON_ID": f"r{i}",
                "ORCHESTRATOR_DAEMON__TAKEOVER_AFTER": str(TAKEOVER_AFTER),
            },
        )
        for i in range(1, count + 1)
    ]


def alive(reader: Daemon) -> set[str]:
    """The replicas that `reader` lists as alive (GET /api/v1/daemons: their lease holds)."""
    response = reader.get("/api/v1/daemons")
    assert response.status == 200, response.text
    return {d["daemon_id"] for d in response.body["daemons"] if d["alive"]}


def is_alive(reader: Daemon, daemon_id: str) -> bool:
    return daemon_id in alive(reader)


def all_alive(reader: Daemon, expected: set[str]) -> bool:
    return alive(reader) == expected


def marks(path: Path) -> list[Mark]:
    if not path.exists():
        return []
    found: list[Mark] = []
    for line in path.read_text().splitlines():
        run_id, task_id, try_number, replica = line.split()
        found.append((run_id, task_id, int(try_number), replica))
    return found


class TaskRow(NamedTuple):
    state: str
    try_number: int


def task_rows(dsn: str, dag_id: str) -> dict[tuple[str, str], TaskRow]:
    """Every task instance of the DAG: (run_id, task_id) -> its state and try number."""
    rows = db_fetch(
        dsn, "SELECT run_id, task_id, state, try_number FROM task_instance WHERE dag_id = $1", dag_id
    )
    return {(row["run_id"], row["task_id"]): TaskRow(row["state"], row["try_number"]) for row in rows}


def unfinished_runs(dsn: str, dag_id: str) -> int:
    rows = db_fetch(
        dsn,
        "SELECT count(*) AS n FROM dag_run WHERE dag_id = $1 AND state NOT IN ('success', 'failed')",
        dag_id,
    )
    return int(rows[0]["n"])


def runs_owned(dsn: str, dag_id: str) -> Counter[str]:
    """How many active runs of the DAG each replica owns."""
    rows = db_fetch(
        dsn,
        "SELECT owner, count(*) AS n FROM dag_run WHERE dag_id = $1 AND state IN ('queued', 'running') "
        "AND owner IS NOT NULL GROUP BY owner",
        dag_id,
    )
    return Counter({str(row["owner"]): int(row["n"]) for row in rows})


def test_a_replica_killed_mid_way_loses_no_run_and_reruns_no_success(
    make_daemon: Callable[..., Daemon], workdir: Path, database_dsn: str
) -> None:
    work = workdir / "work"
    work.mkdir()
    replicas = make_replicas(make_daemon)
    replicas[0].write_dag("chain.py", chain_dag("chain", work, sleep=0.1, max_active_runs=12))
    for replica in replicas:
        replica.start()
    for replica in replicas:
        replica.wait_dag("chain")
    for reader in replicas:  # any replica lists all three
        wait_for(
            partial(all_alive, reader, {"r1", "r2", "r3"}), 10, f"{reader.replica} to list three replicas"
        )

    run_ids = [f"run-{i:02d}" for i in range(30)]
    for i, run_id in enumerate(run_ids):
        replicas[i % 3].trigger("chain", dag_run_id=run_id)

    # progress: some tasks succeeded, and some replica drives a running run with a success in it
    progressed = """
        SELECT r.owner, count(DISTINCT r.pk) AS n FROM dag_run r
        JOIN task_instance t ON t.run_pk = r.pk AND t.state = 'success'
        WHERE r.dag_id = 'chain' AND r.state = 'running' AND r.owner IS NOT NULL GROUP BY r.owner
        ORDER BY n DESC, r.owner
    """

    def a_victim() -> str | None:
        done = len(marks(work / "succeeded"))
        rows = db_fetch(database_dsn, progressed)
        return str(rows[0]["owner"]) if done >= 20 and rows else None

    victim_id = wait_for(a_victim, 30, "runs to progress on some replica", interval=0.05)
    victim = next(r for r in replicas if r.replica == victim_id)
    survivors = [r for r in replicas if r is not victim]
    victim.kill()
    # what the victim committed is final now: these successes must never run again
    committed = {
        key: row.try_number for key, row in task_rows(database_dsn, "chain").items() if row.state == "success"
    }
    victims_runs = runs_owned(database_dsn, "chain")[victim_id]
    assert victims_runs > 0, "the victim owned no active run when it was killed"

    wait_for(
        lambda: runs_owned(database_dsn, "chain")[victim_id] == 0,
        TAKEOVER_AFTER + 15,
        f"the survivors to take over the {victims_runs} runs of {victim_id}",
        interval=0.1,
    )
    wait_for(lambda: unfinished_runs(database_dsn, "chain") == 0, 60, "every run to finish", interval=0.1)
    for survivor in survivors:
        assert alive(survivor) == {s.replica for s in survivors}

    # any survivor serves any run's state
    for i, run_id in enumerate(run_ids):
        assert survivors[i % 2].run("chain", run_id)["state"] == "success", victim.logs()[-3000:]

    tasks = task_rows(database_dsn, "chain")
    assert len(tasks) == 30 * len(TASKS)
    assert {key: row.state for key, row in tasks.items() if row.state != "success"} == {}

    succeeded = marks(work / "succeeded")
    per_try = Counter((run_id, task_id, try_number) for run_id, task_id, try_number, _ in succeeded)
    assert [key for key, n in per_try.items() if n > 1] == [], "a try succeeded twice"
    per_task = Counter((run_id, task_id) for run_id, task_id, _, _ in succeeded)
    for key, try_number in committed.items():
        assert per_task[key] == 1, f"{key} had succeeded (try {try_number}) and ran again"
        assert tasks[key].try_number == try_number, f"{key}'s committed success was overwritten"
    for run_id, task_id, try_number, ran_on in succeeded:
        final = tasks[(run_id, task_id)].try_number
        if try_number != final:
            # only a try the victim had in flight when it died may have ended after it, unrecorded
            assert ran_on == victim_id and try_number < final, (run_id, task_id, try_number, ran_on)
    for (run_id, task_id), row in tasks.items():
        assert (run_id, task_id, row.try_number) in per_try, f"{run_id} {task_id}'s success ran nowhere"

    # every log that still exists, through each survivor; the victim's own tries' logs may be gone
    started = {
        (run_id, task_id, try_number): replica
        for run_id, task_id, try_number, replica in marks(work / "started")
    }
    gone: list[tuple[str, str, int]] = []
    for (run_id, task_id), row in tasks.items():
        for try_number in range(1, row.try_number + 1):
            ran_on = started.get((run_id, task_id, try_number), "")
            for survivor in survivors:
                response = survivor.get(
                    f"/api/v1/dags/chain/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
                    accept="text/plain",
                )
                where = f"log of {run_id} {task_id} try {try_number} (ran on {ran_on or '?'}) via {survivor.replica}"
                if response.status == 404 and ran_on in {victim_id, ""}:
                    assert "log" in response.text.lower(), f"{where}: {response.text[:500]}"
                    gone.append((run_id, task_id, try_number))
                    continue
                assert response.status == 200, f"{where}: {response.status} {response.text[:500]}"
                if try_number == row.try_number:
                    assert f"ran {task_id} try {try_number} on {ran_on}" in response.text, where


def test_a_rolling_restart_of_every_replica_is_not_noticed_by_the_runs(
    make_daemon: Callable[..., Daemon], workdir: Path, database_dsn: str
) -> None:
    work = workdir / "work"
    work.mkdir()
    replicas = make_replicas(make_daemon)
    replicas[0].write_dag("rolling.py", chain_dag("rolling", work, sleep=0.4, max_active_runs=3))
    for replica in replicas:
        replica.start()
    for replica in replicas:
        replica.wait_dag("rolling")
    for reader in replicas:  # any replica lists all three
        wait_for(
            partial(all_alive, reader, {"r1", "r2", "r3"}), 10, f"{reader.replica} to list three replicas"
        )

    run_ids = [f"roll-{i:02d}" for i in range(10)]
    for i, run_id in enumerate(run_ids):
        replicas[i % 3].trigger("rolling", dag_run_id=run_id)
    wait_for(
        lambda: sum(runs_owned(database_dsn, "rolling").values()) > 0, 30, "a run to start", interval=0.05
    )

    owned_at_restart: dict[str, int] = {}
    for replica in replicas:
        assert unfinished_runs(database_dsn, "rolling") > 0, "the runs ended before the rolling restart did"
        owned_at_restart[replica.replica] = runs_owned(database_dsn, "rolling")[replica.replica]
        assert replica.stop(signal.SIGTERM) == 0, replica.logs()[-3000:]
        replica.start()
        wait_for(partial(is_alive, replicas[0], replica.replica), 10, f"{replica.replica} alive again")
    assert sum(owned_at_restart.values()) > 0, f"no restarted replica drove a run: {owned_at_restart}"

    wait_for(lambda: unfinished_runs(database_dsn, "rolling") == 0, 60, "every run to finish", interval=0.1)
    assert all(alive(reader) == {"r1", "r2", "r3"} for reader in replicas)
    for i, run_id in enumerate(run_ids):
        assert replicas[i % 3].run("rolling", run_id)["state"] == "success"
    tasks = task_rows(database_dsn, "rolling")
    assert len(tasks) == 10 * len(TASKS)
    not_first = {key: (row.state, row.try_number) for key, row in tasks.items() if row.try_number != 1}
    assert not_first == {}, "a try was counted failed"
    assert {key: row.state for key, row in tasks.items() if row.state != "success"} == {}
    succeeded = Counter(
        (run_id, task_id, try_number) for run_id, task_id, try_number, _ in marks(work / "succeeded")
    )
    assert sorted(succeeded) == sorted((run_id, task_id, 1) for run_id, task_id in tasks)
    assert [key for key, n in succeeded.items() if n > 1] == [], "a task ran twice"
