"""One DAG-file parse in a child forked for it: own process group, time limit, memory limit.

A parser worker (`executors.pyworker`) never imports user code itself. Each parse runs in a
child forked for it (ahead of time: after each parse the worker forks the next one, which waits
for its request), which puts itself in a new process group, caps its address space (RLIMIT_AS:
the allocation that crosses the cap raises MemoryError, which Python reports cleanly), imports
the file and writes its reply, length-prefixed, to a pipe. The worker waits on the child's pidfd
and the pipe with a deadline and answers as soon as the reply is whole; then (`after_reply`) it
SIGKILLs the child's whole process group (before reaping the child, so the group id cannot have
been reused) and reaps it. A child past its deadline, or dead without a whole reply, is killed
and reaped at once. So:

- a parse that runs past its time limit is killed, and the worker replies at once;
- nothing a DAG file starts (``subprocess.Popen("sleep 1000")``) outlives its parse, unless it
  leaves the group on purpose (setsid / setpgid);
- a 2 GB file's memory goes back to the system when its child exits: the worker stays small.

Forking a warm worker costs about a millisecond and keeps every parse fresh: no module of one
parse is seen by the next. Neither the fork nor the child's exit is on a parse's path.
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
from dataclasses import dataclass
from types import FrameType
from typing import Any

import orjson

#: a reply bigger than this is refused (the DAG file's specs cannot reasonably be this large)
MAX_REPLY = 256 * 1024 * 1024
_PR_SET_PDEATHSIG = 1


@dataclass
class _Child:
    """A child forked for one parse: it waits for its request on `request_fd`, replies on `reply_fd`."""

    pid: int
    request_fd: int
    reply_fd: int


#: the child forked ahead for the next parse (forking costs about a millisecond: not on the
#: parse's path), and the children whose parse is answered, killed and reaped after the reply
_ready: list[_Child] = []
_done: list[_Child] = []


def parse_in_child(message: Mapping[str, Any]) -> dict[str, Any]:
    """The parse request of the daemon: hand it to a forked child, reply with its outcome.

    The reply is the child's (``ok`` + ``dags``, or ``ok: false`` + ``error``), with ``limit``
    set to "time" or "memory" when the parse hit one, or "crash" when the child died without
    replying. The child's process group is killed and reaped by `after_reply`, once the worker
    has sent this reply (a timed-out or crashed child at once).
    """
    timeout = float(message.get("timeout") or 30.0)
    child = _ready.pop() if _ready else _fork()
    try:
        data = orjson.dumps(message)
        view = memoryview(data)
        while view:
            view = view[os.write(child.request_fd, view) :]
    except OSError:
        pass  # the child is gone: its reply (none) says so below
    finally:
        os.close(child.request_fd)
    reply, finished = _wait_for_reply(child, timeout)
    if finished:
        _done.append(child)
        return reply
    status = _end(child)
    if reply.get("limit") == "crash" and status is not None:
        reply["exit_code"] = status
        reply["error"] = f"exit code {status}"
    return reply


def after_reply() -> None:
    """After a parse's reply is sent: kill what the parse left running, reap its child, and
    fork the child of the next parse."""
    while _done:
        _end(_done.pop())
    if not _ready:
        _ready.append(_fork())


def _fork() -> _Child:
    _libc()  # loaded before the fork, once per worker: the child must not pay for it
    request_r, request_w = os.pipe()  # close-on-exec: a program the file execs does not hold them
    reply_r, reply_w = os.pipe()
    worker = os.getpid()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child ends in os._exit
        os.close(request_w)
        os.close(reply_r)
        _child(request_r, reply_w, worker)
    os.close(request_r)
    os.close(reply_w)
    with contextlib.suppress(OSError):
        os.setpgid(pid, pid)  # also done by the child: whichever runs first wins the race
    return _Child(pid, request_w, reply_r)


def _end(child: _Child) -> int | None:
    """Kill the child's group, reap the child: its exit code (None if it was reaped already)."""
    _kill_group(child.pid)  # not reaped yet: the pid still names this child's group
    status = _reap(child.pid)
    with contextlib.suppress(OSError):
        os.close(child.reply_fd)
    return None if status == -255 else status


