"""The configuration loader: files, environment overrides, and the exact errors a user sees."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from orchestrator.config import (
    KEYS,
    ApiConfig,
    Config,
    DaemonConfig,
    DatabaseConfig,
    ExecutorsConfig,
    LocalExecutorConfig,
    TemplatesConfig,
    XComConfig,
    load_config,
)
from orchestrator.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_builtin_defaults_when_no_file_exists(tmp_path: Path) -> None:
    config = load_config(None, {}, cwd=tmp_path)
    assert config == Config(
        daemon=DaemonConfig(dags_folder=tmp_path / "dags", state_dir=tmp_path / "state"),
        database=DatabaseConfig(dsn=None, pool_min_size=2, pool_max_size=10),
        api=ApiConfig(host="127.0.0.1", port=8080),
        executors=ExecutorsConfig(local=LocalExecutorConfig(slots=16, python_workers=2, kill_grace=5.0)),
        source="built-in defaults",
    )
    assert config.daemon.shutdown_grace == 30.0
    assert config.daemon.daemon_id is None


def test_config_toml_in_the_cwd_is_used_by_default(tmp_path: Path) -> None:
    write(tmp_path, "[api]\nport = 9999\n")
    config = load_config(None, {}, cwd=tmp_path)
    assert config.api.port == 9999
    assert config.source == str(tmp_path / "config.toml")


def test_repo_config_toml_is_valid_and_equals_the_defaults() -> None:
    from_file = load_config(REPO_ROOT / "config.toml", {})
    builtin = load_config(None, {}, cwd=REPO_ROOT / "does-not-matter")
    builtin = dataclasses.replace(
        builtin,
        daemon=dataclasses.replace(
            builtin.daemon, dags_folder=REPO_ROOT / "dags", state_dir=REPO_ROOT / "state"
        ),
    )
    assert dataclasses.replace(from_file, source="x") == dataclasses.replace(builtin, source="x")
    assert from_file.source == str(REPO_ROOT / "config.toml")


def test_repo_config_toml_documents_every_key() -> None:
    from orchestrator.config import KEYS

    text = (REPO_ROOT / "config.toml").read_text()
    for dotted in KEYS:
        assert dotted.rsplit(".", 1)[-1] in text, f"config.toml does not mention {dotted}"


def test_a_full_file_sets_every_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[daemon]
dags_folder = "/srv/dags"
state_dir = "var/state"
shutdown_grace = 5
daemon_id = "d1"

[database]
dsn = "postgresql://u@db/orch"
pool_min_size = 1
pool_max_size = 3

[api]
host = "0.0.0.0"
port = 0

[executors.local]
slots = 4
python_workers = 1
kill_grace = 0.5
""",
    )
    config = load_config(path, {}, cwd=Path("/"))
    assert config == Config(
        daemon=DaemonConfig(
            dags_folder=Path("/srv/dags"),
            state_dir=tmp_path / "var/state",
            shutdown_grace=5.0,
            daemon_id="d1",
        ),
        database=DatabaseConfig(dsn="postgresql://u@db/orch", pool_min_size=1, pool_max_size=3),
        api=ApiConfig(host="0.0.0.0", port=0),
        executors=ExecutorsConfig(local=LocalExecutorConfig(slots=4, python_workers=1, kill_grace=0.5)),
        source=str(path),
    )
    assert isinstance(config.daemon.shutdown_grace, float)


def test_relative_paths_are_relative_to_the_config_file_directory(tmp_path: Path) -> None:
    nested = tmp_path / "etc"
    nested.mkdir()
    path = nested / "orch.toml"
    path.write_text('[daemon]\ndags_folder = "my_dags"\n')
    config = load_config(path, {}, cwd=Path("/"))
    assert config.daemon.dags_folder == nested / "my_dags"
    assert config.daemon.state_dir == nested / "state"  # defaults follow the file too


def test_a_relative_config_path_is_relative_to_the_cwd(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "c.toml").write_text("[api]\nport = 1234\n")
    config = load_config(Path("conf/c.toml"), {}, cwd=tmp_path)
    assert config.api.port == 1234
    assert config.daemon.dags_folder == tmp_path / "conf" / "dags"


