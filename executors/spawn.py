"""Start one child process and follow it with the event loop, without threads or polling.

Per-task overhead is what this product is judged on, so this module avoids the slow paths:
`asyncio.create_subprocess_exec` costs ~1.6 ms per spawn on uvloop and `preexec_fn` disables the
vfork fast path. Instead a child is started with `os.posix_spawn(..., setsid=True)` (its own
session and process group, so a timeout can kill everything it started), its exit is watched
through a pidfd registered with `loop.add_reader` (no SIGCHLD watcher, no thread), and it is reaped
with `waitpid` once the pidfd is readable. stderr goes straight to the log file (O_APPEND) through
the spawn file actions; stdout goes through a pipe the loop reads, so the last line can become the
XCom. Works on stock asyncio and on uvloop.

When the main process exits, whatever it left running in its process group is killed (SIGKILL):
a task cannot leak processes past its end. A task that must start something long-lived should
detach it into its own session (`setsid`).
"""

from __future__ import annotations

import asyncio
import os
import queue
import shutil
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from executors.errors import LaunchError

#: Python ignores SIGPIPE (and SIGXFSZ); ignored dispositions survive exec, so reset them.
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)
_READ_SIZE = 65536
#: how much of an unterminated stdout line is kept to find the last line (the rest is only logged)
_MAX_PARTIAL_LINE = 65536
#: on exit, read at most this much leftover stdout before giving up (a runaway writer)
_MAX_FINAL_DRAIN = 16 * 1024 * 1024
_CD_WRAPPER = 'cd -- "$1" || exit 127; shift; exec "$@"'

FileAction = tuple[int, ...] | tuple[int, int, str, int, int]


def spawn_session(argv: Sequence[str], env: Mapping[str, str], file_actions: Sequence[FileAction]) -> int:
    """posix_spawn `argv` (argv[0] must be a path) as the leader of a new session; returns its pid.

    Signal dispositions Python changed are reset and the signal mask is cleared, as `subprocess`
    does with restore_signals. Only fds named in `file_actions` (and 0-2) reach the child: Python
    creates every other fd non-inheritable.
    """
    return os.posix_spawn(
        argv[0],
        list(argv),
        dict(env),
        file_actions=list(file_actions),
        setsid=True,
        setsigdef=_DEFAULT_SIGNALS,
        setsigmask=(),
    )


def kill_group(pgid: int, sig: int) -> None:
    """Signal a whole process group; a group that is already gone is not an error.

    Only call this before the leader is reaped: until then its pid (= the group id) cannot be reused.
    """
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class ExitWatcher:
    """Calls `on_exit` once when the child `pid` has exited, via its pidfd; `reap()` then collects it.

    The child is left a zombie until `reap()` so that its process group can still be signalled
    safely from `on_exit` (the pid cannot be reused before the reap).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, pid: int, on_exit: Callable[[], None]) -> None:
        self.pid = pid
        self._loop = loop
        self._on_exit = on_exit
        self._pidfd: int | None = os.pidfd_open(pid)
        loop.add_reader(self._pidfd, self._readable)

    def _readable(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
        self._on_exit()

    def reap(self) -> int:
        """Collect the exited child; returns its exit code (negative: killed by that signal)."""
        self._close()
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            # Somebody else reaped it (a foreign waitpid(-1)); the status is lost.
            return -255
        return os.waitstatus_to_exitcode(status)

    def _close(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def abandon(self) -> None:
        """Stop watching without reaping (used when the caller reaps with a blocking waitpid)."""
        self._close()


@dataclass(frozen=True, slots=True)
class CommandResult:
    """How a command ended."""

    pid: int
    #: os.waitstatus_to_exitcode: the exit status, or minus the signal number that killed it
    exit_code: int
    timed_out: bool
    #: stopped by `RunningCommand.terminate` (cancel, shutdown)
    terminated: bool
    #: the last non-empty line the command wrote to stdout (right-stripped), None if there was none
    last_line: str | None
    duration: float


def resolve_executable(name: str, env: Mapping[str, str]) -> str:
    """A path for posix_spawn: `name` itself if it has a slash, else looked up on env's PATH."""
    if "/" in name:
        return name
    found = shutil.which(name, path=env.get("PATH", os.defpath))
    if found is None:
        raise LaunchError(f"command {name!r} was not found on PATH: install it or use an absolute path")
    return found


_LOG_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


def _open_log(log_path: Path) -> int:
    """Open (create) the log for appending; its folder is created only when it is missing."""
    try:
        try:
            return os.open(log_path, _LOG_FLAGS, 0o644)
        except FileNotFoundError:
            os.makedirs(log_path.parent, exist_ok=True)
            return os.open(log_path, _LOG_FLAGS, 0o644)
    except OSError as exc:
        raise LaunchError(
            f"cannot open the task log {str(log_path)!r}: {exc.strerror}: "
            "check that the logs folder is writable"
        ) from exc


