"""The replicas workload of ../shared/BENCH.md: several daemons on one PostgreSQL.

`measure(dsn)` uses one PostgreSQL server for everything (a durable embedded one it starts in a
temp dir, unless `dsn` names a server whose user may create databases), with two databases:

- overhead: the chain-bash workload (bench/run.py's DAG) on a lone daemon (database one) and on
  three replicas sharing database two, triggered through the first replica; the runs alternate
  between the two set-ups, and each figure is the median of `runs`. Figure: the replicas' ms per
  task minus the lone daemon's (the guarded commits, the claims, the heartbeats of three).
- takeover: on the three replicas, three long-running runs; the replica that owns the most is
  SIGKILLed, and the figure is the time from the kill until survivors own every one of its
  runs (`dag_run.owner`, polled in the database every 10 ms), median of `takeovers` rounds (the
  victim starts again between rounds). `daemon.takeover_after` is set in the config and printed
  beside the figure: the bar is takeover_after + 1 s.

Run with `scripts/bench --only replicas`, or `python bench/replicas.py` for this workload alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tests.e2e.harness import Daemon, db_fetch, wait_for
from tests.pgserver import PgServer

REPLICAS = 3
LONG_RUNS = 3

LONG_DAG = """
from orchestrator import DAG, Bash
with DAG("long_bench", max_active_runs=100):
    Bash("wait", "sleep 60", do_xcom_push=False)
"""


def _emit(figure: dict[str, Any]) -> dict[str, Any]:
    print(json.dumps(figure), flush=True)
    return figure


@contextmanager
def _server(dsn: str | None, root: Path) -> Iterator[PgServer]:
    """The PostgreSQL server of the workload: `dsn`'s, or a durable embedded one under `root`."""
    if dsn:
        yield PgServer(admin_dsn=dsn)
        return
    from storage.embedded import EmbeddedPostgres

    embedded = EmbeddedPostgres(root / "postgres", durable=True)
    embedded.ensure_started()
    try:
        yield PgServer(admin_dsn=embedded.dsn("postgres"))
    finally:
        embedded.stop()


def _replica(root: Path, dsn: str, name: str, slots: int, takeover_after: float) -> Daemon:
    return Daemon(
        root=root,
        database_dsn=dsn,
        slots=slots,
        replica=name,
        env={
            "ORCHESTRATOR_DAEMON__DAEMON_ID": name,
            "ORCHESTRATOR_DAEMON__TAKEOVER_AFTER": str(takeover_after),
        },
    )


def _owners(dsn: str) -> dict[int, str | None]:
    rows = db_fetch(
        dsn, "SELECT pk, owner FROM dag_run WHERE dag_id = 'long_bench' AND state IN ('queued', 'running')"
    )
    return {int(row["pk"]): row["owner"] for row in rows}


def _takeover_round(replicas: list[Daemon], dsn: str, round_number: int) -> tuple[float, str, int]:
    """Start LONG_RUNS runs, SIGKILL the replica owning most of them, and time the takeover.
    Returns (seconds, victim, runs it owned); the victim is started again afterwards."""
    run_ids = [f"long-{round_number}-{i}" for i in range(LONG_RUNS)]
    for i, run_id in enumerate(run_ids):
        replicas[i % len(replicas)].trigger("long_bench", dag_run_id=run_id)
    wait_for(
        lambda: (
            db_fetch(
                dsn,
                "SELECT count(*) AS n FROM task_instance WHERE dag_id = 'long_bench' AND run_id = ANY($1) "
                "AND state = 'running'",
                run_ids,
            )[0]["n"]
            == LONG_RUNS
        ),
        30,
        "the long runs' tasks to run",
    )
    owned: dict[str, list[int]] = {}
    for pk, owner in _owners(dsn).items():
        if owner is not None:
            owned.setdefault(owner, []).append(pk)
    victim_id = max(owned, key=lambda owner: len(owned[owner]))
    victim = next(r for r in replicas if r.replica == victim_id)
    pks = set(owned[victim_id])
    killed = time.monotonic()
    victim.kill()

    def taken_over() -> bool:
        owners = _owners(dsn)
        return all(owners.get(pk) not in (None, victim_id) for pk in pks if pk in owners)

    wait_for(taken_over, 300, f"survivors to take over the runs of {victim_id}", interval=0.01)
    seconds = time.monotonic() - killed
    # the runs' orphaned tasks were the victim's: end the runs, then bring the victim back
    survivor = next(r for r in replicas if r is not victim)
    for run_id in run_ids:
        survivor.request("PATCH", f"/api/v1/dags/long_bench/dagRuns/{run_id}", {"state": "failed"})
    victim.start(timeout=120)
    return seconds, victim_id, len(pks)


