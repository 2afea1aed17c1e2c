"""The webhook workload of ../shared/BENCH.md: signed webhook POSTs from a second process.

`measure(dsn)` starts `orchestrator run` (embedded, durable PostgreSQL unless a DSN is given) with
two GitHub-style webhooks and runs this file again as the client process (`client` subcommand):

- latency (first, on an idle daemon): deliveries sent open-loop at a fixed rate (200/s); figure:
  p50/p99 from the moment the client sent the POST to the run's first task `running` (its task
  instance's start_date, the daemon's clock, on the same machine).
- reference, in the same run: the same deliveries to a webhook whose filter never matches
  (everything but creating the run: HTTP, signature, JSON, filter, delivery log), answered per s.
- throughput: a fixed count of signed deliveries, each with its own delivery id, sent as fast as
  `--concurrency` connections allow; figure: accepted (202, created) runs per second, first send to
  last answer. Its DAG has the default max_active_runs, so the runs it accepts wait their turn.

Run with `scripts/bench --only webhook` (or `python bench/webhook.py` for this workload alone).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SECRET = "bench-webhook-secret"
BODY = json.dumps(
    {"ref": "refs/heads/main", "repository": {"full_name": "acme/app"}, "after": "c0ffee" * 6}
).encode()

CONFIG = """
[webhooks.flood]
dag_id = "hook_flood"
auth = "github"
secret_env = "BENCH_WEBHOOK_SECRET"
delivery_id_header = "X-GitHub-Delivery"
conf = { ref = "ref", repo = "repository.full_name" }

[webhooks.filtered]
dag_id = "hook_flood"
auth = "github"
secret_env = "BENCH_WEBHOOK_SECRET"
delivery_id_header = "X-GitHub-Delivery"
filter = { "headers.X-GitHub-Event" = ["release"] }