def _child(  # pragma: no cover - the child ends in os._exit
    request_fd: int, reply_fd: int, worker: int
) -> None:
    code = 0
    try:
        os.setpgid(0, 0)
        _die_with(worker)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)  # the worker's request pipe is not the DAG file's to read
        os.close(devnull)
        if 3 not in (request_fd, reply_fd):
            with contextlib.suppress(OSError):
                os.close(3)  # nor its reply pipe (executors.pyworker.REPLY_FD)
        _warm_up()
        raw = b"".join(_read_all(request_fd))
        os.close(request_fd)
        if not raw:
            os._exit(0)  # the worker ended before it had a parse for this child
        message = orjson.loads(raw)
        memory_mb = int(message.get("memory_mb") or 0)
        if memory_mb:
            limit = memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        reply = _parse(str(message["path"]), message.get("versions_dir"))
        data = orjson.dumps(reply)
        view = memoryview(len(data).to_bytes(8, "big") + data)
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


def _warm_up() -> None:  # pragma: no cover - runs in the child
    """Build, check and serialise a DAG of our own while the child waits for its request: the
    memory a parse touches is copied from the worker now (copy-on-write), not during the parse.
    The child is thrown away after one parse, so nothing of this is seen by the next."""
    with contextlib.suppress(Exception):
        from orchestrator.authoring.dag import DAG, collect_dags
        from orchestrator.authoring.operators import Bash, Python
        from orchestrator.core.serialization import spec_to_dict

        with collect_dags() as dags, DAG("orchestrator_parser_warm_up") as dag:
            Bash("a", "true") >> Python("b", _warm_up)
        for made in dags or [dag]:
            orjson.dumps(spec_to_dict(made.to_spec(fileloc="<warm-up>")))


def _read_all(fd: int) -> Iterator[bytes]:
    while True:
        data = os.read(fd, 1 << 20)
        if not data:
            return
        yield data


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


def _wait_for_reply(child: _Child, timeout: float) -> tuple[dict[str, Any], bool]:
    """The child's reply, and whether it came whole (False: timed out, crashed or too large)."""
    deadline = time.monotonic() + timeout
    buffer = bytearray()
    expected: int | None = None
    timed_out = False
    pidfd = os.pidfd_open(child.pid)
    try:
        with _kill_group_on_sigterm(child.pid):
            watching = [child.reply_fd, pidfd]
            while True:
                if expected is None and len(buffer) >= 8:
                    expected = int.from_bytes(buffer[:8], "big")
                if expected is not None and (len(buffer) - 8 >= expected or expected > MAX_REPLY):
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                if not watching:
                    break
                readable, _, _ = select.select(watching, [], [], remaining)
                if child.reply_fd in readable:
                    data = os.read(child.reply_fd, 1 << 20)
                    if data:
                        buffer += data
                    else:
                        watching.remove(child.reply_fd)  # all writers gone: nothing more comes
                if pidfd in readable:
                    watching.remove(pidfd)
                    if child.reply_fd in watching:
                        buffer += b"".join(_drain(child.reply_fd))
                        watching.remove(child.reply_fd)
    finally:
        os.close(pidfd)
    if timed_out:
        return {"ok": False, "limit": "time", "error": f"the parse ran for more than {timeout:g} s"}, False
    if expected is not None and expected > MAX_REPLY:
        too_large = f"the DAG file's DAGs are larger than {MAX_REPLY >> 20} MB as JSON"
        return {"ok": False, "error": too_large}, False
    if expected is None or len(buffer) - 8 < expected:
        return {"ok": False, "limit": "crash", "error": "the parser child ended without replying"}, False
    try:
        answer: dict[str, Any] = orjson.loads(bytes(buffer[8 : 8 + expected]))
    except orjson.JSONDecodeError:
        return {"ok": False, "limit": "crash", "error": "a truncated reply"}, False
    return answer, True


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
