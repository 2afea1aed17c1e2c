"""The benchmark suite of ../shared/BENCH.md: chain-bash, chain-python, fan-bash, new-dag, idle,
durable-commit, webhook (bench/webhook.py), replicas (bench/replicas.py).

Run by hand (`scripts/bench`), never by the tests. It starts `orchestrator run` as a process on
its embedded, durable PostgreSQL (the default configuration users get), triggers each workload
through the REST API and measures trigger-to-run-success with the run's own `end_date`. Every
figure that depends on the machine is printed beside a reference measured in the same run:
a bare /bin/true spawn for the chains, /bin/true spawns per second at the same concurrency for
the fan. Each figure is one JSON line on stdout, then a readable table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.harness import Daemon, wait_for

CHAIN_LENGTH = 40
FAN_WIDTH = 2000

DAGS = {
    "chain_bash.py": f"""
from orchestrator import DAG, Bash
with DAG("chain_bash", max_active_runs=1) as dag:
    previous = None
    for i in range({CHAIN_LENGTH}):
        current = Bash(f"t{{i:02d}}", "true", do_xcom_push=False)
        if previous is not None:
            previous >> current
        previous = current
""",
    "chain_python.py": f"""
from orchestrator import DAG, Python
def nothing():
    return None
with DAG("chain_python", max_active_runs=1) as dag:
    previous = None
    for i in range({CHAIN_LENGTH}):
        current = Python(f"t{{i:02d}}", nothing)
        if previous is not None:
            previous >> current
        previous = current
""",
    "fan_bash.py": f"""
from orchestrator import DAG, Bash
with DAG("fan_bash", max_active_runs=1, max_active_tasks={FAN_WIDTH}) as dag:
    for i in range({FAN_WIDTH}):
        Bash(f"t{{i:04d}}", "true", do_xcom_push=False)
