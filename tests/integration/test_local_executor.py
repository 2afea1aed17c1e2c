"""LocalExecutor with real subprocesses and real warm Python workers, on asyncio and uvloop."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest
import uvloop

from executors.errors import ExecutorError
from executors.local import SHUTDOWN_ERROR, LocalExecutor
from orchestrator.core.kinds import BashPayload, PythonPayload
from orchestrator.core.records import TaskKey
from orchestrator.ports import NO_XCOM, LaunchRequest, TaskOutcome
from storage.filelogs import LogFiles

pytestmark = pytest.mark.anyio

ENV = {"PATH": "/usr/bin:/bin"}

DAG_FILE = """
import os
import subprocess
import time

from orchestrator import DAG, Python


def returns_value(x=1, y=2):
    print("hello from python")
    subprocess.run(["echo", "from-subprocess"], check=True)
    return {"sum": x + y}


def returns_none():
    return None


def raises():
    raise ValueError("boom in task")


def crashes():
    os._exit(7)


def not_json():
    return object()


def sleeps():
    time.sleep(1000)


def wants_context(ds, run_id, params, conf=None):
    return {"ds": ds, "run_id": run_id, "params": params, "conf": conf}


def wants_kwargs(a, **kwargs):
    return {"a": a, "keys": sorted(kwargs)}


def reads_env():
    return os.environ.get("TASK_VAR")


def pid():
    return os.getpid()


def loud():
    for number in range(1, 200001):
        print(number)
    print("the-last-line")
    return "done"


def waits_for_gate(gate):
    print("first", flush=True)
    while not os.path.exists(gate):
        time.sleep(0.01)
    print("second", flush=True)


with DAG("py"):
    for function in [returns_value, returns_none, raises, crashes, not_json, sleeps, wants_context,
                     wants_kwargs, reads_env, pid, loud, waits_for_gate]:
        Python(function.__name__, function)