@pytest.mark.parametrize(
    ("name", "value", "attribute", "expected"),
    [
        ("ORCHESTRATOR_API__PORT", "9090", ("api", "port"), 9090),
        ("ORCHESTRATOR_API__HOST", "0.0.0.0", ("api", "host"), "0.0.0.0"),
        ("ORCHESTRATOR_DAEMON__SHUTDOWN_GRACE", "2.5", ("daemon", "shutdown_grace"), 2.5),
        ("ORCHESTRATOR_DAEMON__DAGS_FOLDER", "/abs/dags", ("daemon", "dags_folder"), Path("/abs/dags")),
        ("ORCHESTRATOR_DAEMON__DAEMON_ID", "replica-2", ("daemon", "daemon_id"), "replica-2"),
        ("ORCHESTRATOR_DATABASE__DSN", "postgresql://x@y/z", ("database", "dsn"), "postgresql://x@y/z"),
        ("ORCHESTRATOR_DATABASE__DSN", "", ("database", "dsn"), None),
        ("ORCHESTRATOR_DATABASE__POOL_MAX_SIZE", " 20 ", ("database", "pool_max_size"), 20),
        ("ORCHESTRATOR_EXECUTORS__LOCAL__SLOTS", "32", ("executors", "local", "slots"), 32),
        ("ORCHESTRATOR_EXECUTORS__LOCAL__KILL_GRACE", "1", ("executors", "local", "kill_grace"), 1.0),
    ],
)
def test_environment_overrides(
    tmp_path: Path, name: str, value: str, attribute: tuple[str, ...], expected: object
) -> None:
    config: object = load_config(None, {name: value}, cwd=tmp_path)
    for part in attribute:
        config = getattr(config, part)
    assert config == expected


def test_environment_wins_over_the_file_and_relative_env_paths_follow_the_cwd(tmp_path: Path) -> None:
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    path = conf_dir / "config.toml"
    path.write_text('[api]\nport = 1111\n[daemon]\nstate_dir = "st"\n')
    env = {"ORCHESTRATOR_API__PORT": "2222", "ORCHESTRATOR_DAEMON__STATE_DIR": "elsewhere"}
    config = load_config(path, env, cwd=tmp_path)
    assert config.api.port == 2222
    assert config.daemon.state_dir == tmp_path / "elsewhere"


