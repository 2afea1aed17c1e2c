"""[webhooks.<name>] tables and [webhook_log]: parsed, checked, every mistake naming its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import WebhookConfig, load_config, webhook_secrets
from orchestrator.errors import ConfigError

GITHUB = """
[webhooks.github-push]
dag_id = "build"
auth = "github"
secret_env = "GITHUB_WEBHOOK_SECRET"
delivery_id_header = "X-GitHub-Delivery"
conf = { ref = "ref", repo = "repository.full_name" }
filter = { "headers.X-GitHub-Event" = ["push"], "ref" = ["refs/heads/main"] }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_a_github_webhook(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GITHUB), {})
    assert config.webhooks == {
        "github-push": WebhookConfig(
            name="github-push",
            auth="github",
            dag_id="build",
            secret_env=("GITHUB_WEBHOOK_SECRET",),
            delivery_id_header="X-GitHub-Delivery",
            conf={"ref": "ref", "repo": "repository.full_name"},
            filter={"headers.X-GitHub-Event": ("push",), "ref": ("refs/heads/main",)},
        )
    }
    assert config.webhooks["github-push"].max_body_bytes == 1024 * 1024
    assert config.webhook_log.retention_days == 30


def test_defaults_have_no_webhooks(tmp_path: Path) -> None:
    assert load_config(None, {}, cwd=tmp_path).webhooks == {}


def test_every_key_of_an_hmac_webhook(tmp_path: Path) -> None:
    text = """
[webhook_log]
retention_days = 7.5

[webhooks.ci]
asset_uri = "s3://bucket/orders"
auth = "hmac"
secret_env = ["NEW_SECRET", "OLD_SECRET"]
header = "X-Signature"
prefix = ""
algorithm = "sha512"
dedup_window = 60
max_body_bytes = 4096

[webhooks.open]
dag_id = "d"
auth = "none"
allow_unauthenticated = true
"""
    config = load_config(write(tmp_path, text), {})
    ci = config.webhooks["ci"]
    assert (ci.asset_uri, ci.dag_id, ci.secret_env) == (
        "s3://bucket/orders",
        None,
        ("NEW_SECRET", "OLD_SECRET"),
    )
    assert (ci.header, ci.prefix, ci.algorithm, ci.dedup_window, ci.max_body_bytes) == (
        "X-Signature",
        "",
        "sha512",
        60.0,
        4096,
    )
    assert config.webhooks["open"].allow_unauthenticated is True
    assert config.webhook_log.retention_days == 7.5


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            'dag_id = "d"\nauth = "github"\nsecret_env = "S"\nsecrets_env = "S"',
            "'webhooks.w.secrets_env'.*did you mean 'secret_env'",
        ),
        (
            'dag_id = "d"\nauth = "github"\nsecret_env = "S"\ncolour = 1',
            "unknown key 'webhooks.w.colour'.*valid keys are dag_id",
        ),
        ('dag_id = "d"\nsecret_env = "S"', r"\[webhooks.w\] in .* needs auth"),
        (
            'dag_id = "d"\nauth = "oauth"\nsecret_env = "S"',
            "webhooks.w.auth in .* is 'oauth': use one of github, hmac",
        ),
        ('auth = "github"\nsecret_env = "S"', "exactly one of dag_id .* and asset_uri"),
        ('dag_id = "d"\nasset_uri = "a"\nauth = "github"\nsecret_env = "S"', "exactly one of dag_id"),
        ('dag_id = "d"\nauth = "none"', 'auth in .* is "none": anyone .* allow_unauthenticated = true'),
        (
            'dag_id = "d"\nauth = "none"\nallow_unauthenticated = "yes"',
            "allow_unauthenticated in .* must be a boolean",
        ),
        ('dag_id = "d"\nauth = "github"', "needs secret_env"),
        (
            'dag_id = "d"\nauth = "github"\nsecret_env = 1',
            "secret_env in .* must be a string or a list of strings",
        ),
        ('dag_id = "d"\nauth = "github"\nsecret_env = []', "secret_env in .* must be a string or a list"),
        (
            'dag_id = "d"\nauth = "github"\nsecret_env = "S"\nheader = "X"',
            'header in .* applies to auth = "hmac" only',
        ),
        (
            'dag_id = "d"\nauth = "hmac"\nsecret_env = "S"\nalgorithm = "md5"',
            "algorithm in .* is 'md5': use one of sha256",
        ),
        ('dag_id = "d"\nauth = "github"\nsecret_env = "S"\ndedup_window = 0', "dedup_window in .* above 0"),
        (
            'dag_id = "d"\nauth = "github"\nsecret_env = "S"\ndedup_window = "1h"',
            "dedup_window in .* must be a number",
        ),
        (
            'dag_id = "d"\nauth = "github"\nsecret_env = "S"\nmax_body_bytes = 0',
            "max_body_bytes in .* at least 1",
        ),
        (
            'dag_id = "d"\nauth = "github"\nsecret_env = "S"\nmax_body_bytes = 1.5',
            "max_body_bytes in .* must be an integer",
        ),
        (
            'dag_id = "d"\nauth = "github"\nsecret_env = "S"\nconf = { a = 1 }',
            "conf in .* must be a table of strings",
        ),
        (
            'dag_id = "d"\nauth = "github"\nsecret_env = "S"\nconf = { a = "x..y" }',
            "'x..y' is not a dotted path",
        ),
        (
            'dag_id = "d"\nauth = "github"\nsecret_env = "S"\nfilter = { ref = "main" }',
            "filter in .* must be a table of lists",
        ),
        ('dag_id = 3\nauth = "github"\nsecret_env = "S"', "webhooks.w.dag_id in .* must be a string, got 3"),
    ],
)
def test_mistakes_name_the_key(tmp_path: Path, table: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, f"[webhooks.w]\n{table}\n"), {})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("webhooks = 1\n", "webhooks in .* must be tables"),
        ('[webhooks."a b"]\ndag_id = "d"\n', "a webhook's name is part of its URL"),
        ("[webhooks]\nw = 1\n", "webhooks.w in .* must be a table"),
        ("[webhook_log]\nretention_days = 0\n", "webhook_log.retention_days in .* above 0"),
        ("[webhook_logs]\nretention_days = 1\n", "did you mean 'webhook_log'"),
    ],
)
def test_table_mistakes(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), {})


