"""End to end: no child of the daemon sees its configuration overrides (the DSN may hold a
password), whatever kind of task it runs."""

from __future__ import annotations

import textwrap
from collections.abc import Callable

import pytest

from tests.e2e.harness import Daemon

pytestmark = pytest.mark.e2e

LEAKS = textwrap.dedent(
    """
    import os
    from orchestrator import DAG, Bash, task

    def overrides():
        return sorted(k for k in os.environ if k.startswith("ORCHESTRATOR_") and "__" in k)

    with DAG("leaks"):
        @task
        def python_sees():
            print("python sees", overrides())
            return overrides()

        Bash("bash_sees", "echo bash sees $(env | grep -c '^ORCHESTRATOR_[A-Z_]*__') overrides")
        python_sees()
    """
)


def test_python_and_bash_tasks_do_not_inherit_the_daemons_configuration_overrides(
    make_daemon: Callable[..., Daemon],
) -> None:
    daemon = make_daemon(
        env={"ORCHESTRATOR_DAEMON__SHUTDOWN_GRACE": "9", "ORCHESTRATOR_API__HOST": "127.0.0.1"}
    )
    daemon.write_dag("leaks.py", LEAKS)
    daemon.start()
    daemon.wait_dag("leaks")
    daemon.trigger("leaks", dag_run_id="r1")
    run = daemon.wait_run("leaks", "r1")
    assert run["state"] == "success", daemon.logs()

    assert "python sees []" in daemon.task_log("leaks", "r1", "python_sees", 1)
    assert "bash sees 0 overrides" in daemon.task_log("leaks", "r1", "bash_sees", 1)
