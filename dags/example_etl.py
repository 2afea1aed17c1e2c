"""Example DAG shipped with the daemon: extract (bash) -> transform (@task) -> load (bash).

Shows params and run_id in templates, XCom flowing from a bash task into a Python task
(`extract.output`) and from a Python task into a bash command (`ti.xcom_pull`), retries
with exponential backoff, an execution timeout and a trigger rule. Trigger it with
`orchestrator trigger example_etl` (optionally `--conf '{"day": "2026-02-01"}'`).

Values reach the shell commands through `env=`, never by interpolating `{{ params.day }}` into
the command text: a run's conf is anyone's input, and `--conf '{"day": "$(id)"}'` would
otherwise run `id`. In the environment a value is only ever data ("$DAY" in double quotes).
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
        'echo "extracting $DAY for run $RUN_ID" && echo 21',
        env={"DAY": "{{ params.day }}", "RUN_ID": "{{ run_id }}"},
        append_env=True,
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
        'echo "loading $ROWS rows for $DAY"',
        env={"ROWS": "{{ ti.xcom_pull('transform')['rows'] }}", "DAY": "{{ params.day }}"},
        append_env=True,
        trigger_rule="all_done",
    )

    transform(extract.output) >> load
