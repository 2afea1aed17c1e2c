"""Example DAG shipped with the daemon: fan-out / fan-in with several trigger rules.

`start` fans out to three workers; `flaky` fails on purpose. Downstream tasks show how
Airflow's trigger rules react: `report` waits for everything to finish whatever the
outcome (all_done), `on_any_success` runs as soon as one worker succeeded (one_success),
`alert` runs because one worker failed (one_failed), and `publish` (all_success, the
default) ends up upstream_failed. `cleanup` always runs. The run itself succeeds: as in
Airflow, only the leaf tasks (on_any_success, alert, cleanup) decide a run's state.
"""

from orchestrator import DAG, Bash, Python, chain


def summarize(count: int, label: str) -> str:
    """A tiny Python callable for a classic (non-TaskFlow) Python task."""
    return f"{label}: {count} workers"


with DAG(
    "example_branches",
    schedule=None,
    description="fan-out / fan-in with all_done, one_success, one_failed, all_success and always",
    tags=["example"],
    default_args={"retry_delay": 1, "execution_timeout": 60},
) as dag:
    start = Bash("start", "echo start")
    workers = [
        Bash("worker_a", "echo a"),
        Bash("worker_b", "echo b"),
        Bash("flaky", "echo failing on purpose >&2; exit 1"),
    ]
    report = Python(
        "report", summarize, op_args=[3], op_kwargs={"label": "finished"}, trigger_rule="all_done"
    )
    on_any_success = Bash("on_any_success", "echo at least one worker succeeded", trigger_rule="one_success")
    alert = Bash("alert", "echo a worker failed", trigger_rule="one_failed")
    publish = Bash("publish", "echo every worker succeeded")
    cleanup = Bash("cleanup", "true", trigger_rule="always")

    start >> workers
    workers >> report
    workers >> on_any_success
    workers >> alert
    workers >> publish
    chain([report, publish], cleanup)