def test_retention_from_the_environment(tmp_path: Path) -> None:
    config = load_config(None, {"ORCHESTRATOR_WEBHOOK_LOG__RETENTION_DAYS": "2"}, cwd=tmp_path)
    assert config.webhook_log.retention_days == 2.0


def test_secrets_are_read_from_the_environment_in_order(tmp_path: Path) -> None:
    text = '[webhooks.w]\ndag_id = "d"\nauth = "token"\nsecret_env = ["NEW", "OLD"]\n'
    config = load_config(write(tmp_path, text), {})
    assert webhook_secrets(config.webhooks, {"NEW": "n", "OLD": "o"}) == {"w": (b"n", b"o")}


@pytest.mark.parametrize(
    ("environ", "state"), [({"NEW": "n"}, "not set"), ({"NEW": "n", "OLD": ""}, "empty")]
)
def test_a_missing_secret_names_the_key_and_the_variable_never_a_value(
    tmp_path: Path, environ: dict[str, str], state: str
) -> None:
    text = '[webhooks.w]\ndag_id = "d"\nauth = "token"\nsecret_env = ["NEW", "OLD"]\n'
    config = load_config(write(tmp_path, text), {})
    with pytest.raises(ConfigError, match=f"webhooks.w.secret_env names OLD, which is {state}") as caught:
        webhook_secrets(config.webhooks, environ)
    assert "'n'" not in str(caught.value)


def test_loading_the_config_needs_no_secret(tmp_path: Path) -> None:
    """The CLI reads the same file to find the API; only the daemon reads the secrets."""
    assert "github-push" in load_config(write(tmp_path, GITHUB), {}).webhooks


def test_config_toml_and_the_readme_document_every_webhook_key() -> None:
    """The shipped config.toml shows every webhook key in its commented example (a real table would
    need its secret to start); the README's table has a `webhooks.<name>.KEY` row for each."""
    from orchestrator.config import WEBHOOK_KEYS

    root = Path(__file__).resolve().parents[2]
    shipped = (root / "config.toml").read_text()
    readme = (root / "README.md").read_text()
    for key in WEBHOOK_KEYS:
        assert f"# {key} = " in shipped or f"# # {key} = " in shipped, f"config.toml does not show {key}"
    undocumented = [
        key
        for key in WEBHOOK_KEYS
        if f"`webhooks.<name>.{key}`" not in readme and f" / `{key}`" not in readme
    ]
    assert undocumented == [], f"webhook keys missing from the README's configuration table: {undocumented}"
