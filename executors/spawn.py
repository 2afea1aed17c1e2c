"""Start one child process and follow it with the event loop, without threads or polling.

Per-task overhead is what this product is judged on, so this module avoids the slow paths:
`asyncio.create_subprocess_exec` costs ~1.6 ms per spawn on uvloop and `preexec_fn` disables the
vfork fast path. Instead a child is started with `os.posix_spawn(..., setsid=True)` (its own
session and process group, so a timeout can kill everything it started), its exit is watched
through a pidfd registered with `loop.add_reader` (no SIGCHLD watcher, no thread), and it is reaped
with `waitpid` once the pidfd is readable. stdout and stderr go into one pipe the loop reads,
as Airflow's BashOperator merges them (its last line becomes the XCom). The output reaches the
log through a `storage.filelogs.TryLogWriter` (which holds the log to `logs.max_bytes_per_try`
and wakes its followers); the file is created when the first output arrives: a task that
succeeds silently costs no file at all (creating a file here costs more than spawning the
process). A log that cannot be written stops the command: the try fails with the reason.

When the main process exits, whatever it left running in its process group is killed (SIGKILL):
a task cannot leak processes past its end. A task that must start something long-lived should
detach it into its own session (`setsid`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from executors.errors import LaunchError
from storage.filelogs import LogFiles, TryLogWriter, check_folder

logger = logging.getLogger("executors.spawn")

#: Python ignores SIGPIPE (and SIGXFSZ); ignored dispositions survive exec, so reset them.
_DEFAULT_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)
_READ_SIZE = 65536
#: how much of an unterminated stdout line is kept to find the last line (the rest is only logged)
_MAX_PARTIAL_LINE = 65536
#: on exit, read at most this much leftover stdout before giving up (a runaway writer)
_MAX_FINAL_DRAIN = 16 * 1024 * 1024
_CD_WRAPPER = 'cd -- "$1" || exit 127; shift; exec "$@"'

FileAction = tuple[int, ...] | tuple[int, int, str, int, int]

#: the log files of commands started without a `LogFiles` of their own (the default cap)
_DEFAULT_LOGS = LogFiles()


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
    #: why the command's output could not be logged (the command was then stopped)
    log_error: str | None = None


def resolve_executable(name: str, env: Mapping[str, str]) -> str:
    """A path for posix_spawn: `name` itself if it has a slash, else looked up on env's PATH."""
    if "/" in name:
        return name
    found = shutil.which(name, path=env.get("PATH", os.defpath))
    if found is None:
        raise LaunchError(f"command {name!r} was not found on PATH: install it or use an absolute path")
    return found


class RunningCommand:
    """A command started by `start_command`; await `wait()` for its `CommandResult`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pid: int,
        output_fd: int,
        log: TryLogWriter,
        timeout: float | None,
        kill_grace: float,
        footer: Callable[[CommandResult], str] | None = None,
    ) -> None:
        self.pid = pid
        self._footer = footer
        self._loop = loop
        self._started = time.monotonic()
        self._stdout_fd: int | None = output_fd
        self._log_writer = log
        self._log_error: str | None = None
        self._kill_grace = kill_grace
        self._partial = b""
        self._last_line = b""
        self._timed_out = False
        self._terminated = False
        self._kill_timer: asyncio.TimerHandle | None = None
        self._timeout_timer: asyncio.TimerHandle | None = None
        self._result: asyncio.Future[CommandResult] = loop.create_future()
        self._watcher = ExitWatcher(loop, pid, self._exited)
        os.set_blocking(output_fd, False)
        loop.add_reader(output_fd, self._stdout_readable)
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

    def _log(self, data: bytes) -> None:
        """Append to the log (created, header first, on the first write). A log that cannot be
        written stops the command: its output would be lost, so the try fails with the reason."""
        if self._log_error is not None:
            return
        try:
            self._log_writer.write(data)
        except OSError as exc:
            self._log_error = (
                f"cannot write the task log {str(self._log_writer.path)!r}: {exc.strerror or exc}: "
                "check that the logs folder is writable and has room"
            )
            logger.warning("pid %s is stopped: %s", self.pid, self._log_error)
            if not self._result.done() and not self._terminated:
                self._stop(None)

    def _consume(self, data: bytes) -> None:
        self._log(data)
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
            log_error=self._log_error,
        )
        self._close_log(result)
        self._result.set_result(result)

    def _close_log(self, result: CommandResult) -> None:
        """Write the footer and close the log. A quiet success (no output, exit 0) leaves no
        log file at all: creating one costs more than the whole rest of a short task."""
        quiet_success = result.exit_code == 0 and not result.timed_out and not result.terminated
        footer = b""
        if self._footer is not None and self._log_error is None:
            if self._log_writer.opened or not quiet_success:
                footer = self._footer(result).encode("utf-8", "backslashreplace")
        try:
            self._log_writer.close(footer)
        except OSError as exc:
            logger.warning("cannot finish the log of pid %s: %s", self.pid, exc)


@dataclass(frozen=True, slots=True)
class Launched:
    """A started child: its pid, the read end of its stdout pipe, and its log's path and header."""

    pid: int
    #: the read end of the pipe the child's stdout and stderr both go to
    output_fd: int
    log_path: Path
    header: str


