"""The warm Python worker process: runs Python tasks and parses DAG files for the daemon.

The daemon never imports user code; these processes do. Each is started once by
`executors.workers` (`python -u -m executors.pyworker`) in its own session and then serves one
request at a time, so a Python task does not pay interpreter start-up. Requests arrive on fd 0
and replies leave on fd 3 (not stdout: user code prints), as length-prefixed orjson frames
(4-byte big-endian length, then the JSON body).

Requests:
- ``{"op": "run", ...}`` call a task's callable with its arguments and Airflow-style context;
  fd 1 and fd 2 point at the task's log for the duration (so subprocesses log too). When it
  returns, a log past ``log_max_bytes`` is cut down to its head, a marker and its tail
  (`storage.filelogs.cap_written_log`).
- ``{"op": "parse", "path": ..., "timeout": ..., "memory_mb": ...}`` import a DAG file in a child
  forked for that parse (`executors.parse_process`) and return its DagSpecs as JSON.

The process survives a failing task; if it dies, the daemon replaces it.
"""

from __future__ import annotations

import inspect
import logging
import os
import struct
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import orjson

from executors.parse_process import after_reply, parse_in_child
from storage.filelogs import cap_written_log, open_for_append

REQUEST_FD = 0
REPLY_FD = 3
_HEADER = struct.Struct(">I")
HEADER_SIZE = _HEADER.size
#: a frame bigger than this is a protocol error, not a message (protects against garbage)
MAX_FRAME = 1 << 30


def encode_frame(message: Any) -> bytes:
    """One frame: length prefix + orjson body. Raises TypeError if `message` is not JSON-able."""
    body = orjson.dumps(message)
    return _HEADER.pack(len(body)) + body


def frame_length(header: bytes) -> int:
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ValueError(f"frame of {length} bytes is too large: the worker protocol is out of sync")
    return int(length)


def _read_exact(fd: int, count: int) -> bytes | None:
    chunks: list[bytes] = []
    while count:
        data = os.read(fd, count)
        if not data:
            return None
        chunks.append(data)
        count -= len(data)
    return b"".join(chunks)


def read_frame(fd: int) -> Any | None:
    """Blocking read of one frame; None at end of input (the daemon went away)."""
    header = _read_exact(fd, HEADER_SIZE)
    if header is None:
        return None
    body = _read_exact(fd, frame_length(header))
    if body is None:
        return None
    return orjson.loads(body)


def write_frame(fd: int, message: Any) -> None:
    data = memoryview(encode_frame(message))
    while data:
        data = data[os.write(fd, data) :]


# --- running a task ------------------------------------------------------------------------------


def error_summary(exc: BaseException) -> str:
    """The last line(s) of a traceback: what users see as the task's error."""
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return text or type(exc).__name__


def call_arguments(
    func: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], context: Mapping[str, Any]
) -> dict[str, Any]:
    """kwargs plus Airflow-style context injection.

    A parameter named like a context key (ds, ts, run_id, params, conf, ...) that the arguments do
    not already fill gets that value; a `**kwargs` parameter receives the whole context.
    """
    try:
        parameters = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return dict(kwargs)
    positional = [
        name
        for name, p in parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    filled = set(positional[: len(args)]) | set(kwargs)
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    result = dict(kwargs)
    for name, value in context.items():
        if name in filled:
            continue
        parameter = parameters.get(name)
        named = parameter is not None and parameter.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        )
        if named or (takes_all and parameter is None):
            result[name] = value
    return result


@contextmanager
def output_to(log_fd: int) -> Iterator[None]:
    """Point fd 1 and fd 2 (and so sys.stdout, sys.stderr, subprocesses) at the log, then restore."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


@contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """Run with exactly the task's environment (as a shell task's process gets), then put the
    worker's own back. Only the variables that differ are changed: a try's environment is
    mostly the same from one task to the next."""
    previous = dict(os.environ)
    _switch_environment(previous, env)
    try:
        yield
    finally:
        _switch_environment(dict(os.environ), previous)


def _switch_environment(current: Mapping[str, str], wanted: Mapping[str, str]) -> None:
    for name in current.keys() - wanted.keys():
        os.environ.pop(name, None)
    for name, value in wanted.items():
        if current.get(name) != value:
            os.environ[name] = value


#: this worker's marker file (see executors.orphans): the token of the try it is running
_marker_fd: int | None = None


def _open_marker() -> None:
    global _marker_fd
    folder = os.environ.get("ORCHESTRATOR_WORKER_MARKERS")
    if folder:
        try:
            _marker_fd = os.open(
                os.path.join(folder, str(os.getpid())),
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                0o644,
            )
        except OSError:
            _marker_fd = None


def _mark(token: str) -> None:
    """Say which try this worker runs ("" when idle), so a restarted daemon can tell for sure."""
    if _marker_fd is not None:
        try:
            os.ftruncate(_marker_fd, 0)
            if token:
                os.pwrite(_marker_fd, token.encode(), 0)
        except OSError:
            pass


def run_task(message: Mapping[str, Any]) -> dict[str, Any]:
    """Call one task's callable; the reply says ok + value, or the error message."""
    _mark(str((message.get("env") or {}).get("ORCHESTRATOR_TRY_TOKEN", "")))
    try:
        return _run_task(message)
    finally:
        _mark("")