@pytest.mark.parametrize(
    "environ",
    [
        {"ORCHESTRATOR_URL": "http://x:1"},
        {"ORCHESTRATOR_TEST_DSN": "postgresql://a"},
        {"ORCHESTRATOR_DAG_ID": "etl", "ORCHESTRATOR_TRY_NUMBER": "1"},  # set in every task's environment
        {"PATH": "/bin", "HOME": "/root"},
    ],
)
def test_variables_that_are_not_configuration_are_ignored(tmp_path: Path, environ: dict[str, str]) -> None:
    assert load_config(None, environ, cwd=tmp_path) == load_config(None, {}, cwd=tmp_path)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"ORCHESTRATOR_API__PORT": "abc"}, "ORCHESTRATOR_API__PORT='abc' is not an integer"),
        (
            {"ORCHESTRATOR_DAEMON__SHUTDOWN_GRACE": "soon"},
            "ORCHESTRATOR_DAEMON__SHUTDOWN_GRACE='soon' is not a number",
        ),
        (
            {"ORCHESTRATOR_API__PROT": "1"},
            "environment variable ORCHESTRATOR_API__PROT matches no configuration key: "
            "did you mean ORCHESTRATOR_API__PORT?",
        ),
        (
            {"ORCHESTRATOR_EXECUTORS__LOCAL__SLOT": "1"},
            "environment variable ORCHESTRATOR_EXECUTORS__LOCAL__SLOT matches no configuration key: "
            "did you mean ORCHESTRATOR_EXECUTORS__LOCAL__SLOTS?",
        ),
        (
            {"ORCHESTRATOR_API__PORT": "70000"},
            "ORCHESTRATOR_API__PORT must be between 0 and 65535 (0 picks a free port), got 70000",
        ),
        (
            {"ORCHESTRATOR_EXECUTORS__LOCAL__SLOTS": "0"},
            "ORCHESTRATOR_EXECUTORS__LOCAL__SLOTS must be at least 1, got 0",
        ),
        (
            {"ORCHESTRATOR_EXECUTORS__LOCAL__PYTHON_WORKERS": "0"},
            "ORCHESTRATOR_EXECUTORS__LOCAL__PYTHON_WORKERS must be at least 1, got 0",
        ),
        (
            {"ORCHESTRATOR_DAEMON__SHUTDOWN_GRACE": "-1"},
            "ORCHESTRATOR_DAEMON__SHUTDOWN_GRACE must be at least 0, got -1",
        ),
    ],
)
def test_bad_environment_values_name_the_variable(
    tmp_path: Path, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ, cwd=tmp_path)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[api]\nport = "abc"\n', "api.port in {path} must be an integer, got 'abc'"),
        ("[api]\nport = 1.5\n", "api.port in {path} must be an integer, got 1.5"),
        ("[api]\nport = true\n", "api.port in {path} must be an integer, got true"),
        ("[api]\nhost = 1\n", "api.host in {path} must be a string, got 1"),
        ('[daemon]\nshutdown_grace = "1"\n', "daemon.shutdown_grace in {path} must be a number, got '1'"),
        ("[daemon]\ndags_folder = 3\n", "daemon.dags_folder in {path} must be a path (a string), got 3"),
        ("[api]\nprot = 1\n", "unknown key 'api.prot' in {path}: did you mean 'api.port'?"),
        (
            "[executors.local]\nslot = 1\n",
            "unknown key 'executors.local.slot' in {path}: did you mean 'executors.local.slots'?",
        ),
        ("[apii]\nport = 1\n", "unknown key 'apii' in {path}: did you mean 'api'?"),
        ("api = 3\n", "api in {path} must be a table ([api]), got 3: put its keys under a [api] header"),
        (
            "[api]\nport = 65536\n",
            "api.port in {path} must be between 0 and 65535 (0 picks a free port), got 65536",
        ),
        (
            "[api]\nport = -1\n",
            "api.port in {path} must be between 0 and 65535 (0 picks a free port), got -1",
        ),
        ("[executors.local]\nslots = 0\n", "executors.local.slots in {path} must be at least 1, got 0"),
        (
            "[executors.local]\nkill_grace = -0.5\n",
            "executors.local.kill_grace in {path} must be at least 0, got -0.5",
        ),
        (
            "[database]\npool_min_size = 5\npool_max_size = 2\n",
            "database.pool_min_size in {path} (5) must not exceed database.pool_max_size in {path} (2)",
        ),
        (
            '[daemon]\ndaemon_id = ""\n',
            "daemon.daemon_id in {path} must not be empty: leave it out for <hostname>-<pid>",
        ),
        (
            '[daemon]\nadvertise_url = "10.0.0.5:8080"\n',
            "daemon.advertise_url in {path} must be an http:// or https:// URL other replicas can reach, "
            "got '10.0.0.5:8080': leave it out to use the address the API listens on",
        ),
    ],
)
def test_bad_files_name_the_key_and_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value) == message.format(path=path)


def test_a_toml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[api]\nport = 8080\nhost = "unterminated\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    message = str(info.value)
    assert message.startswith(f"{path} is not valid TOML: ")
    assert "line 3" in message


def test_a_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope\.toml does not exist"):
        load_config(tmp_path / "nope.toml", {})


def test_an_unknown_key_far_from_any_lists_the_valid_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "[api]\nzzzzzzzz = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert "valid keys are" in str(info.value)
    assert "api.port" in str(info.value)


FLOAT_KEYS = sorted(name for name, key in KEYS.items() if key.kind is float)


def _toml_for(dotted: str, value: str) -> str:
    table, _, name = dotted.rpartition(".")
    return f"[{table}]\n{name} = {value}\n"


def test_the_float_keys_include_the_graces_and_timeouts() -> None:
    assert {"daemon.shutdown_grace", "executors.local.kill_grace", "database.connect_timeout"} <= set(
        FLOAT_KEYS
    )


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "+nan"])
@pytest.mark.parametrize("dotted", FLOAT_KEYS)
def test_non_finite_numbers_in_the_file_are_refused_naming_the_key(
    tmp_path: Path, dotted: str, value: str
) -> None:
    path = write(tmp_path, _toml_for(dotted, value))
    with pytest.raises(ConfigError) as info:
        load_config(path, {}, cwd=tmp_path)
    assert str(info.value).startswith(f"{dotted} in {path} must be a finite number, got ")


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity", " NaN "])
@pytest.mark.parametrize("dotted", FLOAT_KEYS)
def test_non_finite_numbers_in_the_environment_are_refused_naming_the_variable(
    tmp_path: Path, dotted: str, value: str
) -> None:
    name = KEYS[dotted].env_name
    with pytest.raises(ConfigError) as info:
        load_config(None, {name: value}, cwd=tmp_path)
    assert str(info.value).startswith(f"{name}={value!r} must be a finite number")