def write_all(fd: int, data: bytes) -> None:
    """os.write until everything is written (regular files may take a partial write)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class RunningCommand:
    """A command started by `start_command`; await `wait()` for its `CommandResult`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pid: int,
        stdout_fd: int | None,
        log_fd: int,
        timeout: float | None,
        kill_grace: float,
        footer: Callable[[CommandResult], str] | None = None,
    ) -> None:
        self.pid = pid
        self._footer = footer
        self._loop = loop
        self._started = time.monotonic()
        self._stdout_fd: int | None = stdout_fd
        self._log_fd: int | None = log_fd
        self._kill_grace = kill_grace
        self._partial = b""
        self._last_line = b""
        self._timed_out = False
        self._terminated = False
        self._kill_timer: asyncio.TimerHandle | None = None
        self._timeout_timer: asyncio.TimerHandle | None = None
        self._result: asyncio.Future[CommandResult] = loop.create_future()
        self._watcher = ExitWatcher(loop, pid, self._exited)
        if stdout_fd is not None:
            os.set_blocking(stdout_fd, False)
            loop.add_reader(stdout_fd, self._stdout_readable)
        if timeout is not None:
            self._timeout_timer = loop.call_later(timeout, self._time_out)

    # --- public ------------------------------------------------------------------------------
    async def wait(self) -> CommandResult:
        return await asyncio.shield(self._result)

    @property
    def done(self) -> bool:
        return self._result.done()

    def add_done_callback(self, callback: Callable[[CommandResult], None]) -> None:
        """Call `callback(result)` from the loop when the command has ended (cheaper than a task)."""
        self._result.add_done_callback(lambda future: callback(future.result()))

    def terminate(self, grace: float | None = None) -> None:
        """SIGTERM the process group now and SIGKILL it after `grace` seconds (default kill_grace)."""
        if self._result.done() or self._terminated:
            return
        self._terminated = True
        self._stop(grace)

    # --- internals ---------------------------------------------------------------------------
    def _time_out(self) -> None:
        self._timeout_timer = None
        if self._result.done() or self._terminated:
            return
        self._timed_out = True
        self._stop(None)

    def _stop(self, grace: float | None) -> None:
        kill_group(self.pid, signal.SIGTERM)
        if self._kill_timer is None:
            delay = self._kill_grace if grace is None else grace
            self._kill_timer = self._loop.call_later(delay, self._kill)

    def _kill(self) -> None:
        self._kill_timer = None
        if not self._result.done():
            kill_group(self.pid, signal.SIGKILL)

    def _stdout_readable(self) -> None:
        fd = self._stdout_fd
        if fd is None:
            return
        try:
            data = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._consume(data)
        else:
            self._close_stdout()

    def _consume(self, data: bytes) -> None:
        if self._log_fd is not None:
            write_all(self._log_fd, data)
        chunk = self._partial + data
        head, sep, tail = chunk.rpartition(b"\n")
        if sep:
            for line in reversed(head.split(b"\n")):
                if line.strip():
                    self._last_line = line
                    break
        self._partial = tail[-_MAX_PARTIAL_LINE:]

    def _drain_stdout(self) -> None:
        fd = self._stdout_fd
        budget = _MAX_FINAL_DRAIN
        while fd is not None and budget > 0:
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                return
            if not data:
                return
            budget -= len(data)
            self._consume(data)

    def _close_stdout(self) -> None:
        if self._stdout_fd is not None:
            self._loop.remove_reader(self._stdout_fd)
            os.close(self._stdout_fd)
            self._stdout_fd = None

    def _exited(self) -> None:
        # The leader is a zombie: its pid (the group id) cannot be reused until the reap below,
        # so killing what it left behind in its group is safe here.
        kill_group(self.pid, signal.SIGKILL)
        try:
            self._drain_stdout()
        finally:
            self._close_stdout()
            for timer in (self._timeout_timer, self._kill_timer):
                if timer is not None:
                    timer.cancel()
            self._timeout_timer = self._kill_timer = None
            exit_code = self._watcher.reap()
        last = self._last_line
        if self._partial.strip():
            last = self._partial
        result = CommandResult(
            pid=self.pid,
            exit_code=exit_code,
            timed_out=self._timed_out,
            terminated=self._terminated,
            last_line=last.decode("utf-8", "backslashreplace").rstrip() if last.strip() else None,
            duration=time.monotonic() - self._started,
        )
        self._close_log(result)
        self._result.set_result(result)

    def _close_log(self, result: CommandResult) -> None:
        """Write the footer (if any) through the log fd the command used, then close it."""
        fd, self._log_fd = self._log_fd, None
        if fd is None:
            return
        try:
            if self._footer is not None:
                write_all(fd, self._footer(result).encode("utf-8", "backslashreplace"))
        except OSError:
            pass  # a full disk must not lose the outcome: the result is still reported
        finally:
            os.close(fd)