[webhooks.latency]
dag_id = "hook_latency"
auth = "github"
secret_env = "BENCH_WEBHOOK_SECRET"
delivery_id_header = "X-GitHub-Delivery"
conf = { ref = "ref" }
"""

DAGS = {
    "hook_flood.py": 'from orchestrator import DAG, Bash\nwith DAG("hook_flood"):\n    Bash("t", "true")\n',
    "hook_latency.py": (
        "from orchestrator import DAG, Bash\n"
        'with DAG("hook_latency", max_active_runs=2000, max_active_tasks=64):\n'
        '    Bash("t", "true", do_xcom_push=False)\n'
    ),
}

THROUGHPUT_COUNT = 3000
LATENCY_RATE = 200.0
LATENCY_SECONDS = 5.0


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


# --- the client process ---------------------------------------------------------------------------


async def _client(url: str, prefix: str, count: int, concurrency: int, rate: float | None) -> dict[str, Any]:
    import aiohttp

    signature = "sha256=" + hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    headers = [
        {
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": f"{prefix}-{i}",
            "X-Hub-Signature-256": signature,
        }
        for i in range(count)
    ]
    sent_at: list[float] = [0.0] * count
    statuses: list[int] = [0] * count
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def post(i: int) -> None:
            sent_at[i] = time.time()
            async with http.post(url, data=BODY, headers=headers[i]) as response:
                await response.read()
                statuses[i] = response.status

        # warm the connections, outside the measurement
        await asyncio.gather(*(http.get(url.rsplit("/api/", 1)[0] + "/health") for _ in range(concurrency)))
        start = time.perf_counter()
        if rate is None:
            queue = list(range(count))
            queue.reverse()

            async def worker() -> None:
                while queue:
                    await post(queue.pop())

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        else:
            tasks = []
            for i in range(count):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)  # open loop: the schedule, not the answers, sets the pace
                tasks.append(asyncio.ensure_future(post(i)))
            await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return {"elapsed": elapsed, "statuses": statuses, "sent_at": sent_at}


def run_client(url: str, prefix: str, count: int, concurrency: int, rate: float | None) -> dict[str, Any]:
    """Run the client as a second process; its JSON result."""
    command = [sys.executable, __file__, "client", url, prefix, str(count), str(concurrency)]
    if rate is not None:
        command.append(str(rate))
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


# --- the measurement ------------------------------------------------------------------------------


def measure(dsn: str | None, slots: int = 16) -> list[dict[str, Any]]:
    from tests.e2e.harness import Daemon, wait_for

    figures: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="orch-bench-webhook-", dir="/tmp") as raw:
        root = Path(raw)
        root.chmod(0o755)
        daemon = Daemon(
            root=root,
            database_dsn=dsn,
            slots=slots,
            extra_config=CONFIG,
            env={"BENCH_WEBHOOK_SECRET": SECRET, "ORCHESTRATOR_DATABASE__POOL_MAX_SIZE": "20"},
        )
        for name, source in DAGS.items():
            daemon.write_dag(name, source)
        daemon.start(timeout=120)
        try:
            for dag_id in ("hook_flood", "hook_latency"):
                daemon.wait_dag(dag_id, timeout=30)
            base = daemon.url + "/api/v1/webhooks/"
            run_client(base + "latency", "warm", 200, 16, None)

            count = int(LATENCY_RATE * LATENCY_SECONDS)
            result = run_client(base + "latency", "lat", count, 64, LATENCY_RATE)
            bad = [status for status in result["statuses"] if status != 202]
            if bad:
                raise SystemExit(
                    f"latency deliveries were refused: {sorted(set(bad))}; see {daemon.output_path}"
                )
            latencies = []
            failed = 0
            for i, sent in enumerate(result["sent_at"]):
                run_id = f"webhook__latency__lat-{i}"
                path = f"/api/v1/dags/hook_latency/dagRuns/{run_id}/taskInstances/t"

                def finished(path: str = path) -> dict[str, Any] | None:
                    ti = daemon.get(path).body
                    return ti if ti.get("state") in ("success", "failed", "upstream_failed") else None

                ti = wait_for(finished, 60, f"{run_id} to finish", interval=0.01)
                if ti["state"] != "success" or ti["start_date"] is None:
                    failed += 1  # see the report: a run started twice by the engine's admission race
                    continue
                latencies.append((datetime.fromisoformat(ti["start_date"]).timestamp() - sent) * 1000)
            p50, p99 = statistics.median(latencies), percentile(latencies, 0.99)
            figures.append(
                _emit(
                    {
                        "workload": "webhook",
                        "figure": "post_to_running_ms",
                        "rate_per_s": LATENCY_RATE,
                        "deliveries": count,
                        "p50_ms": round(p50, 2),
                        "p99_ms": round(p99, 2),
                        "max_ms": round(max(latencies), 2),
                        "failed_runs": failed,
                        "bar": "p99 < 50",
                        "pass": p99 < 50 and failed == 0,
                    }
                )
            )
            # the reference: the same deliveries filtered out, so everything but creating the run
            # (HTTP, signature, JSON, filter, delivery log)
            reference = run_client(base + "filtered", "ref", THROUGHPUT_COUNT, 16, None)
            answered = sum(1 for status in reference["statuses"] if status == 202) / reference["elapsed"]
            # throughput last: the runs it queues are still being worked off when it ends
            result = run_client(base + "flood", "tp", THROUGHPUT_COUNT, 16, None)
            accepted = sum(1 for status in result["statuses"] if status == 202)
            rate = accepted / result["elapsed"]
            figures.append(
                _emit(
                    {
                        "workload": "webhook",
                        "figure": "accepted_runs_per_s",
                        "accepted_runs_per_s": round(rate, 1),
                        "deliveries": THROUGHPUT_COUNT,
                        "accepted": accepted,
                        "concurrency": 16,
                        "reference_filtered_per_s": round(answered, 1),
                        "bar": ">= 1000",
                        "pass": rate >= 1000 and accepted == THROUGHPUT_COUNT,
                    }
                )
            )

        finally:
            daemon.stop()
    return figures


def _emit(figure: dict[str, Any]) -> dict[str, Any]:
    print(json.dumps(figure), flush=True)
    return figure


def table_row(figure: dict[str, Any]) -> tuple[str, str, str, Any]:
    """(figure, reference, bar, pass) for bench/run.py's table."""
    if figure["figure"] == "accepted_runs_per_s":
        return (
            f"{figure['accepted_runs_per_s']} accepted runs/s",
            f"filtered out {figure['reference_filtered_per_s']}/s",
            figure["bar"],
            figure["pass"],
        )
    return (
        f"p50 {figure['p50_ms']} / p99 {figure['p99_ms']} ms",
        f"POST->running @{figure['rate_per_s']:.0f}/s",
        figure["bar"],
        figure["pass"],
    )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        url, prefix, count, concurrency = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        rate = float(sys.argv[6]) if len(sys.argv) > 6 else None
        print(json.dumps(asyncio.run(_client(url, prefix, count, concurrency, rate))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default=None, help="use this PostgreSQL instead of the embedded one")
    args = parser.parse_args()
    for figure in measure(args.dsn):
        print(table_row(figure))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
