"""Task logs as local files: the implementation of `orchestrator.ports.TaskLogs`, and the
writers the local executor and its Python workers use.

One file per try, where `orchestrator.logpaths` says (the one place that knows the layout).
Everything that opens, writes, caps, reads or follows those files is here:

- `LogFiles` is the daemon-side owner: `writer()` gives one try's writer (the output of a
  bash task, read by the daemon from its pipe; the header and footer of every try), `append`
  adds lines (the daemon's notes), `read` streams a byte range in chunks, `follow` streams a
  try as it is written.
- `FileTaskLogs` is the port: it names a try's file and delegates to `LogFiles`.
- `open_for_append` and `cap_written_log` are what a Python worker process uses: it writes its
  task's output straight to the file (fd 1 and 2 point at it, so subprocesses log too).

**The cap** (`logs.max_bytes_per_try`). A try's log keeps its first `cap - tail` bytes, one
marker line saying the cap was reached, and the last `tail` bytes of output (`tail` is 1 MiB,
or half the cap when the cap is smaller). Bash output passes through the daemon, so the cap
holds while the task runs: past the head, output is counted and only the latest `tail` bytes
are held in memory, written after a second line saying how much was dropped when the try
ends. A Python task writes the file itself; its worker cuts the file down to the same shape
when the task returns, so while it runs its log can grow past the cap.

**Following** needs no poll loop: writes that go through a `TryLogWriter` wake the followers of
that file in-process, and the writes a Python worker makes are seen through inotify
(`watchfiles`, as the DAG folder is watched). A follow ends when the try's writer is closed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.logpaths import task_log_path

if TYPE_CHECKING:
    from orchestrator.ports import LaunchRequest, TryLog

logger = logging.getLogger("storage.filelogs")

#: the default of `logs.max_bytes_per_try`
DEFAULT_MAX_BYTES_PER_TRY = 100 * 1024 * 1024
#: how much of the end of a capped log is kept (at most half the cap)
TAIL_BYTES = 1024 * 1024
#: reads never hold more than this much of a log at once
READ_CHUNK = 64 * 1024

_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


def open_for_append(path: Path | str) -> int:
    """Open (create) a task log for appending; its folder is created only when it is missing.
    Raises OSError."""
    try:
        return os.open(path, _APPEND_FLAGS, 0o644)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, _APPEND_FLAGS, 0o644)


def write_all(fd: int, data: bytes) -> None:
    """os.write until everything is written (regular files may take a partial write)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


_writable_folders: set[str] = set()


def check_folder(path: Path | str) -> None:
    """Create the folder of the log `path` if needed and check it is writable (once per folder).
    Raises OSError."""
    folder = os.path.dirname(path)  # a str: hashing a Path costs more than this whole check
    if folder in _writable_folders:
        return
    os.makedirs(folder, exist_ok=True)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(13, "Permission denied")
    if len(_writable_folders) > 4096:
        _writable_folders.clear()
    _writable_folders.add(folder)


