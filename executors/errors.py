"""Errors of the executors package: launching processes, warm Python workers, the DAG-file parser.

They derive from the orchestrator's root error so callers can catch one hierarchy; each message
says what went wrong and what to do about it.
"""

from __future__ import annotations

from orchestrator.errors import OrchestratorError


class ExecutorError(OrchestratorError):
    """The executor could not run a task: see the task log for details."""


class LaunchError(ExecutorError):
    """The task process could not be started: check the command, its cwd and the log directory."""


class PythonWorkerExited(ExecutorError):
    """A warm Python worker process exited while it was running a request."""

    def __init__(self, exit_code: int, message: str | None = None) -> None:
        self.exit_code = exit_code
        super().__init__(message or f"python worker exited with code {exit_code} while running the task")


class PythonWorkerStartError(ExecutorError):
    """A Python worker process did not start: check python_executable and that `executors` imports."""


class DagFileParseError(ExecutorError):
    """A DAG file could not be loaded. The message is what users see as the file's import error."""
