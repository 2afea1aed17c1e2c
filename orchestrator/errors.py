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
    """Another daemon is running on this database; several daemons on one database are not
    supported yet: stop the other one (or point this one at another database.dsn)."""


class RunNotFound(OrchestratorError):
    """No such DAG run: list the DAG's runs with `orchestrator runs <dag_id>`."""

    http_status = 404


class TaskInstanceNotFound(OrchestratorError):
    """No such task instance in this run: list them with `orchestrator tasks <dag_id> <run_id>`."""

    http_status = 404


class OperationConflict(OrchestratorError):
    """The operation cannot be done in the current state (e.g. deleting a run that is running)."""

    http_status = 409
