"""End to end: the daemon's API credentials as a user meets them.

- With no api.tokens, `orchestrator run` on a non-loopback host refuses to start and says why.
- With none on loopback, it generates an admin token into the state dir, logs where, and the CLI
  on the same machine uses it (scripts/run's case).
- With a token in an environment variable, it listens on 0.0.0.0, the token works for the CLI and
  curl-like clients, and no task sees the variable.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.harness import Daemon
from tests.e2e.test_startup_errors import run_daemon

pytestmark = pytest.mark.e2e

CI_TOKEN = "e2e-ci-operator-token-0123456789"


def test_no_tokens_and_a_public_host_refuses_to_start(tmp_path: Path) -> None:
    result = run_daemon(tmp_path, '[api]\nhost = "0.0.0.0"\nport = 0\n[daemon]\nstate_dir = "state"\n')
    assert result.returncode == 1
    assert "api.host is '0.0.0.0' but no api.tokens are configured" in result.stderr
    assert "Configure api.tokens (see README, Authentication) or listen on 127.0.0.1" in result.stderr
    assert not (tmp_path / "state" / "api-token").exists()


def test_the_generated_admin_token_is_what_the_cli_uses(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon()
    daemon.write_dag(
        "hello.py", 'from orchestrator import DAG, Bash\nwith DAG("hello"):\n    Bash("t", "true")\n'
    )
    daemon.start()
    token_file = daemon.state_dir / "api-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert f"the API takes the admin token in {token_file}" in daemon.logs()
    assert daemon.token and daemon.token not in daemon.logs()
    daemon.wait_dag("hello")
    # the CLI finds the token through ./config.toml's state_dir, with nothing set
    assert "triggered hello run cli-1" in daemon.cli("trigger", "hello", "--run-id", "cli-1").stdout
    assert daemon.wait_run("hello", "cli-1")["state"] == "success"
    anonymous = Daemon(root=daemon.root, database_dsn=None, url=daemon.url)  # no token
    assert anonymous.get("/api/v1/dags").status == 401
    assert anonymous.get("/health").status == 200


LEAK = textwrap.dedent(
    """
    from orchestrator import DAG, Bash
    with DAG("leak"):
        Bash("t", 'echo "token seen: ${CI_API_TOKEN:-no} ${ORCHESTRATOR_TOKEN:-no}"')
    """
)


def test_a_token_from_the_environment_serves_beyond_loopback(make_daemon: Callable[..., Daemon]) -> None:
    daemon = make_daemon(
        extra_config='[[api.tokens]]\nname = "ci"\nrole = "operator"\ntoken_env = "CI_API_TOKEN"\n',
        env={"CI_API_TOKEN": CI_TOKEN, "ORCHESTRATOR_API__HOST": "0.0.0.0", "ORCHESTRATOR_TOKEN": CI_TOKEN},
        token=CI_TOKEN,
    )
    daemon.write_dag("leak.py", LEAK)
    daemon.start()
    assert not (daemon.state_dir / "api-token").exists()
    daemon.wait_dag("leak")
    daemon.trigger("leak", dag_run_id="r1")
    assert daemon.wait_run("leak", "r1")["state"] == "success", daemon.logs()
    assert "token seen: no no" in daemon.task_log("leak", "r1", "t", 1)

    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    cli = [sys.executable, "-m", "orchestrator", "runs", "leak", "--url", daemon.url]
    with_token = subprocess.run(
        cli,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=daemon.root,
        env={**env, "ORCHESTRATOR_TOKEN": CI_TOKEN},
    )
    assert with_token.returncode == 0 and "r1" in with_token.stdout, with_token.stderr
    without = subprocess.run(cli, capture_output=True, text=True, timeout=30, cwd=daemon.root, env=env)
    assert without.returncode == 1 and "needs a token and the CLI found none" in without.stderr
    # an operator may not delete what only an admin may
    response = daemon.request("POST", "/api/v1/backfills", {"dag_id": "leak"})
    assert response.status == 403 and "needs admin" in response.body["detail"]
