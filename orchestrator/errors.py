"""The orchestrator's error hierarchy. Each error's message says what to do about it."""

from __future__ import annotations


class OrchestratorError(Exception):
    """Something went wrong in the orchestrator."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(OrchestratorError):
    """The configuration is invalid: fix the named key in the named file or environment variable."""


class DagNotFound(OrchestratorError):
    """No DAG with this id is loaded: check `orchestrator dags list` and `orchestrator dags errors`."""


class InvalidRequest(OrchestratorError):
    """The request is malformed: the message names the field to fix."""


class IllegalTransition(OrchestratorError):
    """A state change the state machine forbids: this is a bug in the orchestrator, please report it."""


class ShuttingDown(OrchestratorError):
    """The daemon is shutting down and takes no new runs: retry once it (or another daemon) is up."""


class AnotherDaemonRunning(OrchestratorError):
    """A daemon this one cannot share the database with is running on it (an older version,
    from before replicas, or a live daemon with the same daemon.daemon_id): stop it, or give
    this one its own daemon.daemon_id."""


class OwnedElsewhere(OrchestratorError):
    """Another replica drives this run: the request is for that replica (the API forwards it)."""

    http_status = 409

    def __init__(self, message: str, *, daemon_id: str, hostname: str, api_url: str | None) -> None:
        super().__init__(message)
        self.daemon_id = daemon_id
        self.hostname = hostname
        self.api_url = api_url


class RunNotFound(OrchestratorError):
    """No such DAG run: list the DAG's runs with `orchestrator runs <dag_id>`."""

    http_status = 404


class TaskInstanceNotFound(OrchestratorError):
    """No such task instance in this run: list them with `orchestrator tasks <dag_id> <run_id>`."""

    http_status = 404


class OperationConflict(OrchestratorError):
    """The operation cannot be done in the current state (e.g. deleting a run that is running)."""

    http_status = 409
