"""Import DAG files and turn them into DagSpecs; find Python task callables again. Workers only.

The daemon never imports user code: a worker process calls `load_dag_specs` for a file
and sends the specs back as JSON, or calls `find_callable` to run a Python task. Any
failure becomes a `DagFileError` whose message is what `orchestrator dags errors` shows:
the file, the exception and the traceback lines in the user's code, not ours.

Each file is imported as a fresh module named after a hash of its path, so two
`etl.py` files in different folders do not clash, and with its folder on sys.path so
helper modules next to it import. Helper modules stay cached in sys.modules: editing
a helper is seen when the worker restarts, not when the DAG file is re-parsed.

DAG versions: the source a spec was parsed from is hashed (sha256) into `DagSpec.source_hash`
and, given a `versions_dir`, kept there as `<hash>.py`. A run's Python task asks for the
callable of its run's version: if the file has changed since, the kept source is imported
instead (under the file's own path, so `__file__` and its helper modules are the same).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

from orchestrator.authoring.dag import DAG, collect_dags
from orchestrator.authoring.operators import Python
from orchestrator.core.model import DagSpec
from orchestrator.core.validation import DagValidationError
from orchestrator.errors import OrchestratorError

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class DagFileError(OrchestratorError):
    """A DAG file could not be loaded: the message (shown by `orchestrator dags errors`) says why."""


@dataclass(frozen=True, slots=True)
class _Loaded:
    """One import of one file: the stat it was taken at, the module and the DAGs it created."""

    mtime_ns: int
    size: int
    module: ModuleType
    dags: tuple[DAG, ...]
    source: bytes
    source_hash: str


#: The last import of each file, by absolute path (for find_callable in warm workers).
_cache: dict[str, _Loaded] = {}
#: Imports of older versions of files, by source hash, most recently used last (bounded).
_versions: OrderedDict[str, _Loaded] = OrderedDict()
_MAX_OLD_VERSIONS = 8


def source_hash_of(source: bytes) -> str:
    return hashlib.sha256(source).hexdigest()


def version_path(versions_dir: str, source_hash: str) -> str:
    """Where the source of one DAG version is kept."""
    return os.path.join(versions_dir, f"{source_hash}.py")


def keep_version(versions_dir: str, source_hash: str, source: bytes) -> None:
    """Keep a parsed source under its hash (written whole, then renamed: never half a file)."""
    target = version_path(versions_dir, source_hash)
    if os.path.exists(target):
        return
    os.makedirs(versions_dir, exist_ok=True)
    partial = f"{target}.{os.getpid()}.tmp"
    with open(partial, "wb") as out:
        out.write(source)
    os.replace(partial, target)


def module_name_for(path: str) -> str:
    """The sys.modules name a DAG file is imported under: unique per absolute path."""
    digest = hashlib.sha1(os.path.abspath(path).encode(), usedforsecurity=False).hexdigest()[:16]
    return f"orchestrator_dag_{digest}"


def load_dag_specs(path: str, versions_dir: str | None = None) -> list[DagSpec]:
    """Import `path` afresh and return the validated DagSpec of every DAG it creates, each
    with the source's hash; with `versions_dir`, the source is kept there under that hash.

    A file that creates no DAG gives []. Import errors, invalid DAGs and two DAGs with
    the same dag_id raise DagFileError.
    """
    path = os.path.abspath(path)
    loaded = _import(path)
    specs: list[DagSpec] = []
    for dag in loaded.dags:
        try:
            specs.append(replace(dag.to_spec(fileloc=path), source_hash=loaded.source_hash))
        except DagValidationError as exc:
            raise DagFileError(f"{path}: {exc}") from None
    if versions_dir and specs:
        try:
            keep_version(versions_dir, loaded.source_hash, loaded.source)
        except OSError as exc:
            raise DagFileError(
                f"{path}: cannot keep this DAG version in {versions_dir}: {exc.strerror or exc}"
            ) from None
    return specs


def find_callable(
    path: str,
    dag_id: str,
    task_id: str,
    source_hash: str | None = None,
    versions_dir: str | None = None,
) -> Callable[..., Any]:
    """The python_callable of a Python task, from the DAG version `source_hash` (None: the
    file as it is now), importing `path` again only if it changed.

    The module is cached per (path, mtime_ns, size). Raises DagFileError when the file
    does not load, the version is not kept, the DAG or task is missing, or the task is not
    a Python task.
    """
    path = os.path.abspath(path)
    loaded = _cache.get(path)
    if loaded is None or source_hash is None or loaded.source_hash != source_hash:
        stat = _stat(path)
        if loaded is None or (loaded.mtime_ns, loaded.size) != stat:
            loaded = _import(path)
        if source_hash is not None and loaded.source_hash != source_hash:
            loaded = _old_version(path, source_hash, versions_dir)
    dags = [dag for dag in loaded.dags if dag.dag_id == dag_id]
    if not dags:
        known = ", ".join(sorted(dag.dag_id for dag in loaded.dags)) or "none"
        raise DagFileError(
            f"{path}: defines no DAG {dag_id!r} (DAGs in this file: {known}); "
            "the file may have changed since the run started"
        )
    task = dags[0].task_dict.get(task_id)
    if task is None:
        tasks = ", ".join(dags[0].task_dict) or "none"
        raise DagFileError(
            f"{path}: DAG {dag_id!r} has no task {task_id!r} (tasks: {tasks}); "
            "the file may have changed since the run started"
        )
    if not isinstance(task, Python):
        raise DagFileError(
            f"{path}: task {task_id!r} of DAG {dag_id!r} is a {type(task).__name__} task, not a Python task; "
            "only Python tasks have a callable to run"
        )
    return task.python_callable


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DagFileError(f"{path}: cannot read the DAG file: {exc.strerror or exc}") from None
    return st.st_mtime_ns, st.st_size


def _old_version(path: str, source_hash: str, versions_dir: str | None) -> _Loaded:
    """An earlier version of `path`, from the source kept under its hash."""
    loaded = _versions.get(source_hash)
    if loaded is not None:
        _versions.move_to_end(source_hash)
        return loaded
    kept = version_path(versions_dir, source_hash) if versions_dir else None
    try:
        if kept is None:
            raise FileNotFoundError
        with open(kept, "rb") as source_file:
            source = source_file.read()
    except OSError:
        raise DagFileError(
            f"{path}: the DAG file changed since this run started, and the version the run "
            f"started with ({source_hash[:12]}) is not kept"
            + (f" in {versions_dir}" if versions_dir else "")
            + "; trigger a new run to use the file as it is now"
        ) from None
    loaded = _import(path, source=source, module_suffix=f"_v{source_hash[:16]}")
    _versions[source_hash] = loaded
    while len(_versions) > _MAX_OLD_VERSIONS:
        _versions.popitem(last=False)
    return loaded


def _import(path: str, *, source: bytes | None = None, module_suffix: str = "") -> _Loaded:
    """Execute the file (or, for an earlier version, `source` as that file) as a new module,
    collecting every DAG constructed meanwhile."""
    mtime_ns, size = _stat(path)  # before reading: an edit during the import is seen next time
    if source is None:
        try:
            with open(path, "rb") as source_file:
                source = source_file.read()
        except OSError as exc:
            raise DagFileError(f"{path}: cannot read the DAG file: {exc.strerror or exc}") from None
    current = not module_suffix
    name = module_name_for(path) + module_suffix
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise DagFileError(f"{path}: not a Python file the orchestrator can import (use a .py file)")
    module = importlib.util.module_from_spec(spec)
    folder = os.path.dirname(path)
    added_to_path = folder not in sys.path
    if added_to_path:
        sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        with collect_dags() as dags:
            exec(compile(source, path, "exec", dont_inherit=True), module.__dict__)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(name, None)
        if current:
            _cache.pop(path, None)
        raise DagFileError(_describe_import_failure(path, exc)) from None
    finally:
        if added_to_path:
            try:
                sys.path.remove(folder)
            except ValueError:
                pass
    ids: dict[str, DAG] = {}
    for dag in dags:
        first = ids.setdefault(dag.dag_id, dag)
        if first is not dag:
            sys.modules.pop(name, None)
            if current:
                _cache.pop(path, None)
            raise DagFileError(
                f"{path}: two DAGs have dag_id {dag.dag_id!r} (created at {_where(first)} and "
                f"{_where(dag)}); give each DAG its own dag_id"
            )
    loaded = _Loaded(mtime_ns, size, module, tuple(dags), source, source_hash_of(source))
    if current:
        _cache[path] = loaded
    return loaded


def _where(dag: DAG) -> str:
    return f"{os.path.basename(dag.fileloc)}:{dag.lineno}"


def _describe_import_failure(path: str, exc: BaseException) -> str:
    """The file, the exception type and message, and the traceback frames in user code."""
    if isinstance(exc, SyntaxError):
        detail = "".join(traceback.format_exception_only(type(exc), exc)).rstrip()
        return f"{path}: {type(exc).__name__} while importing the DAG file:\n{detail}"
    folder = os.path.dirname(path)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _is_user_frame(f.filename, folder)]
    lines = "".join(traceback.format_list(frames)).rstrip()
    message = str(exc) if not isinstance(exc, SystemExit) else f"the file called sys.exit({exc.code!r})"
    text = f"{path}: {type(exc).__name__} while importing the DAG file: {message}"
    if lines:
        text += f"\nTraceback (most recent call last):\n{lines}"
    return text


def _is_user_frame(filename: str, folder: str) -> bool:
    """True for the DAG file and helpers in its folder; False for importlib, stdlib and our modules."""
    if filename.startswith("<"):
        return False
    filename = os.path.abspath(filename)
    return filename.startswith(folder + os.sep) and not filename.startswith(_PACKAGE_DIR + os.sep)
