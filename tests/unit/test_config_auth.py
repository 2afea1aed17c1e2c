"""The API's credentials in the configuration (`[[api.tokens]]` and the [api] auth keys), and
what the daemon makes of them as it starts (orchestrator.daemon_auth)."""

from __future__ import annotations

import hashlib
import re
import stat
from pathlib import Path

import pytest

from orchestrator.api.roles import Role
from orchestrator.config import ApiToken, api_token_digests, load_config
from orchestrator.daemon_auth import build_authenticator, is_loopback
from orchestrator.errors import ConfigError

DIGEST = hashlib.sha256(b"dashboard-token-0123456789").hexdigest()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_tokens_are_read_as_a_list_of_tables(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
[api]
token_file = "cli.token"
access_token_ttl = 60
auth_failures_allowed = 5
[[api.tokens]]
name = "ci"
role = "operator"
token_env = "CI_API_TOKEN"
[[api.tokens]]
name = "dashboard"
role = "viewer"
token_sha256 = "{DIGEST.upper()}"
""",
    )
    config = load_config(path, {})
    assert config.api.tokens == (
        ApiToken(name="ci", role="operator", token_env="CI_API_TOKEN"),
        ApiToken(name="dashboard", role="viewer", token_sha256=DIGEST),
    )
    assert config.api.token_file == tmp_path / "cli.token"  # relative to the file
    assert config.api.access_token_ttl == 60 and config.api.auth_failures_allowed == 5


def test_defaults_have_no_tokens_and_a_throttle_of_twenty(tmp_path: Path) -> None:
    config = load_config(None, {}, cwd=tmp_path)
    assert config.api.tokens == ()
    assert config.api.token_file is None and config.api.secret_key_env is None
    assert (config.api.auth_failures_allowed, config.api.auth_failure_window) == (20, 300.0)


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ("[api]\ntokens = 3\n", "api.tokens in"),
        ('[[api.tokens]]\nrole = "admin"\ntoken_env = "X"\n', "has no name"),
        (
            '[[api.tokens]]\nname = "a"\nrole = "root"\ntoken_env = "X"\n',
            "role must be one of viewer, operator, admin",
        ),
        ('[[api.tokens]]\nname = "a"\nrole = "admin"\n', "give exactly one of token_env"),
        (
            f'[[api.tokens]]\nname = "a"\nrole = "admin"\ntoken_env = "X"\ntoken_sha256 = "{DIGEST}"\n',
            "give exactly one of token_env",
        ),
        ('[[api.tokens]]\nname = "a"\nrole = "admin"\ntoken_sha256 = "abc"\n', "64 hexadecimal digits"),
        ('[[api.tokens]]\nname = "a"\nrole = "admin"\ntoken = "plain"\n', "unknown key 'token'"),
        ('[[api.tokens]]\nname = ""\nrole = "admin"\ntoken_env = "X"\n', "name must be a non-empty string"),
        (
            '[[api.tokens]]\nname = "a"\nrole = "admin"\ntoken_env = "X"\n'
            '[[api.tokens]]\nname = "a"\nrole = "viewer"\ntoken_env = "Y"\n',
            "another token has this name",
        ),
        ("[api]\nauth_failures_allowed = 0\n", "api.auth_failures_allowed"),
        ("[api]\naccess_token_ttl = 0\n", "api.access_token_ttl"),
        ('[api]\nsecret_key_env = " "\n', "api.secret_key_env"),
    ],
)
def test_bad_token_tables_name_what_is_wrong(tmp_path: Path, tables: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write(tmp_path, tables), {})


def test_digests_come_from_the_environment_or_the_file() -> None:
    tokens = (
        ApiToken(name="ci", role="operator", token_env="CI_API_TOKEN"),
        ApiToken(name="dashboard", role="viewer", token_sha256=DIGEST),
    )
    digests = api_token_digests(tokens, {"CI_API_TOKEN": "a-long-ci-token-0123"})
    assert digests == {
        "ci": hashlib.sha256(b"a-long-ci-token-0123").digest(),
        "dashboard": bytes.fromhex(DIGEST),
    }
    with pytest.raises(ConfigError, match="CI_API_TOKEN is unset or empty"):
        api_token_digests(tokens, {})
    with pytest.raises(ConfigError, match="shorter than 16 characters") as refused:
        api_token_digests(tokens, {"CI_API_TOKEN": "short-secret"})
    assert "short-secret" not in str(refused.value)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("orchestrator.example.com", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_without_tokens_the_daemon_refuses_any_host_but_loopback(tmp_path: Path) -> None:
    config = load_config(None, {"ORCHESTRATOR_API__HOST": "0.0.0.0"}, cwd=tmp_path)
    with pytest.raises(
        ConfigError, match=re.escape("api.host is '0.0.0.0' but no api.tokens are configured")
    ):
        build_authenticator(config, tmp_path / "state", {})
    assert not (tmp_path / "state" / "api-token").exists()


def test_without_tokens_an_admin_token_is_generated_once_readable_by_its_owner_only(tmp_path: Path) -> None:
    config = load_config(None, {}, cwd=tmp_path)
    first = build_authenticator(config, tmp_path / "state", {})
    token_file = tmp_path / "state" / "api-token"
    token = token_file.read_text().strip()
    assert len(token) >= 32
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state" / "api-secret").stat().st_mode) == 0o600
    credential = first.match_token(token)
    assert credential is not None and credential.role is Role.ADMIN and credential.name == "local-admin"
    again = build_authenticator(config, tmp_path / "state", {})  # a restart keeps the token
    assert token_file.read_text().strip() == token and again.match_token(token) is not None
    # and its access tokens: the signing key is kept too
    assert again.principal(f"Bearer {first.issue_access_token(credential)}").name == "local-admin"


def test_configured_tokens_are_read_and_removed_from_the_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[api]\nhost = "0.0.0.0"\nsecret_key_env = "SIGNING_KEY"\n'
        '[[api.tokens]]\nname = "ci"\nrole = "operator"\ntoken_env = "CI_API_TOKEN"\n',
    )
    environ = {"CI_API_TOKEN": "a-long-ci-token-0123", "SIGNING_KEY": "s" * 32, "OTHER": "kept"}
    authenticator = build_authenticator(load_config(path, environ), tmp_path / "state", environ)
    assert environ == {"OTHER": "kept"}
    assert authenticator.principal("Bearer a-long-ci-token-0123").role is Role.OPERATOR
    assert not (tmp_path / "state" / "api-token").exists()  # no generated token beside configured ones


def test_a_short_signing_key_is_refused_without_showing_it(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[api]\nsecret_key_env = "SIGNING_KEY"\n'
        '[[api.tokens]]\nname = "ci"\nrole = "operator"\ntoken_sha256 = "' + DIGEST + '"\n',
    )
    with pytest.raises(ConfigError, match="SIGNING_KEY, which is unset or shorter than 32") as refused:
        build_authenticator(load_config(path, {}), tmp_path / "state", {"SIGNING_KEY": "too-short"})
    assert "too-short" not in str(refused.value)
