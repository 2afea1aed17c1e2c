"""Warm Python workers: the frame protocol, start-up failures, replacement, context injection."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from executors.errors import PythonWorkerExited, PythonWorkerStartError
from executors.pyworker import call_arguments, encode_frame, frame_length
from executors.workers import PythonWorkerPool, start_worker, worker_environment

pytestmark = pytest.mark.anyio

DAG_FILE = """
from orchestrator import DAG, Python

def size(text):
    return len(text)

with DAG("w"):
    Python("size", size)
"""


async def wait_for(condition: Any, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, "condition not reached before the deadline"
        await asyncio.sleep(0.01)


async def test_worker_answers_in_its_own_session_and_exits_on_end_of_input() -> None:
    worker = await start_worker()
    reply = await worker.request({"op": "ping"})
    assert reply["ok"] and reply["pid"] == worker.pid
    assert os.getsid(worker.pid) == worker.pid
    worker.close_input()
    assert await asyncio.wait_for(worker.exited, 10) == 0


async def test_unknown_request_is_an_error_reply() -> None:
    worker = await start_worker()
    try:
        reply = await worker.request({"op": "dance"})
        assert reply == {"ok": False, "error": "unknown worker request 'dance'", "id": 1}
    finally:
        worker.kill_now()


async def test_frames_larger_than_a_pipe_buffer_go_both_ways(tmp_path: Path) -> None:
    dag_file = tmp_path / "w.py"
    dag_file.write_text(DAG_FILE)
    worker = await start_worker()
    try:
        text = "x" * 3_000_000
        reply = await worker.request(
            {
                "op": "run",
                "dag_file": str(dag_file),
                "dag_id": "w",
                "task_id": "size",
                "args": [text],
                "log_path": str(tmp_path / "log"),
            },
            timeout=30,
        )
        assert reply["ok"] and reply["value"] == 3_000_000
    finally:
        worker.kill_now()


async def test_request_timeout_kills_the_worker() -> None:
    worker = await start_worker(kill_grace=0.5)
    # a ping that never answers: stop the process so it cannot read the request
    os.kill(worker.pid, signal.SIGSTOP)
    with pytest.raises(PythonWorkerExited):
        await worker.request({"op": "ping"}, timeout=0.2)
    assert worker.stop_reason == "timed_out"
    assert worker.exit_code == -signal.SIGKILL


@pytest.mark.parametrize(
    ("executable", "message"),
    [
        ("/no/such/python", "cannot start the python worker '/no/such/python'"),
        ("/bin/false", "exited with code 1 during start-up"),
    ],
)
async def test_worker_that_cannot_start_is_a_start_error(executable: str, message: str) -> None:
    with pytest.raises(PythonWorkerStartError, match=message):
        await start_worker(executable)


async def test_pool_replaces_a_worker_that_dies_while_idle() -> None:
    idle_calls = []
    pool = PythonWorkerPool(2, on_idle=lambda: idle_calls.append(1))
    await pool.start()
    try:
        (first, second) = pool.workers()
        os.kill(first.pid, signal.SIGKILL)
        await wait_for(lambda: pool.idle_count() == 2 and first not in pool.workers())
        assert idle_calls == [1]
        assert second in pool.workers()
        worker = pool.acquire()
        assert worker is not None and (await worker.request({"op": "ping"}))["ok"]
        pool.release(worker)
        assert pool.idle_count() == 2
    finally:
        await pool.close()
    assert all(not w.alive for w in (first, second))


async def test_pool_start_fails_when_no_worker_can_start() -> None:
    pool = PythonWorkerPool(2, python_executable="/bin/false")
    with pytest.raises(PythonWorkerStartError):
        await pool.start()
    await pool.close()


def test_pyworker_refuses_to_run_by_hand() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "executors.pyworker"],
        env=worker_environment(None),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "started by the orchestrator daemon" in done.stderr


def test_frame_round_trip_and_oversized_length() -> None:
    frame = encode_frame({"a": [1, "b"]})
    assert frame_length(frame[:4]) == len(frame) - 4
    with pytest.raises(ValueError, match="out of sync"):
        frame_length(b"\xff\xff\xff\xff")


def _named(ds: str, run_id: str, params: dict[str, Any] | None = None) -> None: ...
def _catch_all(a: int, **kwargs: Any) -> None: ...
def _keyword_only(*, ds: str, **kwargs: Any) -> None: ...
def _plain(x: int) -> None: ...


CONTEXT = {"ds": "2024-01-01", "run_id": "r1", "params": {"p": 1}, "ts": "T"}


@pytest.mark.parametrize(
    ("func", "args", "kwargs", "expected"),
    [
        (_named, [], {}, {"ds": "2024-01-01", "run_id": "r1", "params": {"p": 1}}),
        (_named, ["given"], {}, {"run_id": "r1", "params": {"p": 1}}),
        (_named, [], {"params": {"mine": 2}}, {"params": {"mine": 2}, "ds": "2024-01-01", "run_id": "r1"}),
        (_catch_all, [1], {}, {"ds": "2024-01-01", "run_id": "r1", "params": {"p": 1}, "ts": "T"}),
        (
            _catch_all,
            [],
            {"a": 1, "ts": "mine"},
            {"a": 1, "ts": "mine", "ds": "2024-01-01", "run_id": "r1", "params": {"p": 1}},
        ),
        (_keyword_only, [], {}, {"ds": "2024-01-01", "run_id": "r1", "params": {"p": 1}, "ts": "T"}),
        (_plain, [1], {}, {}),
        (len, [[1]], {}, {}),
    ],
)
def test_context_injection(
    func: Any, args: list[Any], kwargs: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert call_arguments(func, args, kwargs, CONTEXT) == expected