""",
}


def emit(figure: dict[str, Any]) -> dict[str, Any]:
    print(json.dumps(figure), flush=True)
    return figure


def spawn_reference_ms(count: int = 300) -> float:
    """Median ms to posix_spawn /bin/true and reap it."""
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        pid = os.posix_spawn("/bin/true", ["/bin/true"], os.environ)
        os.waitpid(pid, 0)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


async def _fan_reference(count: int, concurrency: int) -> float:
    loop = asyncio.get_running_loop()
    semaphore = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with semaphore:
            pid = os.posix_spawn("/bin/true", ["/bin/true"], os.environ, setsid=True)
            pidfd = os.pidfd_open(pid)
            done = loop.create_future()
            loop.add_reader(pidfd, done.set_result, None)
            await done
            loop.remove_reader(pidfd)
            os.close(pidfd)
            os.waitpid(pid, 0)  # noqa: ASYNC222 - the pidfd said it exited: this does not block

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return count / (time.perf_counter() - start)


def fan_reference_per_s(count: int, concurrency: int) -> float:
    """/bin/true spawns per second with `concurrency` in flight (event-loop reaping, like the executor)."""
    return asyncio.run(_fan_reference(count, concurrency))


def run_once(daemon: Daemon, dag_id: str, timeout: float) -> float:
    """Seconds from the trigger's POST to the run's end_date (its success)."""
    run_id = f"bench-{time.time_ns()}"
    posted = time.time()
    daemon.trigger(dag_id, dag_run_id=run_id)
    run = wait_for(
        lambda: (r := daemon.run(dag_id, run_id))["state"] in {"success", "failed"} and r,
        timeout,
        f"{dag_id} to finish",
        interval=0.01,
    )
    if run["state"] != "success":
        raise SystemExit(f"{dag_id} run {run_id} failed: see {daemon.output_path}")
    return datetime.fromisoformat(run["end_date"]).timestamp() - posted


def new_dag_seconds(daemon: Daemon, count: int = 5) -> float:
    """Median seconds from writing a new DAG file to the API serving it as active."""
    samples = []
    for i in range(count):
        dag_id = f"fresh_{time.time_ns()}_{i}"
        started = time.perf_counter()
        daemon.write_dag(
            f"{dag_id}.py",
            f"from orchestrator import DAG, Bash\nwith DAG({dag_id!r}):\n    Bash('t', 'true')\n",
        )
        daemon.wait_dag(dag_id, timeout=30)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def idle_rss_mb(dsn: str | None, dag_count: int = 100) -> float:
    """RSS of a daemon process with `dag_count` DAGs loaded and nothing running."""
    with tempfile.TemporaryDirectory(prefix="orch-bench-idle-", dir="/tmp") as raw:
        root = Path(raw)
        root.chmod(0o755)
        daemon = Daemon(root=root, database_dsn=dsn)
        for i in range(dag_count):
            daemon.write_dag(
                f"idle_{i:03d}.py",
                f"from orchestrator import DAG, Bash\nwith DAG('idle_{i:03d}') as dag:\n"
                "    a = Bash('a', 'true'); b = Bash('b', 'true'); c = Bash('c', 'true')\n    a >> [b, c]\n",
            )
        daemon.start(timeout=120)
        try:
            wait_for(
                lambda: daemon.get("/api/v1/dags?limit=1").body["total_entries"] >= dag_count,
                60,
                "every DAG to load",
            )
            assert daemon.process is not None
            status = Path(f"/proc/{daemon.process.pid}/status").read_text()
            rss_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))
            return rss_kb / 1024
        finally:
            daemon.stop()


def durable_commits_per_s(dsn: str, seconds: float = 2.0) -> float:
    import asyncpg

    async def measure() -> float:
        conn = await asyncpg.connect(dsn)
        try:
            # a real (WAL-logged) table: each autocommitted UPDATE is one durable commit
            await conn.execute("CREATE TABLE IF NOT EXISTS bench_durable (id int primary key, n bigint)")
            await conn.execute("INSERT INTO bench_durable VALUES (1, 0) ON CONFLICT DO NOTHING")
            count = 0
            deadline = time.perf_counter() + seconds
            start = time.perf_counter()
            while time.perf_counter() < deadline:
                await conn.execute("UPDATE bench_durable SET n = n + 1 WHERE id = 1")
                count += 1
            rate = count / (time.perf_counter() - start)
            await conn.execute("DROP TABLE bench_durable")
            return rate
        finally:
            await conn.close()

    return asyncio.run(measure())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per chain workload (median is reported)")
    parser.add_argument("--fan-runs", type=int, default=3, help="runs of fan-bash (median is reported)")
    parser.add_argument("--slots", type=int, default=16, help="executors.local.slots for the daemon")
    parser.add_argument(
        "--only",
        default="chain-bash,chain-python,fan-bash,new-dag,idle,durable-commit,webhook,replicas",
        help="comma-separated workloads",
    )
    parser.add_argument(
        "--takeovers", type=int, default=5, help="replicas: SIGKILL rounds (median is reported)"
    )
    parser.add_argument(
        "--takeover-after",
        type=float,
        default=5.0,
        help="replicas: the replicas' daemon.takeover_after, seconds",
    )
    parser.add_argument("--dsn", default=None, help="use this PostgreSQL instead of the embedded one")
    args = parser.parse_args()
    wanted = set(args.only.split(","))

    figures: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="orch-bench-", dir="/tmp") as raw:
        root = Path(raw)
        root.chmod(0o755)
        daemon = Daemon(root=root, database_dsn=args.dsn, slots=args.slots)
        for name, source in DAGS.items():
            daemon.write_dag(name, source)
        daemon.start(timeout=120)
        try:
            for dag_id in ("chain_bash", "chain_python", "fan_bash"):
                daemon.wait_dag(dag_id, timeout=30)
            run_once(daemon, "chain_bash", 60)  # warm-up: first spawns, caches, connections

            if "chain-bash" in wanted:
                per_task = statistics.median(run_once(daemon, "chain_bash", 60) for _ in range(args.runs))
                reference = spawn_reference_ms()
                ms = per_task / CHAIN_LENGTH * 1000
                figures.append(
                    emit(
                        {
                            "workload": "chain-bash",
                            "ms_per_task": round(ms, 3),
                            "reference_spawn_ms": round(reference, 3),
                            "above_reference_ms": round(ms - reference, 3),
                            "bar": "above_reference_ms <= 2",
                            "pass": ms - reference <= 2,
                        }
                    )
                )
            if "chain-python" in wanted:
                run_once(daemon, "chain_python", 60)
                per_task = statistics.median(run_once(daemon, "chain_python", 60) for _ in range(args.runs))
                ms = per_task / CHAIN_LENGTH * 1000
                figures.append(
                    emit(
                        {
                            "workload": "chain-python",
                            "ms_per_task": round(ms, 3),
                            "bar": "<= 2",
                            "pass": ms <= 2,
                        }
                    )
                )
            if "fan-bash" in wanted:
                seconds = statistics.median(run_once(daemon, "fan_bash", 300) for _ in range(args.fan_runs))
                rate = FAN_WIDTH / seconds
                reference = fan_reference_per_s(FAN_WIDTH, args.slots)
                figures.append(
                    emit(
                        {
                            "workload": "fan-bash",
                            "tasks_per_s": round(rate, 1),
                            "reference_spawns_per_s": round(reference, 1),
                            "ratio": round(rate / reference, 3),
                            "concurrency": args.slots,
                            "bar": "ratio >= 0.70",
                            "pass": rate / reference >= 0.70,
                        }
                    )
                )
            if "new-dag" in wanted:
                seconds = new_dag_seconds(daemon)
                figures.append(
                    emit(
                        {
                            "workload": "new-dag",
                            "seconds": round(seconds, 3),
                            "bar": "< 1",
                            "pass": seconds < 1,
                        }
                    )
                )
            if "durable-commit" in wanted:
                dsn = args.dsn or _embedded_dsn(root)
                rate = durable_commits_per_s(dsn)
                figures.append(emit({"workload": "durable-commit", "commits_per_s": round(rate, 1)}))
        finally:
            daemon.stop()
    if "webhook" in wanted:
        import webhook  # bench/webhook.py: a daemon of its own, with webhooks configured

        figures.extend(webhook.measure(args.dsn, slots=args.slots))
    if "replicas" in wanted:
        import replicas  # bench/replicas.py: a lone daemon and three replicas on one PostgreSQL

        figures.extend(
            replicas.measure(
                args.dsn,
                slots=args.slots,
                runs=args.runs,
                takeovers=args.takeovers,
                takeover_after=args.takeover_after,
            )
        )
    if "idle" in wanted:
        rss = idle_rss_mb(args.dsn)
        figures.append(emit({"workload": "idle", "rss_mb": round(rss, 1), "bar": "< 100", "pass": rss < 100}))
    _print_table(figures)
    return 0


def _embedded_dsn(root: Path) -> str:
    from storage.embedded import EmbeddedPostgres

    return EmbeddedPostgres(root / "state" / "postgres").dsn()


def _print_table(figures: list[dict[str, Any]]) -> None:
    print()
    print(f"{'workload':<16} {'figure':<34} {'reference':<30} {'bar':<26} pass")
    for f in figures:
        if f["workload"] in {"chain-bash"}:
            row = (f"{f['ms_per_task']} ms/task", f"spawn {f['reference_spawn_ms']} ms", f["bar"], f["pass"])
        elif f["workload"] == "chain-python":
            row = (f"{f['ms_per_task']} ms/task", "-", f["bar"], f["pass"])
        elif f["workload"] == "fan-bash":
            row = (
                f"{f['tasks_per_s']} tasks/s (x{f['ratio']})",
                f"{f['reference_spawns_per_s']} spawns/s @{f['concurrency']}",
                f["bar"],
                f["pass"],
            )
        elif f["workload"] == "new-dag":
            row = (f"{f['seconds']} s until triggerable", "-", f["bar"], f["pass"])
        elif f["workload"] == "webhook":
            import webhook

            row = webhook.table_row(f)
        elif f["workload"] == "replicas":
            import replicas

            row = replicas.table_row(f)
        elif f["workload"] == "idle":
            row = (f"{f['rss_mb']} MB RSS, 100 DAGs", "-", f["bar"], f["pass"])
        else:
            row = (f"{f['commits_per_s']} commits/s", "-", "-", "-")
        print(f"{f['workload']:<16} {row[0]:<34} {row[1]:<30} {row[2]:<26} {row[3]}")


if __name__ == "__main__":
    raise SystemExit(main())
