"""Tasks do not inherit the daemon's own configuration overrides (they may hold secrets)."""

from __future__ import annotations

from orchestrator.daemon import task_base_environment


def test_config_overrides_are_not_passed_to_tasks_but_everything_else_is() -> None:
    environ = {
        "PATH": "/usr/bin",
        "ORCHESTRATOR_DATABASE__DSN": "postgresql://u:secret@db/o",
        "ORCHESTRATOR_EXECUTORS__LOCAL__SLOTS": "4",
        "ORCHESTRATOR_URL": "http://127.0.0.1:8080",
        "ORCHESTRATOR_LOG_LEVEL": "DEBUG",
        "MY_TOKEN": "kept",
    }
    assert task_base_environment(environ) == {
        "PATH": "/usr/bin",
        "ORCHESTRATOR_URL": "http://127.0.0.1:8080",
        "ORCHESTRATOR_LOG_LEVEL": "DEBUG",
        "MY_TOKEN": "kept",
    }