def tail_bytes(cap: int) -> int:
    """How much of the end of a log over `cap` bytes is kept."""
    return min(TAIL_BYTES, cap // 2)


def _reached_line(cap: int) -> bytes:
    return (
        f"\n[orchestrator] this log reached logs.max_bytes_per_try ({cap} bytes): output from here on "
        f"is dropped, and its last {tail_bytes(cap)} bytes are kept for when the try ends\n"
    ).encode()


def _dropped_line(dropped: int, kept: int) -> bytes:
    return f"\n[orchestrator] {dropped} bytes of output were dropped; the last {kept} bytes follow\n".encode()


def cap_written_log(fd: int, path: Path | str, cap: int) -> bool:
    """Cut a log that a process wrote directly (`fd`, open for appending) down to the shape of
    a capped log: its head, one marker line, its last bytes. True if it was over the cap.
    Raises OSError."""
    size = os.lseek(fd, 0, os.SEEK_END)
    if size <= cap:
        return False
    tail = tail_bytes(cap)
    head = cap - tail
    rw = os.open(path, os.O_RDWR | os.O_CLOEXEC)  # O_APPEND ignores offsets: a second descriptor
    try:
        kept = os.pread(rw, tail, size - tail)
        dropped = size - head - len(kept)
        marker = (
            f"\n[orchestrator] this log reached logs.max_bytes_per_try ({cap} bytes): {dropped} bytes "
            f"were dropped here; the last {len(kept)} bytes follow\n"
        ).encode()
        rest = marker + kept
        offset = head
        while rest:
            written = os.pwrite(rw, rest, offset)
            rest = rest[written:]
            offset += written
        os.ftruncate(rw, offset)
    finally:
        os.close(rw)
    return True


class TryLogWriter:
    """Writes one try's log from the daemon: opened on the first write (a try that succeeds
    silently costs no file), capped (see the module doc), closed once. Followers of the file are
    woken on every write. `write` raises OSError when the log cannot be opened or written."""

    __slots__ = (
        "_cap",
        "_dropped",
        "_fd",
        "_files",
        "_followers",
        "_head_room",
        "_header",
        "_key",
        "_tail",
        "_tail_len",
        "closed",
        "external_output",
        "path",
    )

    def __init__(self, files: LogFiles, path: Path, header: str, cap: int | None) -> None:
        self.path = path
        self._key = str(path)
        self._files = files
        self._fd: int | None = None
        self._header = header
        self._cap = cap
        #: bytes that may still be written before output goes to the in-memory tail
        self._head_room = cap - tail_bytes(cap) if cap is not None else 0
        self._tail: deque[bytes] | None = None
        self._tail_len = 0
        self._dropped = 0
        self._followers: list[asyncio.Event] = []
        self.closed = False
        #: another process writes the output (this writer only adds header and footer)
        self.external_output = cap is None
        files._writers[self._key] = self

    @property
    def opened(self) -> bool:
        return self._fd is not None

    def write(self, data: bytes) -> None:
        """Append output (capped)."""
        fd = self._fd if self._fd is not None else self._open()
        if self._cap is None or len(data) <= self._head_room:
            write_all(fd, data)
            self._head_room -= len(data)
        else:
            self._overflow(fd, data)
        if self._followers:
            self._wake()

    def close(self, footer: bytes = b"") -> None:
        """Write what the cap held back and `footer` (not counted against the cap), then close.
        A log never opened is not created for an empty footer."""
        if self.closed:
            return
        try:
            if footer or self._tail is not None:
                fd = self._fd if self._fd is not None else self._open()
                if self._tail is not None:
                    kept = b"".join(self._tail)[-tail_bytes(self._cap or 0) :]
                    self._dropped += self._tail_len - len(kept)
                    write_all(fd, _dropped_line(self._dropped, len(kept)) + kept)
                    self._tail = None
                if footer:
                    write_all(fd, footer)
        finally:
            self.closed = True
            self._files._writers.pop(self._key, None)
            opened, self._fd = self._fd, None
            if opened is not None:
                os.close(opened)
            self._wake()

    def _open(self) -> int:
        fd = open_for_append(self.path)
        self._fd = fd
        if self._header:
            header, self._header = self._header, ""
            self.write(header.encode("utf-8", "backslashreplace"))
        return fd

    def _overflow(self, fd: int, data: bytes) -> None:
        if self._tail is None:
            if self._head_room > 0:
                write_all(fd, data[: self._head_room])
                data = data[self._head_room :]
            self._head_room = 0
            write_all(fd, _reached_line(self._cap or 0))
            self._tail = deque()
        self._tail.append(data)
        self._tail_len += len(data)
        keep = tail_bytes(self._cap or 0)
        while len(self._tail) > 1 and self._tail_len - len(self._tail[0]) >= keep:
            self._tail_len -= len(self._tail[0])
            self._dropped += len(self._tail.popleft())

    def _wake(self) -> None:
        for event in self._followers:
            event.set()


class LogFiles:
    """The task-log files this daemon writes and serves (see the module doc)."""

    def __init__(self, max_bytes_per_try: int = DEFAULT_MAX_BYTES_PER_TRY) -> None:
        self.max_bytes_per_try = max_bytes_per_try
        #: the logs being written in this process, by path: followers wait on them
        self._writers: dict[str, TryLogWriter] = {}

    # --- writing --------------------------------------------------------------------------
    def writer(self, path: Path, header: str = "", *, capped: bool = True) -> TryLogWriter:
        """The writer of one try's log (created with `header` on the first write). `capped`
        False: the writer only adds header and footer (a Python worker writes the output)."""
        # the header is encoded only if the log is opened: a quiet success never is
        return TryLogWriter(self, path, header, self.max_bytes_per_try if capped else None)

    def append(self, path: Path, text: str) -> None:
        """Append whole lines (the daemon's notes), creating the log. Raises OSError."""
        fd = open_for_append(path)
        try:
            write_all(fd, text.encode("utf-8", "backslashreplace"))
        finally:
            os.close(fd)
        writer = self._writers.get(str(path))
        if writer is not None:
            writer._wake()

    def prepare(self, paths: Sequence[Path]) -> None:
        """Create these logs now (called while a commit is in flight, when the loop would wait)."""
        for path in paths:
            try:
                os.close(open_for_append(path))
            except OSError:
                pass  # the executor reports the error when it writes the log

    # --- reading --------------------------------------------------------------------------
    def size(self, path: Path) -> int | None:
        try:
            return os.stat(path).st_size
        except (FileNotFoundError, NotADirectoryError):
            return None

    async def read(self, path: Path, offset: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        """Bytes [offset, end) of the log in chunks of at most READ_CHUNK (nothing if it is missing).

        Chunks are read in the event loop: a log being read was just written, so it is in the
        page cache, and a read there costs less than a hop to a thread."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            return
        try:
            stop = os.fstat(fd).st_size if end is None else end
            position = offset
            while position < stop:
                data = os.pread(fd, min(READ_CHUNK, stop - position), position)
                if not data:
                    return
                position += len(data)
                yield data
        finally:
            os.close(fd)

    async def follow(self, path: Path, offset: int = 0) -> AsyncGenerator[bytes, None]:
        """Bytes from `offset`, then new ones as they are written, until the try's writer in this
        process is closed. With no writer open, what the file holds is all there will be."""
        writer = self._writers.get(str(path))
        if writer is None:
            async for chunk in self.read(path, offset):
                yield chunk
            return
        changed = asyncio.Event()
        writer._followers.append(changed)
        # output another process writes (a Python worker) is seen through inotify; the watch is
        # in place before the first read, so nothing written after that read goes unnoticed
        watch = _FileWatch(path, changed) if writer.external_output else None
        try:
            while True:
                changed.clear()
                done = writer.closed
                async for chunk in self.read(path, offset):
                    offset += len(chunk)
                    yield chunk
                if done:
                    return
                await changed.wait()
        finally:
            if watch is not None:
                watch.close()
            try:
                writer._followers.remove(changed)
            except ValueError:
                pass


class _FileWatch:
    """Sets `changed` whenever inotify sees the file `path` written, until `close`.

    watchfiles' `RustNotify` is used directly (as `watchfiles.awatch` does) because it puts the
    watch in place when it is created, whereas `awatch` does so some time after its first
    iteration starts. Its wait runs in a thread of its own (not the loop's pool, which a few
    followers would exhaust); `close` ends it within `_STEP_MS`.
    """

    _STEP_MS = 5

    def __init__(self, path: Path, changed: asyncio.Event) -> None:
        from watchfiles._rust_notify import RustNotify

        self._changed = changed
        self._stop = threading.Event()
        target = path if path.exists() else path.parent
        self._notify = RustNotify([str(target)], False, False, 0, False, False)
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._run, args=(loop,), name=f"follow {path.name}", daemon=True).start()

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            while not self._stop.is_set():
                if isinstance(self._notify.watch(20, self._STEP_MS, 0, self._stop), set):
                    loop.call_soon_threadsafe(self._changed.set)
        except RuntimeError:
            pass  # the loop closed under a follower: nobody is waiting any more
        except Exception as exc:
            logger.warning("cannot watch a task log for changes: %s", exc)
        finally:
            self._notify.close()

    def close(self) -> None:
        self._stop.set()


class FileTaskLogs:
    """`orchestrator.ports.TaskLogs` on the files under `logs_dir` (see the module doc)."""

    def __init__(self, logs_dir: Path, files: LogFiles | None = None) -> None:
        self.logs_dir = logs_dir
        self.files = files if files is not None else LogFiles()

    def path(self, log: TryLog) -> Path:
        return task_log_path(
            self.logs_dir, log.dag_id, log.run_id, log.task_id, log.map_index, log.try_number
        )

    def append(self, log: TryLog, text: str) -> None:
        self.files.append(self.path(log), text)

    def prepare(self, launches: Sequence[LaunchRequest]) -> None:
        # only the kinds whose executor writes a header before any output (Python tries); a bash
        # try's log is created by its first output, and a quiet success makes no file at all
        self.files.prepare([request.log_path for request in launches if request.kind == "python"])

    async def size(self, log: TryLog) -> int | None:
        return self.files.size(self.path(log))

    def read(self, log: TryLog, offset: int = 0, end: int | None = None) -> AsyncGenerator[bytes, None]:
        return self.files.read(self.path(log), offset, end)

    def follow(self, log: TryLog, offset: int = 0) -> AsyncGenerator[bytes, None]:
        return self.files.follow(self.path(log), offset)