def launch(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log_path: Path,
    cwd: str | None = None,
    header: str = "",
) -> Launched:
    """posix_spawn `argv` in its own session, stdout and stderr into one pipe for the loop.

    stdout and stderr are one stream, as in Airflow's BashOperator (its last line is the
    XCom). The log file is created by `RunningCommand` when the first output arrives, with
    `header` in front. Raises `LaunchError` and leaks no fd when the log folder is not
    writable, the command or the cwd does not exist.
    """
    if not argv:
        raise LaunchError("empty command: give the program to run")
    program = resolve_executable(argv[0], env)
    args = [program, *argv[1:]]
    if cwd is not None:
        if not os.path.isdir(cwd):
            raise LaunchError(f"cwd {cwd!r} is not a directory: create it or fix the task's cwd")
        args = ["/bin/sh", "-c", _CD_WRAPPER, "sh", cwd, *args]
    _check_log_folder(log_path)
    read_fd, write_fd = os.pipe()
    try:
        pid = spawn_session(
            args,
            env,
            [
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, write_fd, 1),
                (os.POSIX_SPAWN_DUP2, write_fd, 2),
            ],
        )
    except OSError as exc:
        os.close(read_fd)
        raise LaunchError(f"cannot start {args[0]!r}: {exc.strerror or exc}") from exc
    finally:
        os.close(write_fd)
    return Launched(pid, read_fd, log_path, header)


def _check_log_folder(log_path: Path) -> None:
    """Create the log's folder if needed and check it is writable (once per folder)."""
    try:
        check_folder(log_path)
    except OSError as exc:
        raise LaunchError(
            f"cannot open the task log {str(log_path)!r}: {exc.strerror}: "
            "check that the logs folder is writable"
        ) from exc


def watch(
    launched: Launched,
    *,
    timeout: float | None = None,
    kill_grace: float = 5.0,
    footer: Callable[[CommandResult], str] | None = None,
    logs: LogFiles | None = None,
) -> RunningCommand:
    """Follow a launched child from the running event loop (its pidfd and stdout pipe); its
    output goes to its log through `logs` (default: LogFiles with the default cap)."""
    loop = asyncio.get_running_loop()
    writer = (logs or _DEFAULT_LOGS).writer(launched.log_path, launched.header)
    try:
        return RunningCommand(loop, launched.pid, launched.output_fd, writer, timeout, kill_grace, footer)
    except BaseException:
        writer.close()
        # Could not watch it (pidfd_open failed, fd limit...): do not leave it running or a zombie.
        kill_group(launched.pid, signal.SIGKILL)
        os.waitpid(launched.pid, 0)
        try:
            os.close(launched.output_fd)
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
    logs: LogFiles | None = None,
) -> RunningCommand:
    """Start `argv` in its own session; stdout to the loop (and the log), stderr to the log.

    The log is created with the first output, `header` first; `footer(result)` is appended
    at the end (a quiet success leaves no log file).
    Must be called from the event loop's thread.
    """
    launched = launch(argv, env=env, log_path=log_path, cwd=cwd, header=header)
    return watch(launched, timeout=timeout, kill_grace=kill_grace, footer=footer, logs=logs)