def test_the_log_level_is_a_key_with_an_environment_override(tmp_path: Path) -> None:
    assert load_config(None, {}, cwd=tmp_path).daemon.log_level == "INFO"
    path = write(tmp_path, '[daemon]\nlog_level = "debug"\n')
    assert load_config(path, {}, cwd=tmp_path).daemon.log_level == "debug"
    overridden = load_config(path, {"ORCHESTRATOR_DAEMON__LOG_LEVEL": "WARNING"}, cwd=tmp_path)
    assert overridden.daemon.log_level == "WARNING"


def test_orchestrator_log_level_is_a_deprecated_alias_the_new_name_wins_over(tmp_path: Path) -> None:
    assert load_config(None, {"ORCHESTRATOR_LOG_LEVEL": "ERROR"}, cwd=tmp_path).daemon.log_level == "ERROR"
    both = {"ORCHESTRATOR_LOG_LEVEL": "ERROR", "ORCHESTRATOR_DAEMON__LOG_LEVEL": "DEBUG"}
    assert load_config(None, both, cwd=tmp_path).daemon.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"ORCHESTRATOR_DAEMON__LOG_LEVEL": "LOUD"},
            "ORCHESTRATOR_DAEMON__LOG_LEVEL is 'LOUD', which is not a log level; "
            "use one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
        ),
        (
            {"ORCHESTRATOR_LOG_LEVEL": "LOUD"},
            "ORCHESTRATOR_LOG_LEVEL is 'LOUD', which is not a log level; "
            "use one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
        ),
        (
            {"ORCHESTRATOR_DATABASE__CONNECT_TIMEOUT": "0"},
            "ORCHESTRATOR_DATABASE__CONNECT_TIMEOUT must be at least 0.1, got 0",
        ),
        (
            {"ORCHESTRATOR_TEMPLATES__MAX_OUTPUT_BYTES": "10"},
            "ORCHESTRATOR_TEMPLATES__MAX_OUTPUT_BYTES must be at least 1024, got 10",
        ),
        (
            {"ORCHESTRATOR_TEMPLATES__RENDER_TIMEOUT": "0"},
            "ORCHESTRATOR_TEMPLATES__RENDER_TIMEOUT must be at least 0.01, got 0",
        ),
        (
            {"ORCHESTRATOR_XCOM__MAX_BYTES": "-1"},
            "ORCHESTRATOR_XCOM__MAX_BYTES must be at least 1024, got -1",
        ),
    ],
)
def test_bad_limits_and_log_levels_name_the_variable(
    tmp_path: Path, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ, cwd=tmp_path)
    assert str(info.value) == message


def test_the_limits_have_their_documented_defaults(tmp_path: Path) -> None:
    config = load_config(None, {}, cwd=tmp_path)
    assert config.database.connect_timeout == 10.0
    assert config.templates == TemplatesConfig(max_output_bytes=1_000_000, render_timeout=2.0)
    assert config.xcom == XComConfig(max_bytes=1_000_000)


def test_the_shipped_config_toml_and_the_readme_document_every_key() -> None:
    import tomllib

    from orchestrator.config import KEYS

    with open(REPO_ROOT / "config.toml", "rb") as source:
        shipped = tomllib.load(source)

    def written(data: dict[str, object], prefix: str = "") -> set[str]:
        keys: set[str] = set()
        for name, value in data.items():
            dotted = f"{prefix}{name}"
            keys |= written(value, dotted + ".") if isinstance(value, dict) else {dotted}
        return keys

    # unset by default: shown commented out
    optional = {
        "database.dsn",
        "daemon.daemon_id",
        "daemon.advertise_url",
        "api.token_file",
        "api.secret_key_env",
        "logs.folder",
    }
    assert set(KEYS) - optional <= written(shipped), "keys missing from config.toml"
    readme = (REPO_ROOT / "README.md").read_text()
    # a row may name two keys of one table: `database.pool_min_size` / `pool_max_size`
    undocumented = [
        key for key in KEYS if f"`{key}`" not in readme and f" / `{key.rsplit('.', 1)[1]}`" not in readme
    ]
    assert undocumented == [], f"keys missing from the README's configuration table: {undocumented}"