def _run_task(message: Mapping[str, Any]) -> dict[str, Any]:
    task_id = message["task_id"]
    log_path = message["log_path"]
    try:
        log_fd = open_for_append(log_path)
    except OSError as exc:
        return {"ok": False, "error": f"cannot open the task log {log_path!r}: {exc.strerror}"}
    try:
        with output_to(log_fd):
            cwd = message.get("cwd")
            home = os.getcwd() if cwd else ""
            if cwd:
                try:
                    os.chdir(cwd)
                except OSError as exc:
                    error = f"cannot run {task_id} in its cwd {cwd!r}: {exc.strerror}"
                    print(error, file=sys.stderr)
                    return {"ok": False, "error": error}
            try:
                with environment(message.get("env") or {}):
                    return _call(message, task_id)
            finally:
                if cwd:
                    os.chdir(home)
    finally:
        cap = message.get("log_max_bytes")
        if cap:
            try:
                cap_written_log(log_fd, log_path, int(cap))
            except OSError as exc:
                print(f"cannot cap the task log {log_path!r}: {exc.strerror}", file=sys.stderr)
        os.close(log_fd)


def _call(message: Mapping[str, Any], task_id: str) -> dict[str, Any]:
    try:
        from orchestrator.authoring.loader import find_callable

        func = find_callable(
            message["dag_file"],
            message["dag_id"],
            task_id,
            source_hash=message.get("source_hash"),
            versions_dir=message.get("versions_dir"),
        )
        args = list(message.get("args") or [])
        kwargs = call_arguments(func, args, dict(message.get("kwargs") or {}), message.get("context") or {})
        value = func(*args, **kwargs)
    except BaseException as exc:
        traceback.print_exc()
        return {"ok": False, "error": error_summary(exc)}
    if not message.get("do_xcom_push", True):
        return {"ok": True, "has_value": False}
    try:
        raw = orjson.dumps(value)
    except TypeError as exc:
        error = f"return value of {task_id} is not JSON serialisable: {exc}"
        print(error, file=sys.stderr)
        return {"ok": False, "error": error}
    if b"null" in raw:  # orjson writes NaN and Infinity as null: the value would vanish
        from orchestrator.core.values import non_finite_refusal

        refusal = non_finite_refusal(value)
        if refusal is not None:
            print(f"return value of {task_id} refused: {refusal}", file=sys.stderr)
            return {"ok": False, "error": refusal}
    return {"ok": True, "has_value": True, "value": orjson.Fragment(raw)}


HANDLERS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "run": run_task,
    "parse": parse_in_child,
    "ping": lambda message: {"ok": True, "pid": os.getpid()},
}


def _warm_up() -> None:
    """Import what every request needs now, so the first task does not pay for it."""
    for module in ("orchestrator", "orchestrator.authoring.loader", "orchestrator.core.serialization"):
        try:
            __import__(module)
        except ImportError:
            pass


def main() -> int:
    try:
        os.fstat(REPLY_FD)
    except OSError:
        print("executors.pyworker is started by the orchestrator daemon, not by hand", file=sys.stderr)
        return 2
    os.set_inheritable(REPLY_FD, False)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="[%(asctime)s] {%(filename)s:%(lineno)d} %(levelname)s - %(message)s",
    )
    _warm_up()
    _open_marker()
    write_frame(REPLY_FD, {"op": "ready", "pid": os.getpid()})
    while True:
        message = read_frame(REQUEST_FD)
        if message is None:
            return 0
        handler = HANDLERS.get(message.get("op"))
        if handler is None:
            reply: dict[str, Any] = {"ok": False, "error": f"unknown worker request {message.get('op')!r}"}
        else:
            reply = handler(message)
        reply["id"] = message.get("id")
        write_frame(REPLY_FD, reply)
        if message.get("op") == "parse":
            after_reply()  # the parse's leftovers are killed once its answer is on its way


if __name__ == "__main__":
    sys.exit(main())
