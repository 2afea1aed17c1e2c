"""Task kinds: what a task *is* (a shell command, a Python callable, ...), as an open registry.

A kind is one object registered under its name. It says which Airflow operator it stands for
(so the API and the UI show familiar names), which of the task's arguments are templates,
how to check those arguments when a DAG is loaded, and how to turn the rendered arguments
into the kind's own typed *payload*: the tagged value an executor receives in a
`LaunchRequest`. Adding a kind is one module that defines a `TaskKind` and calls
`register_kind`; nothing else in the engine branches on kind names.

Pure: no I/O. Rendering is passed in as a function, so kinds know nothing of Jinja.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from orchestrator.errors import OrchestratorError


class UnknownTaskKind(OrchestratorError):
    """A task has a kind no module registered: use a kind listed in the message."""


class Payload(Protocol):
    """A kind's launch payload: a frozen value tagged with the kind's name."""

    kind: ClassVar[str]


@dataclass(frozen=True, slots=True)
class RenderInput:
    """What a kind may use to build its payload for one try."""

    dag_id: str
    dag_file: str
    task_id: str
    #: the DAG version's source hash, when the parser recorded one
    source_hash: str | None
    #: renders one argument value (strings are templates, XCom references are resolved)
    render: Callable[[Any], Any]
    #: the JSON-able Airflow context (ds, ts, run_id, params, ...), built on demand
    json_context: Callable[[], dict[str, Any]]


class TaskKind(Protocol):
    """One kind of task."""

    #: the name tasks carry in `TaskSpec.kind` (and in the serialized DAG)
    name: str
    #: the Airflow operator class and module it corresponds to (REST API `class_ref`)
    operator: str
    operator_module: str
    #: the names of the arguments that are rendered as templates before each try
    template_fields: tuple[str, ...]

    def check(self, args: Mapping[str, Any]) -> list[str]:
        """Problems with the task's arguments, each a sentence a DAG author can act on."""

    def payload(self, args: Mapping[str, Any], rendered: Mapping[str, Any], given: RenderInput) -> Payload:
        """The payload of one try: `rendered` holds the template fields already rendered."""


_KINDS: dict[str, TaskKind] = {}


def register_kind(kind: TaskKind) -> TaskKind:
    """Make `kind` known under `kind.name` (registering the same name again replaces it)."""
    _KINDS[kind.name] = kind
    return kind


def unregister_kind(name: str) -> None:
    """Forget a kind (tests register kinds of their own and remove them afterwards)."""
    _KINDS.pop(name, None)


def get_kind(name: str) -> TaskKind:
    """The kind registered as `name`; raises UnknownTaskKind naming the known ones."""
    kind = _KINDS.get(name)
    if kind is None:
        raise UnknownTaskKind(f"task kind {name!r} is not known; known kinds: {', '.join(sorted(_KINDS))}")
    return kind


def known_kinds() -> tuple[str, ...]:
    return tuple(sorted(_KINDS))


# --- the built-in kinds -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BashPayload:
    """Run `bash_command` (rendered) with bash, or exec it directly when it has no shell syntax."""

    kind: ClassVar[str] = "bash"
    bash_command: str


@dataclass(frozen=True, slots=True)
class PythonPayload:
    """Call a task's callable, found again in the DAG file, with rendered arguments."""

    kind: ClassVar[str] = "python"
    dag_file: str
    dag_id: str
    task_id: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: the Airflow-style context the callable may ask for (JSON-able)
    context: dict[str, Any] = field(default_factory=dict)
    #: the DAG version whose source the callable is taken from (None: the file as it is)
    source_hash: str | None = None


class BashKind:
    """`BashOperator`: a shell command template."""

    name = "bash"
    operator = "BashOperator"
    operator_module = "airflow.operators.bash"
    template_fields: tuple[str, ...] = ("bash_command",)

    def check(self, args: Mapping[str, Any]) -> list[str]:
        command = args.get("bash_command")
        if not (isinstance(command, str) and command.strip()):
            return ["is a bash task without a bash_command"]
        unknown = sorted(set(args) - {"bash_command"})
        return [f"has unknown bash argument(s) {', '.join(unknown)}"] if unknown else []

    def payload(
        self, args: Mapping[str, Any], rendered: Mapping[str, Any], given: RenderInput
    ) -> BashPayload:
        return BashPayload(bash_command=rendered["bash_command"])


class PythonKind:
    """`PythonOperator` and `@task`: a callable with positional and keyword arguments."""

    name = "python"
    operator = "PythonOperator"
    operator_module = "airflow.operators.python"
    template_fields: tuple[str, ...] = ("op_args", "op_kwargs")

    def check(self, args: Mapping[str, Any]) -> list[str]:
        problems = []
        if not isinstance(args.get("op_args", ()), list | tuple):
            problems.append("has op_args that are not a list")
        if not isinstance(args.get("op_kwargs", {}), Mapping):
            problems.append("has op_kwargs that are not a mapping")
        unknown = sorted(set(args) - {"op_args", "op_kwargs"})
        if unknown:
            problems.append(f"has unknown python argument(s) {', '.join(unknown)}")
        return problems

    def payload(
        self, args: Mapping[str, Any], rendered: Mapping[str, Any], given: RenderInput
    ) -> PythonPayload:
        return PythonPayload(
            dag_file=given.dag_file,
            dag_id=given.dag_id,
            task_id=given.task_id,
            args=list(rendered.get("op_args", ())),
            kwargs=dict(rendered.get("op_kwargs", {})),
            context=given.json_context(),
            source_hash=given.source_hash,
        )


register_kind(BashKind())
register_kind(PythonKind())