"""


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"loop_factory": uvloop.new_event_loop}), id="uvloop"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def dag_file(tmp_path: Path) -> str:
    path = tmp_path / "dags" / "py_dag.py"
    path.parent.mkdir()
    path.write_text(DAG_FILE)
    return str(path)


class Recorder:
    """ExecutorEvents that records everything and lets a test wait for a condition."""

    def __init__(self) -> None:
        self.started: list[tuple[TaskKey, int, str]] = []
        self.finished: list[TaskOutcome] = []
        self.running_at_start: list[int] = []
        self.executor: LocalExecutor | None = None
        self._changed = asyncio.Event()

    def task_started(self, key: TaskKey, try_number: int, external_id: str) -> None:
        self.started.append((key, try_number, external_id))
        if self.executor is not None:
            self.running_at_start.append(self.executor.running_count())
        self._changed.set()

    def task_finished(self, outcome: TaskOutcome) -> None:
        self.finished.append(outcome)
        self._changed.set()

    def outcome(self, task_id: str) -> TaskOutcome:
        (found,) = [o for o in self.finished if o.key.task_id == task_id]
        return found

    async def until(self, condition: Callable[[], bool], deadline: float = 10.0) -> None:
        end = time.monotonic() + deadline
        while not condition():
            self._changed.clear()
            remaining = end - time.monotonic()
            assert remaining > 0, "condition not reached before the deadline"
            try:
                # woken by every event; re-checks at least every 20 ms for conditions on files
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.02))
            except TimeoutError:
                pass

    async def finished_with(self, task_id: str) -> TaskOutcome:
        await self.until(lambda: any(o.key.task_id == task_id for o in self.finished))
        return self.outcome(task_id)


@asynccontextmanager
async def local_executor(
    recorder: Recorder,
    *,
    slots: int = 4,
    python_workers: int = 1,
    kill_grace: float = 1.0,
    log_files: LogFiles | None = None,
) -> AsyncIterator[LocalExecutor]:
    executor = LocalExecutor(
        recorder, slots=slots, python_workers=python_workers, kill_grace=kill_grace, log_files=log_files
    )
    recorder.executor = executor
    await executor.start()
    try:
        yield executor
    finally:
        await executor.close()


def bash(tmp_path: Path, task_id: str, command: str, *, try_number: int = 1, **kwargs: Any) -> LaunchRequest:
    kwargs.setdefault("env", ENV)
    return LaunchRequest(
        key=TaskKey(1, task_id),
        dag_id="d",
        run_id="r",
        try_number=try_number,
        payload=BashPayload(command),
        log_path=tmp_path / "logs" / task_id / f"attempt={try_number}.log",
        **kwargs,
    )


def python(
    tmp_path: Path,
    dag_file: str,
    function: str,
    *,
    task_id: str | None = None,
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    try_number: int = 1,
    **extra: Any,
) -> LaunchRequest:
    task_id = task_id or function
    extra.setdefault("env", {})
    context = extra.pop("context", {})
    return LaunchRequest(
        key=TaskKey(1, task_id),
        dag_id="py",
        run_id="r",
        try_number=try_number,
        payload=PythonPayload(dag_file, "py", function, args or [], kwargs or {}, context),
        log_path=tmp_path / "logs" / task_id / f"attempt={try_number}.log",
        **extra,
    )


@dataclass(frozen=True)
class _EchoPayload:
    """A payload of a kind the local executor does not run."""

    kind: ClassVar[str] = "echo"
    text: str


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


# --- bash ----------------------------------------------------------------------------------------


async def test_bash_task_succeeds_with_last_line_as_xcom_and_a_log(tmp_path: Path) -> None:
    recorder = Recorder()
    async with local_executor(recorder) as executor:
        executor.submit(bash(tmp_path, "t", "echo first; echo oops >&2; echo last"))
        outcome = await recorder.finished_with("t")
    assert outcome == TaskOutcome(TaskKey(1, "t"), 1, success=True, exit_code=0, xcom_value="last")
    ((key, try_number, external_id),) = recorder.started
    assert (key, try_number) == (TaskKey(1, "t"), 1)
    assert external_id.startswith("pid:")
    lines = (tmp_path / "logs" / "t" / "attempt=1.log").read_text().splitlines()
    assert lines[0].endswith("try 1 of d/r/t started: echo first; echo oops >&2; echo last")
    assert set(lines[1:4]) == {"first", "oops", "last"}
    assert "finished in" in lines[4] and lines[4].endswith("success (exit code 0)")


@pytest.mark.parametrize(
    ("command", "exit_code", "error"),
    [
        ("exit 3", 3, "bash command exited with code 3"),
        ("exit 99", 99, "bash command exited with code 99"),
        ("kill -KILL $$", -9, "bash command was killed by SIGKILL"),
        ("no-such-command-xyz", 127, "bash command exited with code 127"),
    ],
)
async def test_bash_task_fails_on_non_zero_exit(
    tmp_path: Path, command: str, exit_code: int, error: str
) -> None:
    recorder = Recorder()
    async with local_executor(recorder, python_workers=0) as executor:
        executor.submit(bash(tmp_path, "t", command))
        outcome = await recorder.finished_with("t")
    assert (outcome.success, outcome.exit_code, outcome.error) == (False, exit_code, error)
    assert outcome.xcom_value is NO_XCOM


async def test_no_xcom_without_do_xcom_push_or_output(tmp_path: Path) -> None:
    recorder = Recorder()
    async with local_executor(recorder, python_workers=0) as executor:
        executor.submit(bash(tmp_path, "quiet", "echo x", do_xcom_push=False))
        executor.submit(bash(tmp_path, "silent", "true"))
        quiet = await recorder.finished_with("quiet")
        silent = await recorder.finished_with("silent")
    assert quiet.success and quiet.xcom_value is NO_XCOM
    assert silent.success and silent.xcom_value is NO_XCOM


async def test_bash_env_and_cwd_are_used(tmp_path: Path) -> None:
    recorder = Recorder()
    async with local_executor(recorder, python_workers=0) as executor:
        executor.submit(
            bash(tmp_path, "t", 'echo "$(pwd):$VALUE"', env={"VALUE": "v", **ENV}, cwd=str(tmp_path))
        )
        outcome = await recorder.finished_with("t")
    assert outcome.xcom_value == f"{tmp_path}:v"


async def test_bash_timeout_kills_the_group_and_says_timed_out(tmp_path: Path) -> None:
    recorder = Recorder()
    async with local_executor(recorder, python_workers=0) as executor:
        executor.submit(
            bash(tmp_path, "t", "sleep 1000 & echo $! > bg.pid; sleep 1000", timeout=0.3, cwd=str(tmp_path))
        )
        outcome = await recorder.finished_with("t")
        await recorder.until(lambda: gone(int((tmp_path / "bg.pid").read_text())))
    assert outcome.timed_out and not outcome.success
    assert outcome.error == "timed out after 0.3 s: the process group was terminated"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"cwd": "/no/such/dir"}, "could not start the task: cwd '/no/such/dir' is not a directory"),
        (
            {"payload": _EchoPayload("hi")},
            "could not start the task: the local executor cannot run 'echo' tasks",
        ),
    ],
)
async def test_launch_errors_are_reported_as_failed_outcomes(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    recorder = Recorder()
    async with local_executor(recorder, python_workers=0) as executor:
        request = bash(tmp_path, "t", "true")
        executor.submit(LaunchRequest(**{**_fields(request), **overrides}))
        outcome = await recorder.finished_with("t")
    assert not outcome.success
    assert outcome.error is not None and outcome.error.startswith(message)
    assert recorder.started == []


async def test_unwritable_log_is_a_failed_outcome(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    recorder = Recorder()
    async with local_executor(recorder, python_workers=0) as executor:
        request = bash(tmp_path, "t", "true")
        executor.submit(LaunchRequest(**{**_fields(request), "log_path": blocker / "attempt=1.log"}))
        outcome = await recorder.finished_with("t")
    assert not outcome.success
    assert outcome.error is not None and "cannot open the task log" in outcome.error


def _fields(request: LaunchRequest) -> dict[str, Any]:
    return {name: getattr(request, name) for name in LaunchRequest.__dataclass_fields__}


# --- slots, order, cancel, drain -----------------------------------------------------------------


async def test_slots_bound_concurrency(tmp_path: Path) -> None:
    recorder = Recorder()
    times = tmp_path / "times"
    times.mkdir()
    async with local_executor(recorder, slots=3, python_workers=0) as executor:
        for i in range(10):
            executor.submit(
                bash(
                    tmp_path,
                    f"t{i}",
                    f"date +%s.%N > {times}/{i}.start; sleep 0.1; date +%s.%N > {times}/{i}.end",
                )
            )
        await recorder.until(lambda: len(recorder.finished) == 10)
    assert all(o.success for o in recorder.finished)
    spans = [
        (float((times / f"{i}.start").read_text()), float((times / f"{i}.end").read_text()))
        for i in range(10)
    ]
    overlaps = [sum(1 for start, end in spans if start <= moment < end) for moment, _ in spans]
    assert max(overlaps) == 3
    assert max(recorder.running_at_start) == 3


async def test_requests_start_in_fifo_order(tmp_path: Path, dag_file: str) -> None:
    recorder = Recorder()
    async with local_executor(recorder, slots=1, python_workers=1) as executor:
        ids = []
        for i in range(6):
            request = (
                python(tmp_path, dag_file, "returns_none", task_id=f"t{i}")
                if i % 2
                else bash(tmp_path, f"t{i}", "true")
            )
            ids.append(request.key.task_id)
            executor.submit(request)
        await recorder.until(lambda: len(recorder.finished) == 6)
    assert [key.task_id for key, _, _ in recorder.started] == ids
    assert [o.key.task_id for o in recorder.finished] == ids


async def test_submitting_a_key_twice_is_refused(tmp_path: Path) -> None:
    recorder = Recorder()
    async with local_executor(recorder, slots=1, python_workers=0) as executor:
        executor.submit(bash(tmp_path, "t", "true"))
        with pytest.raises(ExecutorError, match="already queued or running"):
            executor.submit(bash(tmp_path, "t", "true"))
        await recorder.finished_with("t")


async def test_cancel_queued_and_running(tmp_path: Path) -> None:
    recorder = Recorder()
    async with local_executor(recorder, slots=1, python_workers=0) as executor:
        executor.submit(bash(tmp_path, "running", f"echo $$ > {tmp_path}/pid; sleep 1000"))
        executor.submit(bash(tmp_path, "queued", "true"))
        await recorder.until(lambda: len(recorder.started) == 1 and (tmp_path / "pid").exists())
        executor.cancel(TaskKey(1, "queued"))
        queued = await recorder.finished_with("queued")
        assert queued == TaskOutcome(TaskKey(1, "queued"), 1, success=False, error="cancelled")
        executor.cancel(TaskKey(1, "running"))
        running = await recorder.finished_with("running")
    assert not running.success and running.error is not None and running.error.startswith("cancelled")
    assert running.exit_code == -15
    assert [key.task_id for key, _, _ in recorder.started] == ["running"]


async def test_drain_lets_quick_tasks_finish_and_leaves_queued_ones_unreported(tmp_path: Path) -> None:
    recorder = Recorder()
    async with local_executor(recorder, slots=1, python_workers=0) as executor:
        executor.submit(bash(tmp_path, "quick", "sleep 0.1; echo done"))
        executor.submit(bash(tmp_path, "queued", "true"))
        await recorder.until(lambda: len(recorder.started) == 1)
        await executor.drain(5.0)
        executor.submit(bash(tmp_path, "late", "true"))
    assert [o.key.task_id for o in recorder.finished] == ["quick"]
    assert recorder.outcome("quick").success


async def test_drain_kills_tasks_that_outlive_the_grace(tmp_path: Path, dag_file: str) -> None:
    recorder = Recorder()
    async with local_executor(recorder, slots=2, python_workers=1, kill_grace=0.5) as executor:
        executor.submit(bash(tmp_path, "slow", "sleep 1000"))
        executor.submit(python(tmp_path, dag_file, "sleeps"))
        await recorder.until(lambda: len(recorder.started) == 2)
        with anyio.fail_after(30):  # a hang, not a speed limit: the tasks sleep for 1000 s
            await executor.drain(0.2)
        assert executor.running_count() == 0
    assert {o.key.task_id: o.error for o in recorder.finished} == {
        "slow": SHUTDOWN_ERROR,
        "sleeps": SHUTDOWN_ERROR,
    }


async def test_each_try_logs_to_its_own_file(tmp_path: Path) -> None:
    recorder = Recorder()
    async with local_executor(recorder, python_workers=0) as executor:
        executor.submit(bash(tmp_path, "t", "echo first try; exit 1", try_number=1))
        await recorder.until(lambda: len(recorder.finished) == 1)
        executor.submit(bash(tmp_path, "t", "echo second try", try_number=2))
        await recorder.until(lambda: len(recorder.finished) == 2)
    first = (tmp_path / "logs" / "t" / "attempt=1.log").read_text()
    second = (tmp_path / "logs" / "t" / "attempt=2.log").read_text()
    assert "first try" in first and "second try" not in first and "exit code 1" in first
    assert "second try" in second and "first try" not in second and "try 2 of d/r/t" in second


# --- python ----------------------------------------------------------------------------------------


async def test_python_return_value_is_the_xcom_and_output_is_logged(tmp_path: Path, dag_file: str) -> None:
    recorder = Recorder()
    async with local_executor(recorder) as executor:
        executor.submit(python(tmp_path, dag_file, "returns_value", args=[40], kwargs={"y": 2}))
        outcome = await recorder.finished_with("returns_value")
    assert outcome.success and outcome.xcom_value == {"sum": 42}
    assert recorder.started[0][2].startswith("worker:")
    log = (tmp_path / "logs" / "returns_value" / "attempt=1.log").read_text()
    assert "hello from python" in log and "from-subprocess" in log
    assert log.splitlines()[-1].endswith("success")


async def test_python_none_is_a_value_and_do_xcom_push_false_is_no_xcom(
    tmp_path: Path, dag_file: str
) -> None:
    recorder = Recorder()
    async with local_executor(recorder) as executor:
        executor.submit(python(tmp_path, dag_file, "returns_none"))
        executor.submit(python(tmp_path, dag_file, "returns_value", task_id="no_push", do_xcom_push=False))
        none = await recorder.finished_with("returns_none")
        no_push = await recorder.finished_with("no_push")
    assert none.success and none.xcom_value is None
    assert no_push.success and no_push.xcom_value is NO_XCOM


async def test_python_exception_fails_the_try_and_the_worker_survives(tmp_path: Path, dag_file: str) -> None:
    recorder = Recorder()
    async with local_executor(recorder) as executor:
        executor.submit(python(tmp_path, dag_file, "raises"))
        outcome = await recorder.finished_with("raises")
        executor.submit(python(tmp_path, dag_file, "pid"))
        after = await recorder.finished_with("pid")
    assert not outcome.success and outcome.error == "ValueError: boom in task"
    log = (tmp_path / "logs" / "raises" / "attempt=1.log").read_text()
    assert "Traceback (most recent call last)" in log and 'raise ValueError("boom in task")' in log
    assert after.success and f"worker:{after.xcom_value}" == recorder.started[0][2]


async def test_python_unserialisable_return_value_fails(tmp_path: Path, dag_file: str) -> None:
    recorder = Recorder()
    async with local_executor(recorder) as executor:
        executor.submit(python(tmp_path, dag_file, "not_json"))
        outcome = await recorder.finished_with("not_json")
    assert not outcome.success
    assert outcome.error is not None
    assert outcome.error.startswith("return value of not_json is not JSON serialisable: ")


async def test_python_worker_crash_fails_the_task_and_is_replaced(tmp_path: Path, dag_file: str) -> None:
    recorder = Recorder()
    async with local_executor(recorder) as executor:
        executor.submit(python(tmp_path, dag_file, "crashes"))
        outcome = await recorder.finished_with("crashes")
        executor.submit(python(tmp_path, dag_file, "pid"))
        after = await recorder.finished_with("pid")
    assert outcome == TaskOutcome(
        TaskKey(1, "crashes"),
        1,
        success=False,
        exit_code=7,
        error="python worker exited with code 7 while running the task",
    )
    crashed_pid = int(recorder.started[0][2].removeprefix("worker:"))
    assert after.success and after.xcom_value != crashed_pid


async def test_python_timeout_kills_and_replaces_the_worker(tmp_path: Path, dag_file: str) -> None:
    recorder = Recorder()
    async with local_executor(recorder) as executor:
        executor.submit(python(tmp_path, dag_file, "sleeps", timeout=0.3))
        outcome = await recorder.finished_with("sleeps")
        executor.submit(python(tmp_path, dag_file, "pid"))
        after = await recorder.finished_with("pid")
        await recorder.until(lambda: gone(int(recorder.started[0][2].removeprefix("worker:"))))
    assert outcome.timed_out and not outcome.success
    assert outcome.error == "timed out after 0.3 s: the python worker was killed and replaced"
    assert after.success


async def test_cancel_running_python_task_replaces_the_worker(tmp_path: Path, dag_file: str) -> None:
    recorder = Recorder()
    async with local_executor(recorder) as executor:
        executor.submit(python(tmp_path, dag_file, "sleeps"))
        await recorder.until(lambda: len(recorder.started) == 1)
        executor.cancel(TaskKey(1, "sleeps"))
        outcome = await recorder.finished_with("sleeps")
        executor.submit(python(tmp_path, dag_file, "pid"))
        after = await recorder.finished_with("pid")
    assert not outcome.success and outcome.error is not None and outcome.error.startswith("cancelled")
    assert after.success


async def test_python_context_is_injected_by_parameter_name(tmp_path: Path, dag_file: str) -> None:
    context = {"ds": "2024-01-02", "run_id": "r", "params": {"p": 1}, "conf": {"c": 2}, "ts": "t"}
    recorder = Recorder()
    async with local_executor(recorder) as executor:
        executor.submit(python(tmp_path, dag_file, "wants_context", context=context))
        executor.submit(
            python(tmp_path, dag_file, "wants_kwargs", args=[5], context={**context, "a": "ignored"})
        )
        named = await recorder.finished_with("wants_context")
        catch_all = await recorder.finished_with("wants_kwargs")
    assert named.xcom_value == {"ds": "2024-01-02", "run_id": "r", "params": {"p": 1}, "conf": {"c": 2}}
    assert catch_all.xcom_value == {"a": 5, "keys": ["conf", "ds", "params", "run_id", "ts"]}


async def test_python_task_env_is_visible_and_then_removed(tmp_path: Path, dag_file: str) -> None:
    recorder = Recorder()
    async with local_executor(recorder) as executor:
        executor.submit(python(tmp_path, dag_file, "reads_env", task_id="with", env={"TASK_VAR": "set"}))
        with_env = await recorder.finished_with("with")
        executor.submit(python(tmp_path, dag_file, "reads_env", task_id="without"))
        without_env = await recorder.finished_with("without")
    assert with_env.xcom_value == "set"
    assert without_env.xcom_value is None


async def test_python_task_of_unknown_function_fails_with_loader_message(
    tmp_path: Path, dag_file: str
) -> None:
    recorder = Recorder()
    async with local_executor(recorder) as executor:
        executor.submit(python(tmp_path, dag_file, "missing"))
        outcome = await recorder.finished_with("missing")
    assert not outcome.success and outcome.error is not None and "has no task 'missing'" in outcome.error


async def test_python_tasks_fail_without_workers(tmp_path: Path, dag_file: str) -> None:
    recorder = Recorder()
    async with local_executor(recorder, python_workers=0) as executor:
        executor.submit(python(tmp_path, dag_file, "pid"))
        outcome = await recorder.finished_with("pid")
    assert not outcome.success and outcome.error is not None and "python_workers" in outcome.error


async def test_python_tasks_share_slots_with_bash(tmp_path: Path, dag_file: str) -> None:
    recorder = Recorder()
    async with local_executor(recorder, slots=2, python_workers=2) as executor:
        executor.submit(python(tmp_path, dag_file, "sleeps", timeout=0.5))
        executor.submit(bash(tmp_path, "b1", "sleep 0.3"))
        executor.submit(bash(tmp_path, "b2", "true"))
        await recorder.until(lambda: len(recorder.finished) == 3)
    assert max(recorder.running_at_start) == 2
    assert [o.key.task_id for o in recorder.finished] == ["b1", "b2", "sleeps"]


def test_no_worker_process_is_left_behind() -> None:
    # runs last in this module: every executor above was closed, so no worker may remain
    children = [
        p
        for p in os.listdir("/proc")
        if p.isdigit() and _parent(int(p)) == os.getpid() and _is_worker_or_unreaped(int(p))
    ]
    assert [
        (p, Path(f"/proc/{p}/cmdline").read_bytes(), Path(f"/proc/{p}/stat").read_text()) for p in children
    ] == []


def _is_worker_or_unreaped(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return b"executors.pyworker" in cmdline or stat.rsplit(")", 1)[1].split()[0] == "Z"


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return -1
    return int(stat.rsplit(")", 1)[1].split()[1])


# --- logs: the cap, following, logs that cannot be written -----------------------------------------


async def test_a_python_log_past_the_cap_is_cut_to_its_head_a_marker_and_its_tail(
    tmp_path: Path, dag_file: str
) -> None:
    recorder = Recorder()
    async with local_executor(recorder, log_files=LogFiles(64 * 1024)) as executor:
        executor.submit(python(tmp_path, dag_file, "loud"))
        outcome = await recorder.finished_with("loud")
    assert outcome.success and outcome.xcom_value == "done"
    log = (tmp_path / "logs" / "loud" / "attempt=1.log").read_text()
    assert cap_shape(log, 64 * 1024)
    assert "started: python loud" in log.splitlines()[0]
    assert "\n1\n2\n3\n" in log and "\n100000\n" not in log
    assert "bytes were dropped here; the last 32768 bytes follow\n" in log
    assert "\n199999\n200000\nthe-last-line\n" in log
    assert log.splitlines()[-1].endswith("success")


def cap_shape(log: str, cap: int) -> bool:
    return cap < len(log) < cap + 1024 and log.count("reached logs.max_bytes_per_try") == 1


async def test_following_a_python_try_sees_the_output_its_worker_writes(
    tmp_path: Path, dag_file: str
) -> None:
    logs = LogFiles()
    gate = tmp_path / "gate"
    request = python(tmp_path, dag_file, "waits_for_gate", args=[str(gate)])
    recorder = Recorder()
    received = bytearray()
    first_seen = asyncio.Event()

    async def follow() -> None:
        async for chunk in logs.follow(request.log_path):
            received.extend(chunk)
            if b"first\n" in received:
                first_seen.set()

    async with local_executor(recorder, log_files=logs) as executor:
        executor.submit(request)
        await recorder.until(lambda: bool(recorder.started))
        follower = asyncio.ensure_future(follow())
        # the worker writes the file itself: inotify, not the daemon, tells the follower
        await asyncio.wait_for(first_seen.wait(), 10)
        assert not follower.done() and b"second" not in received
        gate.touch()
        outcome = await recorder.finished_with("waits_for_gate")
        await asyncio.wait_for(follower, 10)
    assert outcome.success
    assert bytes(received) == request.log_path.read_bytes()
    assert received.endswith(b"success\n") and b"first\nsecond\n" in received


@pytest.mark.parametrize("kind", ["bash", "python"])
async def test_a_log_that_cannot_be_opened_fails_the_try_with_the_reason(
    tmp_path: Path, dag_file: str, kind: str
) -> None:
    recorder = Recorder()
    too_long = tmp_path / "logs" / ("x" * 300 + ".log")
    async with local_executor(recorder) as executor:
        request = (
            bash(tmp_path, "t", "echo lost")
            if kind == "bash"
            else python(tmp_path, dag_file, "pid", task_id="t")
        )
        executor.submit(LaunchRequest(**{**_fields(request), "log_path": too_long}))
        outcome = await recorder.finished_with("t")
    assert not outcome.success
    assert outcome.error is not None
    assert "cannot write the task log" in outcome.error and "File name too long" in outcome.error
