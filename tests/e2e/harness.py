"""A daemon under test: `orchestrator run` as a real process, driven through HTTP and the CLI.

Waiting is always on a condition with a deadline (the REST API is asked again until the
condition holds or the deadline passes), never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

T = TypeVar("T")

FINISHED_RUN_STATES = {"success", "failed"}

# the daemon is on loopback: a proxy from the environment must not sit in between
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait_for(condition: Callable[[], T | None], timeout: float, what: str, interval: float = 0.02) -> T:
    """Evaluate `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except (OSError, urllib.error.URLError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_error})")
        time.sleep(interval)  # pacing between checks of a condition, not synchronisation


@dataclass
class Response:
    status: int
    body: Any
    text: str


@dataclass
class Daemon:
    """One `orchestrator run` process with its own config, DAG folder and state directory."""

    root: Path
    database_dsn: str | None
    extra_config: str = ""
    slots: int = 8
    python_workers: int = 2
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    url: str = ""
    #: the API token requests send; "" (the default): the admin token the daemon generates into
    #: its state dir when no api.tokens are configured, read once it answers
    token: str = ""
    #: a replica's name: its config, state dir and output live in root/<replica>/, while the DAG
    #: folder root/dags is shared by every replica of `root` ("": a lone daemon, all in root)
    replica: str = ""

    @property
    def home(self) -> Path:
        """Where this daemon's own files live: root, or root/<replica>."""
        return self.root / self.replica if self.replica else self.root

    @property
    def dags_dir(self) -> Path:
        return self.root / "dags"

    @property
    def state_dir(self) -> Path:
        return self.home / "state"

    @property
    def config_path(self) -> Path:
        return self.home / "config.toml"

    @property
    def output_path(self) -> Path:
        return self.home / "daemon.log"

    def write_config(self) -> None:
        self.dags_dir.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        dsn_line = f'dsn = "{self.database_dsn}"' if self.database_dsn else ""
        # relative to the config file's directory
        dags_folder = "../dags" if self.replica else "dags"
        self.config_path.write_text(
            f"""
[daemon]
dags_folder = "{dags_folder}"
state_dir = "state"
shutdown_grace = 10

[database]
{dsn_line}

[api]
host = "127.0.0.1"
port = 0

[executors.local]
slots = {self.slots}
python_workers = {self.python_workers}
{self.extra_config}
"""
        )

    def write_dag(self, name: str, source: str) -> Path:
        """Write a DAG file atomically (a rename), as an editor or a deploy would."""
        self.dags_dir.mkdir(parents=True, exist_ok=True)
        path = self.dags_dir / name
        tmp = self.dags_dir / f".{name}.tmp"
        tmp.write_text(source)
        tmp.replace(path)
        return path

    def start(self, timeout: float = 60.0) -> Daemon:
        if not self.config_path.exists():
            self.write_config()
        url_file = self.state_dir / "api.url"
        url_file.unlink(missing_ok=True)
        output = self.output_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "run", "--config", str(self.config_path)],
            cwd=self.root,
            stdout=output,
            stderr=subprocess.STDOUT,
            # the tests' DAGs run when triggered: they start unpaused unless a test says otherwise
            env={**os.environ, "ORCHESTRATOR_DAGS__PAUSED_ON_CREATION": "false", **self.env},
        )
        output.close()

        def ready() -> bool:
            self._check_alive()
            if not url_file.exists():
                return False
            self.url = url_file.read_text().strip()
            return bool(self.url) and self.get("/health").status == 200

        wait_for(ready, timeout, "the daemon to answer /health")
        generated = self.state_dir / "api-token"
        if not self.token and generated.exists():
            self.token = generated.read_text().strip()
        return self

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(
                f"the daemon exited with {self.process.returncode}:\n{self.output_path.read_text()[-4000:]}"
            )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            self.process = None

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing gets a chance to clean up."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)
        self.process = None

    def logs(self) -> str:
        return self.output_path.read_text() if self.output_path.exists() else ""

    # --- HTTP ---------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, accept: str = "application/json") -> Response:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Accept", accept)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with _OPENER.open(req, timeout=10) as resp:
                return _response(resp.status, resp.read())
        except urllib.error.HTTPError as err:
            return _response(err.code, err.read())

    def get(self, path: str, accept: str = "application/json") -> Response:
        return self.request("GET", path, accept=accept)

    def post(self, path: str, body: Any) -> Response:
        return self.request("POST", path, body)

    # --- conveniences ---------------------------------------------------------------------

    def wait_dag(self, dag_id: str, timeout: float = 10.0) -> dict[str, Any]:
        def loaded() -> dict[str, Any] | None:
            self._check_alive()
            response = self.get(f"/api/v1/dags/{dag_id}")
            return response.body if response.status == 200 and response.body.get("is_active") else None

        return wait_for(loaded, timeout, f"DAG {dag_id} to be loaded")

    def trigger(self, dag_id: str, **body: Any) -> dict[str, Any]:
        response = self.post(f"/api/v1/dags/{dag_id}/dagRuns", body)
        assert response.status == 200, response.text
        return response.body

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        response = self.get(f"/api/v1/dags/{dag_id}/dagRuns/{run_id}")
        assert response.status == 200, response.text
        return response.body

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 30.0) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            self._check_alive()
            run = self.run(dag_id, run_id)
            return run if run["state"] in FINISHED_RUN_STATES else None

        return wait_for(finished, timeout, f"run {run_id} of {dag_id} to finish")

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        response = self.get(f"/api/v1/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        assert response.status == 200, response.text
        return {ti["task_id"]: ti for ti in response.body["task_instances"]}

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        response = self.get(
            f"/api/v1/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            accept="text/plain",
        )
        assert response.status == 200, response.text
        return response.text

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "orchestrator", *args, "--url", self.url],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=self.root,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"orchestrator {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result


def _response(status: int, raw: bytes) -> Response:
    text = raw.decode("utf-8", errors="replace")
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    return Response(status, body, text)


def db_fetch(dsn: str, query: str, *args: Any) -> list[dict[str, Any]]:
    """Rows of one query on `dsn`, on a connection of its own (for checks the API does not answer)."""

    async def fetch() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(dsn)
        try:
            return [dict(row) for row in await conn.fetch(query, *args)]
        finally:
            await conn.close()

    return asyncio.run(fetch())
