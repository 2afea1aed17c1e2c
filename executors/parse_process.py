"""One DAG-file parse in a child forked for it: own process group, time limit, memory limit.

A parser worker (`executors.pyworker`) never imports user code itself. For each parse it forks
a child that puts itself in a new process group, caps its address space (RLIMIT_AS: the
allocation that crosses the cap raises MemoryError, which Python reports cleanly), imports the
file and writes its reply to a pipe. The worker waits on the child's pidfd and the pipe with a
deadline, then SIGKILLs the child's whole process group (before reaping the child, so the group
id cannot have been reused) and reaps it. So:

- a parse that runs past its time limit is killed, and the worker replies at once;
- nothing a DAG file starts (``subprocess.Popen("sleep 1000")``) outlives its parse, unless it
  leaves the group on purpose (setsid / setpgid);
- a 2 GB file's memory goes back to the system when its child exits: the worker stays small.

Forking a warm worker costs about a millisecond and keeps every parse fresh: no module of one
parse is seen by the next.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import signal
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from types import FrameType
from typing import Any

import orjson

#: a reply bigger than this is refused (the DAG file's specs cannot reasonably be this large)
MAX_REPLY = 256 * 1024 * 1024
_PR_SET_PDEATHSIG = 1


def parse_in_child(message: Mapping[str, Any]) -> dict[str, Any]:
    """The parse request of the daemon: fork, import in the child, reply with its outcome.

    The reply is the child's (``ok`` + ``dags``, or ``ok: false`` + ``error``), with ``limit``
    set to "time" or "memory" when the parse hit one, or "crash" when the child died without
    replying.
    """
    timeout = float(message.get("timeout") or 30.0)
    memory_mb = int(message.get("memory_mb") or 0)
    _libc()  # loaded before the fork, once per worker: the child must not pay for it
    read_fd, write_fd = os.pipe()  # both close-on-exec: a program the file execs does not hold them
    worker = os.getpid()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child ends in os._exit
        os.close(read_fd)
        _child(message, write_fd, memory_mb, worker)
    os.close(write_fd)
    try:
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # also done by the child: whichever runs first wins the race
        return _wait_for_child(pid, read_fd, timeout)
    finally:
        os.close(read_fd)


def _child(  # pragma: no cover - the child ends in os._exit
    message: Mapping[str, Any], reply_fd: int, memory_mb: int, worker: int
) -> None:
    code = 0
    try:
        os.setpgid(0, 0)
        _die_with(worker)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)  # the worker's request pipe is not the DAG file's to read
        os.close(devnull)
        with contextlib.suppress(OSError):
            os.close(3)  # nor its reply pipe (executors.pyworker.REPLY_FD)
        if memory_mb:
            limit = memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        reply = _parse(str(message["path"]), message.get("versions_dir"))
        data = orjson.dumps(reply)
        view = memoryview(data)
        while view:
            view = view[os.write(reply_fd, view) :]
    except BaseException:
        code = 70
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _parse(path: str, versions_dir: str | None = None) -> dict[str, Any]:
    try:
        from orchestrator.authoring.loader import DagFileError, load_dag_specs
        from orchestrator.core.serialization import spec_to_dict
    except BaseException:
        return {"ok": False, "error": "the DAG loader could not be imported:\n" + traceback.format_exc()}
    try:
        specs = load_dag_specs(path, versions_dir=versions_dir)
        return {"ok": True, "dags": [spec_to_dict(spec) for spec in specs]}
    except DagFileError as exc:
        return {"ok": False, "error": str(exc), **_memory_limit(exc)}
    except BaseException as exc:
        return {"ok": False, "error": traceback.format_exc(), **_memory_limit(exc)}


def _memory_limit(exc: BaseException) -> dict[str, str]:
    """{"limit": "memory"} if a MemoryError is the exception or behind it (the loader wraps it)."""
    seen: BaseException | None = exc
    for _ in range(20):
        if seen is None:
            break
        if isinstance(seen, MemoryError):
            return {"limit": "memory"}
        seen = seen.__cause__ or seen.__context__
    return {}


def _die_with(worker: int) -> None:  # pragma: no cover - runs in the child
    """SIGKILL this child if its worker dies (the daemon killed the worker mid-parse)."""
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(Exception):
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != worker:  # the worker died before prctl took effect
        os._exit(1)


_LIBC: list[Any] = []


def _libc() -> Any:
    """The C library (for prctl), loaded lazily: task workers that never parse do not pay for ctypes."""
    if not _LIBC:
        try:
            import ctypes

            _LIBC.append(ctypes.CDLL(None, use_errno=True))
        except Exception:
            _LIBC.append(None)
    return _LIBC[0]


def _wait_for_child(pid: int, read_fd: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    exited = timed_out = False
    pidfd = os.pidfd_open(pid)
    try:
        with _kill_group_on_sigterm(pid):
            watching = [read_fd, pidfd]
            while not exited:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                readable, _, _ = select.select(watching, [], [], remaining)
                if read_fd in readable:
                    data = os.read(read_fd, 1 << 20)
                    if data:
                        chunks.append(data)
                        size += len(data)
                    else:
                        watching.remove(read_fd)  # all writers gone; the exit follows
                exited = pidfd in readable
                if size > MAX_REPLY:
                    break
            _kill_group(pid)  # not reaped yet: the pid still names this child's group
            if exited:
                chunks.extend(_drain(read_fd))
            status = _reap(pid)
    finally:
        os.close(pidfd)
    if timed_out:
        return {"ok": False, "limit": "time", "error": f"the parse ran for more than {timeout:g} s"}
    if size > MAX_REPLY:
        return {"ok": False, "error": f"the DAG file's DAGs are larger than {MAX_REPLY >> 20} MB as JSON"}
    raw = b"".join(chunks)
    if not raw:
        return {"ok": False, "limit": "crash", "exit_code": status, "error": f"exit code {status}"}
    try:
        reply: dict[str, Any] = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"ok": False, "limit": "crash", "exit_code": status, "error": "a truncated reply"}
    return reply


def _drain(fd: int) -> Iterator[bytes]:
    """What the exited child left in the pipe (a grandchild may still hold the write end open)."""
    os.set_blocking(fd, False)
    try:
        while True:
            try:
                data = os.read(fd, 1 << 20)
            except BlockingIOError:
                return
            if not data:
                return
            yield data
    finally:
        os.set_blocking(fd, True)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _reap(pid: int) -> int:
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return -255
    return os.waitstatus_to_exitcode(status)


@contextlib.contextmanager
def _kill_group_on_sigterm(pid: int) -> Iterator[None]:
    """While a parse runs, a SIGTERM to the worker (timeout, shutdown) also ends the parse's group."""

    def terminated(signum: int, frame: FrameType | None) -> None:
        _kill_group(pid)
        _reap(pid)
        os._exit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
