"""Example DAG shipped with the daemon: extract (bash) -> transform (@task) -> load (bash).

Shows params and run_id in a template, XCom flowing from a bash task into a Python task
(`extract.output`) and from a Python task into a bash command (`ti.xcom_pull`), retries
with exponential backoff, an execution timeout and a trigger rule. Trigger it with
`orchestrator dags trigger example_etl` (optionally `--conf '{"day": "2026-02-01"}'`).
"""

from orchestrator import DAG, Bash, task

with DAG(
    "example_etl",
    schedule=None,
    description="extract -> transform -> load, passing data between tasks with XCom",
    max_active_runs=4,
    params={"day": "2026-01-01"},
    tags=["example"],
    default_args={"retry_delay": 1, "execution_timeout": 60},
) as dag:
    # a bash task's XCom is the last line it prints: here "21"
    extract = Bash(
        "extract",
        "echo extracting {{ params.day }} for run {{ run_id }} && echo 21",
        retries=2,
        retry_delay=1,
        retry_exponential_backoff=True,
        execution_timeout=600,
    )

    @task(retries=1)
    def transform(rows: str) -> dict[str, int]:
        """Double the row count the extract step reported."""
        return {"rows": int(rows) * 2}

    load = Bash(
        "load",
        "echo loading {{ ti.xcom_pull('transform')['rows'] }} rows for {{ params.day }}",
        trigger_rule="all_done",
    )

    transform(extract.output) >> load