@dataclass(frozen=True, slots=True)
class Launched:
    """A started child: its pid, the read end of its stdout pipe and the open log descriptor."""

    pid: int
    #: None when stdout went straight to the log (nobody needs its last line)
    stdout_fd: int | None
    log_fd: int


def launch(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log_path: Path,
    cwd: str | None = None,
    header: str = "",
    capture_stdout: bool = True,
) -> Launched:
    """Open the log, write `header`, and posix_spawn `argv` in its own session.

    stdout goes through a pipe the loop reads (for its last line) when `capture_stdout`, else
    straight to the log like stderr: no pipe, no reads, when nobody needs the last line.

    Thread-safe and loop-free (only system calls that release the GIL for their duration), so
    `SpawnThread` can run it off the event loop. Raises `LaunchError` and leaks no fd when the
    log cannot be opened, the command or the cwd does not exist.
    """
    if not argv:
        raise LaunchError("empty command: give the program to run")
    program = resolve_executable(argv[0], env)
    args = [program, *argv[1:]]
    if cwd is not None:
        if not os.path.isdir(cwd):
            raise LaunchError(f"cwd {cwd!r} is not a directory: create it or fix the task's cwd")
        args = ["/bin/sh", "-c", _CD_WRAPPER, "sh", cwd, *args]
    log_fd = _open_log(log_path)
    read_fd: int | None = None
    try:
        if header:
            write_all(log_fd, header.encode("utf-8", "backslashreplace"))
        if capture_stdout:
            read_fd, write_fd = os.pipe()
        else:
            write_fd = os.dup(log_fd)  # closed below like the pipe's write end
    except OSError:
        os.close(log_fd)
        raise
    try:
        pid = spawn_session(
            args,
            env,
            [
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, write_fd, 1),
                (os.POSIX_SPAWN_DUP2, log_fd, 2),
            ],
        )
    except OSError as exc:
        if read_fd is not None:
            os.close(read_fd)
        os.close(log_fd)
        raise LaunchError(f"cannot start {args[0]!r}: {exc.strerror or exc}") from exc
    finally:
        os.close(write_fd)
    return Launched(pid, read_fd, log_fd)


def watch(
    launched: Launched,
    *,
    timeout: float | None = None,
    kill_grace: float = 5.0,
    footer: Callable[[CommandResult], str] | None = None,
) -> RunningCommand:
    """Follow a launched child from the running event loop (its pidfd and stdout pipe)."""
    loop = asyncio.get_running_loop()
    try:
        return RunningCommand(
            loop, launched.pid, launched.stdout_fd, launched.log_fd, timeout, kill_grace, footer
        )
    except BaseException:
        # Could not watch it (pidfd_open failed, fd limit...): do not leave it running or a zombie.
        kill_group(launched.pid, signal.SIGKILL)
        os.waitpid(launched.pid, 0)
        for fd in (launched.stdout_fd, launched.log_fd):
            if fd is None:
                continue
            try:
                os.close(fd)
            except OSError:
                pass
        raise


def start_command(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log_path: Path,
    cwd: str | None = None,
    timeout: float | None = None,
    kill_grace: float = 5.0,
    header: str = "",
    footer: Callable[[CommandResult], str] | None = None,
) -> RunningCommand:
    """Start `argv` in its own session; stdout to the loop (and the log), stderr to the log.

    The log is opened once: `header` is written before the command starts, `footer(result)`
    after it ended, both through the same descriptor the command's output goes through.
    Must be called from the event loop's thread.
    """
    launched = launch(argv, env=env, log_path=log_path, cwd=cwd, header=header)
    return watch(launched, timeout=timeout, kill_grace=kill_grace, footer=footer)


_SpawnJob = tuple[Callable[[], Launched], Callable[[Launched | BaseException], None]]


class SpawnThread:
    """Runs `launch` jobs on one thread of its own and hands each result back to the loop.

    While a wide fan-out keeps the event loop busy with bookkeeping, creating a process
    (creating its log file, posix_spawn) proceeds on another core: both release the GIL.
    Jobs run in submission order. The thread starts with the first job.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[
            tuple[Callable[[], Launched], Callable[[Launched | BaseException], None]] | None
        ]
        self._jobs = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def submit(self, job: Callable[[], Launched], done: Callable[[Launched | BaseException], None]) -> None:
        """Run `job` on the thread; `done(result or exception)` is then called on the loop."""
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(target=self._run, name="orchestrator-spawn", daemon=True)
            self._thread.start()
        self._jobs.put((job, done))

    def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, done = item
            result: Launched | BaseException
            try:
                result = job()
            except BaseException as exc:
                result = exc
            try:
                loop.call_soon_threadsafe(done, result)
            except RuntimeError:  # the loop is closed: nobody will watch this child
                if isinstance(result, Launched):
                    kill_group(result.pid, signal.SIGKILL)
                    os.waitpid(result.pid, 0)
                return

    def close(self) -> None:
        """Stop the thread once the jobs already submitted are done."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout=10)
            self._thread = None