def measure(
    dsn: str | None, slots: int = 16, runs: int = 5, takeovers: int = 5, takeover_after: float = 5.0
) -> list[dict[str, Any]]:
    from run import CHAIN_LENGTH, DAGS, run_once  # bench/run.py: the chain-bash workload

    figures: list[dict[str, Any]] = []
    root = Path(tempfile.mkdtemp(prefix="orch-bench-replicas-", dir="/tmp"))
    root.chmod(0o755)
    daemons: list[Daemon] = []
    try:
        with _server(dsn, root) as server:
            databases = [server.create_database(prefix="orch_bench_") for _ in range(2)]
            try:
                single = Daemon(root=root / "single", database_dsn=server.dsn(databases[0]), slots=slots)
                single.write_dag("chain_bash.py", DAGS["chain_bash.py"])
                shared = server.dsn(databases[1])
                replicas = [
                    _replica(root / "replicas", shared, f"r{i}", slots, takeover_after)
                    for i in range(1, REPLICAS + 1)
                ]
                replicas[0].write_dag("chain_bash.py", DAGS["chain_bash.py"])
                replicas[0].write_dag("long_bench.py", LONG_DAG)
                for daemon in [single, *replicas]:
                    daemon.start(timeout=120)
                    daemons.append(daemon)
                single.wait_dag("chain_bash", timeout=30)
                for replica in replicas:
                    replica.wait_dag("chain_bash", timeout=30)
                    replica.wait_dag("long_bench", timeout=30)

                # warm-up, then alternate: the lone daemon, then the replicas
                run_once(single, "chain_bash", 60)
                run_once(replicas[0], "chain_bash", 60)
                lone: list[float] = []
                shared_runs: list[float] = []
                for _ in range(runs):
                    lone.append(run_once(single, "chain_bash", 60))
                    shared_runs.append(run_once(replicas[0], "chain_bash", 60))
                owners = db_fetch(
                    shared,
                    "SELECT coalesce(owner, '-') AS owner, count(*) AS n FROM dag_run "
                    "WHERE dag_id = 'chain_bash' GROUP BY 1 ORDER BY 1",
                )
                single_ms = statistics.median(lone) / CHAIN_LENGTH * 1000
                replica_ms = statistics.median(shared_runs) / CHAIN_LENGTH * 1000
                figures.append(
                    _emit(
                        {
                            "workload": "replicas",
                            "figure": "overhead_ms_per_task",
                            "single_ms_per_task": round(single_ms, 3),
                            "replica_ms_per_task": round(replica_ms, 3),
                            "overhead_ms_per_task": round(replica_ms - single_ms, 3),
                            "replicas": REPLICAS,
                            "runs_by_owner": {str(row["owner"]): int(row["n"]) for row in owners},
                            "bar": "overhead <= 0.3",
                            "pass": replica_ms - single_ms <= 0.3,
                        }
                    )
                )
                single.stop()
                daemons.remove(single)

                rounds = [_takeover_round(replicas, shared, n) for n in range(takeovers)]
                seconds = statistics.median(r[0] for r in rounds)
                figures.append(
                    _emit(
                        {
                            "workload": "replicas",
                            "figure": "takeover_s",
                            "takeover_s": round(seconds, 3),
                            "samples_s": [round(r[0], 3) for r in rounds],
                            "victims": [r[1] for r in rounds],
                            "runs_taken_over": [r[2] for r in rounds],
                            "takeover_after_s": takeover_after,
                            "bar": f"<= takeover_after + 1 = {takeover_after + 1:g}",
                            "pass": seconds <= takeover_after + 1,
                        }
                    )
                )
            finally:
                for daemon in daemons:
                    if daemon.process is not None:
                        daemon.stop()
                for name in databases:
                    server.drop_database(name)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return figures


def table_row(figure: dict[str, Any]) -> tuple[str, str, str, Any]:
    """(figure, reference, bar, pass) for bench/run.py's table."""
    if figure["figure"] == "overhead_ms_per_task":
        return (
            f"+{figure['overhead_ms_per_task']} ms/task ({figure['replica_ms_per_task']})",
            f"lone daemon {figure['single_ms_per_task']} ms/task",
            figure["bar"],
            figure["pass"],
        )
    return (
        f"takeover {figure['takeover_s']} s (median of {len(figure['samples_s'])})",
        f"takeover_after {figure['takeover_after_s']:g} s",
        figure["bar"],
        figure["pass"],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=None, help="a PostgreSQL server whose user may create databases")
    parser.add_argument("--runs", type=int, default=5, help="chain runs per set-up (median is reported)")
    parser.add_argument("--takeovers", type=int, default=5, help="SIGKILL rounds (median is reported)")
    parser.add_argument("--takeover-after", type=float, default=5.0, help="daemon.takeover_after, seconds")
    args = parser.parse_args()
    for figure in measure(
        args.dsn, runs=args.runs, takeovers=args.takeovers, takeover_after=args.takeover_after
    ):
        print(table_row(figure))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
