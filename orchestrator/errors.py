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
