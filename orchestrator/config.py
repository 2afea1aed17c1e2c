"""The daemon's configuration: one TOML file plus `ORCHESTRATOR_<SECTION>__<KEY>` overrides.

Configuration is read once, at start, into frozen values that are passed to whoever needs
them (nothing reads the environment or the file later). Every mistake a person can make
in the file or the environment — a typo in a key, a wrong type, a value out of range —
is a `ConfigError` that names the key, where it came from, and what would be valid, so the
daemon refuses to start instead of silently running with a default.

Relative paths in the file are relative to the file's directory (so a config file and its
`dags/` folder can move together); with the built-in defaults, and for paths given in the
environment, they are relative to the current directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import math
import re
import tomllib
import types
import typing
import urllib.parse
import zoneinfo
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("config.toml")

ENV_PREFIX = "ORCHESTRATOR_"

#: ORCHESTRATOR_* variables that are not configuration: the CLI's daemon URL, test settings,
#: and the variables the daemon sets in every task's environment (a task may run the CLI).
NON_CONFIG_ENV: frozenset[str] = frozenset(
    {
        "ORCHESTRATOR_URL",
        "ORCHESTRATOR_TOKEN",
        "ORCHESTRATOR_DAG_ID",
        "ORCHESTRATOR_TASK_ID",
        "ORCHESTRATOR_RUN_ID",
        "ORCHESTRATOR_LOGICAL_DATE",
        "ORCHESTRATOR_TRY_NUMBER",
        "ORCHESTRATOR_LOG_LEVEL",  # read as a deprecated alias of daemon.log_level (see _read_environ)
    }
)
NON_CONFIG_ENV_PREFIXES: tuple[str, ...] = ("ORCHESTRATOR_TEST_",)

#: the smallest logs.max_bytes_per_try: room for a header, a footer and the marker lines
MIN_LOG_BYTES_PER_TRY = 4096


@dataclass(frozen=True)
class DaemonConfig:
    """[daemon]: where DAG files and the daemon's own state live, and how it shuts down."""

    dags_folder: Path = Path("dags")
    state_dir: Path = Path("state")
    shutdown_grace: float = 30.0
    #: seconds after which the survivors take over the runs of a replica that stopped
    #: renewing its lease (SIGKILL, a lost node, cut off from the database)
    takeover_after: float = 15.0
    #: the URL other replicas reach this daemon's API at (None: the address it listens on)
    advertise_url: str | None = None
    #: None: the daemon picks "<hostname>-<pid>" when it starts
    daemon_id: str | None = None
    #: the daemon's log level: DEBUG, INFO, WARNING, ERROR or CRITICAL
    log_level: str = "INFO"


@dataclass(frozen=True)
class DatabaseConfig:
    """[database]: the PostgreSQL state store. No DSN: an embedded server under state_dir."""

    dsn: str | None = None
    pool_min_size: int = 2
    pool_max_size: int = 10
    #: seconds to wait for PostgreSQL to answer a new connection
    connect_timeout: float = 10.0


#: the roles an API token may have (orchestrator.api.roles)
API_ROLES = ("viewer", "operator", "admin")


@dataclass(frozen=True)
class ApiToken:
    """One entry of `api.tokens`: a named token with a role. The secret is either in the
    environment variable `token_env` (read when the daemon starts) or given only as its SHA-256
    hex digest, `token_sha256`, so that no plain secret sits in the file."""

    name: str
    role: str
    token_env: str | None = None
    token_sha256: str | None = None


@dataclass(frozen=True)
class ApiConfig:
    """[api]: where the REST API listens (port 0 picks a free port, written to state_dir/api.url),
    how long its pages may be, and which other web origins may change state through it."""

    host: str = "127.0.0.1"
    port: int = 8080
    #: the most items one page of a list holds; a larger `limit` is clamped to it (as in Airflow)
    maximum_page_limit: int = 1000
    #: origins ("https://ui.example.com:8443") other than the API's own whose pages may POST,
    #: PATCH, PUT or DELETE; requests without an Origin header (curl, the CLI) are always allowed
    allowed_origins: tuple[str, ...] = ()
    #: the API tokens (see README, Authentication); none: an admin token is generated into
    #: state_dir/api-token and the API may listen on loopback only
    tokens: tuple[ApiToken, ...] = ()
    #: a file holding the token the CLI sends (when ORCHESTRATOR_TOKEN is not set)
    token_file: Path | None = None
    #: the environment variable holding the key that signs access tokens (POST /auth/token);
    #: None: a key generated into state_dir/api-secret (set it when several daemons serve one API)
    secret_key_env: str | None = None
    #: seconds an access token from POST /auth/token is valid
    access_token_ttl: float = 3600.0
    #: failed authentications one client address may make within auth_failure_window seconds
    #: before its requests are refused with 429 until the window has passed
    auth_failures_allowed: int = 20
    auth_failure_window: float = 300.0


@dataclass(frozen=True)
class LocalExecutorConfig:
    """[executors.local]: task subprocesses and warm Python workers on this machine."""

    slots: int = 16
    python_workers: int = 2
    kill_grace: float = 5.0


@dataclass(frozen=True)
class ExecutorsConfig:
    """[executors]: the default executor's name, and one sub-table per executor."""

    #: the executor a task runs on when neither it nor its DAG's default_args names one
    default: str = "local"
    local: LocalExecutorConfig = field(default_factory=LocalExecutorConfig)


@dataclass(frozen=True)
class LogsConfig:
    """[logs]: task logs (one file per try under `folder`, default state_dir/logs)."""

    #: where the task logs are (None: state_dir/logs). Replicas that point it at one shared
    #: folder (NFS, a ReadWriteMany volume) each serve every log from it, also after the
    #: replica that ran a task is gone; otherwise a replica proxies a log to the one that has it
    folder: Path | None = None
    #: past this size a try's log keeps its head, a marker line and its last MiB (see README)
    max_bytes_per_try: int = 100 * 1024 * 1024


@dataclass(frozen=True)
class DagsConfig:
    """[dags]: how DAG files are parsed: in a pool of parser processes, each parse bounded."""

    #: parser processes: this many files are parsed at once (a hanging file holds up one of them)
    parser_processes: int = 2
    #: seconds one file may take to import before it is stopped (an import error)
    parse_timeout: float = 30.0
    #: address space one parse may use, in MB (RLIMIT_AS); 0 means no limit
    parse_memory_mb: int = 2048
    #: whether a DAG seen for the first time starts paused (Airflow's dags_are_paused_at_creation);
    #: a DAG's own is_paused_upon_creation wins
    paused_on_creation: bool = True
    #: the IANA time zone of schedules whose DAG names none (Airflow's default_timezone)
    default_timezone: str = "UTC"


@dataclass(frozen=True)
class TemplatesConfig:
    """[templates]: limits on rendering one task's Jinja templates."""

    #: the most bytes a template's output, or any value it builds, may have
    max_output_bytes: int = 1_000_000
    #: seconds a template that can loop may take to render
    render_timeout: float = 2.0


@dataclass(frozen=True)
class XComConfig:
    """[xcom]: limits on the values tasks return."""

    #: the most bytes of JSON one XCom value may take
    max_bytes: int = 1_000_000


@dataclass(frozen=True)
class WebhookLogConfig:
    """[webhook_log]: the log of webhook deliveries (accepted and refused)."""

    #: deliveries older than this many days are pruned (hourly, and when the daemon starts)
    retention_days: float = 30.0


#: what each webhook's `auth` may be
WEBHOOK_AUTHS = ("github", "hmac", "token", "none")
#: the digests an "hmac" webhook may sign with
WEBHOOK_ALGORITHMS = ("sha256", "sha1", "sha512")
#: a webhook's name is a path segment of its URL and part of its runs' ids
WEBHOOK_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class WebhookConfig:
    """[webhooks.<name>]: one endpoint, POST /api/v1/webhooks/<name> (see README, Webhooks).

    Exactly one of `dag_id` (a delivery triggers a run of it) and `asset_uri` (a delivery records
    an event of that asset). `secret_env` names the environment variables holding the accepted
    secrets, checked in turn (rotation); the values are read when the daemon starts
    (`webhook_secrets`), never stored here."""

    name: str
    auth: str
    dag_id: str | None = None
    asset_uri: str | None = None
    secret_env: tuple[str, ...] = ()
    #: for auth = "hmac": the header carrying the signature, its prefix and the digest
    header: str = "X-Signature-256"
    prefix: str = "sha256="
    algorithm: str = "sha256"
    #: the header whose value identifies a delivery (None: the body's hash within dedup_window)
    delivery_id_header: str | None = None
    dedup_window: float = 300.0
    #: run-conf key -> dotted path into the JSON body ("headers.X" reads a header); None: whole body
    conf: Mapping[str, str] | None = field(default=None, hash=False)
    #: dotted path -> accepted values; a delivery matching not all of them creates nothing
    filter: Mapping[str, tuple[Any, ...]] = field(default_factory=dict, hash=False)
    max_body_bytes: int = 1024 * 1024
    allow_unauthenticated: bool = False


@dataclass(frozen=True)
class Config:
    """The whole configuration. `source` names the file it was read from, or "built-in defaults"."""

    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    executors: ExecutorsConfig = field(default_factory=ExecutorsConfig)
    logs: LogsConfig = field(default_factory=LogsConfig)
    dags: DagsConfig = field(default_factory=DagsConfig)
    templates: TemplatesConfig = field(default_factory=TemplatesConfig)
    xcom: XComConfig = field(default_factory=XComConfig)
    webhook_log: WebhookLogConfig = field(default_factory=WebhookLogConfig)
    #: [webhooks.<name>] tables, by name (their own parser: the names are the user's)
    webhooks: Mapping[str, WebhookConfig] = field(default_factory=dict, hash=False)
    source: str = "built-in defaults"


BUILTIN_SOURCE = "built-in defaults"

#: The tables of the configuration, by dotted name (the root is "").
_TABLES: dict[str, type[Any]] = {
    "": Config,
    "daemon": DaemonConfig,
    "database": DatabaseConfig,
    "api": ApiConfig,
    "executors": ExecutorsConfig,
    "executors.local": LocalExecutorConfig,
    "logs": LogsConfig,
    "dags": DagsConfig,
    "templates": TemplatesConfig,
    "xcom": XComConfig,
    "webhook_log": WebhookLogConfig,
}

#: Config fields that are not fixed tables of leaf keys
_NOT_LEAVES = frozenset({"source", "webhooks", "api.tokens"})

#: the log levels daemon.log_level accepts
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

#: the deprecated spelling of ORCHESTRATOR_DAEMON__LOG_LEVEL, still honoured (the new name wins)
DEPRECATED_LOG_LEVEL_ENV = "ORCHESTRATOR_LOG_LEVEL"

_TYPE_NAMES: dict[type[Any], str] = {
    int: "an integer",
    float: "a number",
    bool: "a boolean (true or false)",
    str: "a string",
    Path: "a path (a string)",
    tuple: "a list of strings",
}


@dataclass(frozen=True)
class _Key:
    """One leaf setting: its dotted name, its type and whether it may be unset (None)."""

    dotted: str
    kind: type[Any]
    optional: bool

    @property
    def env_name(self) -> str:
        return ENV_PREFIX + self.dotted.upper().replace(".", "__")


def _leaf_keys() -> dict[str, _Key]:
    keys: dict[str, _Key] = {}

    def walk(prefix: str, cls: type[Any]) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            dotted = f"{prefix}.{f.name}" if prefix else f.name
            if dotted in _NOT_LEAVES:
                continue
            if dotted in _TABLES:
                walk(dotted, _TABLES[dotted])
                continue
            hint = hints[f.name]
            args = typing.get_args(hint)
            if isinstance(hint, types.UnionType) and type(None) in args:
                (kind,) = (a for a in args if a is not type(None))
                keys[dotted] = _Key(dotted, kind, optional=True)
            elif typing.get_origin(hint) is tuple:  # tuple[str, ...]: a TOML array of strings
                keys[dotted] = _Key(dotted, tuple, optional=False)
            else:
                keys[dotted] = _Key(dotted, hint, optional=False)

    walk("", Config)
    return keys


KEYS: Mapping[str, _Key] = _leaf_keys()
_KEYS_BY_ENV: Mapping[str, _Key] = {key.env_name: key for key in KEYS.values()}


def load_config(path: Path | None, environ: Mapping[str, str], *, cwd: Path | None = None) -> Config:
    """Read the configuration: `path`, else ./config.toml if it exists, else the built-in defaults;
    then apply ORCHESTRATOR_* overrides from `environ`. Raises ConfigError with an actionable message."""
    cwd = (cwd or Path.cwd()).absolute()
    if path is None:
        default = cwd / DEFAULT_CONFIG_PATH
        path = default if default.is_file() else None
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    base_dir = cwd
    source = BUILTIN_SOURCE
    webhooks: dict[str, WebhookConfig] = {}
    if path is not None:
        path = (cwd / path).absolute()
        source = str(path)
        base_dir = path.parent
        file_values, webhooks = _read_file(path)
        for key, value in file_values.items():
            values[key] = value
            origins[key] = f"{key} in {source}"
    path_bases = {key: base_dir for key in values}
    for key, value in _read_environ(environ).items():
        values[key] = value
        origins[key] = KEYS[key].env_name if KEYS[key].env_name in environ else DEPRECATED_LOG_LEVEL_ENV
        path_bases[key] = cwd
    for key, value in values.items():
        if key in KEYS and KEYS[key].kind is Path and value is not None:
            values[key] = path_bases[key] / value.expanduser()
    defaults = {
        key: base_dir / default
        for key, default in _defaults().items()
        if KEYS[key].kind is Path and default is not None
    }
    config = dataclasses.replace(_build({**defaults, **values}, source), webhooks=webhooks)
    _check_ranges(config, origins)
    return config


def _defaults() -> dict[str, Any]:
    return dict(_flatten(Config()))


def _flatten(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for f in dataclasses.fields(obj):
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        if dotted in _NOT_LEAVES:
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _flatten(value, dotted)
        else:
            yield dotted, value


def _build(values: Mapping[str, Any], source: str) -> Config:
    def make(prefix: str, cls: type[Any]) -> Any:
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            dotted = f"{prefix}.{f.name}" if prefix else f.name
            if dotted in _TABLES:
                kwargs[f.name] = make(dotted, _TABLES[dotted])
            elif dotted in values:
                kwargs[f.name] = values[dotted]
        return cls(**kwargs)

    config: Config = make("", Config)  # api.tokens, a list of tables, is among `values` too
    return dataclasses.replace(config, source=source)


# --- the file -------------------------------------------------------------------------


def _read_file(path: Path) -> tuple[dict[str, Any], dict[str, WebhookConfig]]:
    try:
        with path.open("rb") as fh:
            document = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist: create it (see config.toml in the orchestrator "
            "repository for every key) or leave out --config to use ./config.toml or the built-in defaults"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory: pass the path of a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}; fix the file at that line") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    webhooks = _parse_webhooks(document.pop("webhooks", {}), path)
    api = document.get("api")
    if isinstance(api, dict) and "tokens" in api:
        api = document["api"] = dict(api)
        values_tokens = _parse_api_tokens(api.pop("tokens"), path)
    else:
        values_tokens = None
    values: dict[str, Any] = {}
    _collect(document, "", path, values)
    if values_tokens is not None:
        values[API_TOKENS_KEY] = values_tokens
    return values, webhooks


def _collect(table: Mapping[str, Any], prefix: str, path: Path, out: dict[str, Any]) -> None:
    for name, value in table.items():
        dotted = f"{prefix}.{name}" if prefix else name
        if dotted in _TABLES:
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{dotted} in {path} must be a table ([{dotted}]), got {_show(value)}: "
                    f"put its keys under a [{dotted}] header"
                )
            _collect(value, dotted, path, out)
            continue
        key = KEYS.get(dotted)
        if key is None:
            raise ConfigError(f"unknown key {dotted!r} in {path}{_suggest(dotted, _all_names())}")
        out[dotted] = _check_toml_type(key, value, f"{dotted} in {path}")


def _all_names() -> list[str]:
    return [*KEYS, *(t for t in _TABLES if t), "webhooks"]


def _check_toml_type(key: _Key, value: Any, where: str) -> Any:
    kind = key.kind
    ok = (
        (kind is bool and isinstance(value, bool))
        or (kind is int and isinstance(value, int) and not isinstance(value, bool))
        or (kind is float and isinstance(value, int | float) and not isinstance(value, bool))
        or (kind in (str, Path) and isinstance(value, str))
        or (kind is tuple and isinstance(value, list) and all(isinstance(item, str) for item in value))
    )
    if not ok:
        raise ConfigError(f"{where} must be {_TYPE_NAMES[kind]}, got {_show(value)}")
    if kind is float:
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if kind is Path:
        return Path(value)
    if kind is tuple:
        return tuple(value)
    return value


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    return repr(value)


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f": did you mean {close[0]!r}?" if close else f": valid keys are {', '.join(sorted(KEYS))}"


# --- the environment ------------------------------------------------------------------

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def _read_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if DEPRECATED_LOG_LEVEL_ENV in environ and KEYS["daemon.log_level"].env_name not in environ:
        values["daemon.log_level"] = environ[DEPRECATED_LOG_LEVEL_ENV]
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or _is_non_config(name):
            continue
        key = _KEYS_BY_ENV.get(name)
        if key is None:
            close = difflib.get_close_matches(name, list(_KEYS_BY_ENV), n=1, cutoff=0.6)
            hint = f": did you mean {close[0]}?" if close else f": valid names are {', '.join(_KEYS_BY_ENV)}"
            raise ConfigError(f"environment variable {name} matches no configuration key{hint}")
        values[key.dotted] = _convert_env(key, name, environ[name])
    return values


def _is_non_config(name: str) -> bool:
    return name in NON_CONFIG_ENV or name.startswith(NON_CONFIG_ENV_PREFIXES)


def _convert_env(key: _Key, name: str, raw: str) -> Any:
    text = raw.strip()
    if key.optional and text == "":
        return None
    kind = key.kind
    try:
        if kind is int:
            return int(text)
        if kind is float:
            number = float(text)
            if not math.isfinite(number):
                raise ConfigError(f"{name}={raw!r} must be a finite number, not {number!r}")
            return number
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not {_TYPE_NAMES[kind]}") from None
    if kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigError(f"{name}={raw!r} is not a boolean: use true or false")
    if kind is Path:
        return Path(text)
    if kind is tuple:  # comma-separated
        return tuple(item.strip() for item in text.split(",") if item.strip())
    return raw


# --- ranges ---------------------------------------------------------------------------


def _check_ranges(config: Config, origins: Mapping[str, str]) -> None:
    def where(dotted: str) -> str:
        return origins.get(dotted, dotted)

    def at_least(dotted: str, value: float, minimum: float) -> None:
        if value < minimum:
            raise ConfigError(f"{where(dotted)} must be at least {minimum:g}, got {value:g}")

    if not 0 <= config.api.port <= 65535:
        raise ConfigError(
            f"{where('api.port')} must be between 0 and 65535 (0 picks a free port), got {config.api.port}"
        )
    if not config.api.host.strip():
        raise ConfigError(f"{where('api.host')} must not be empty: use 127.0.0.1 or 0.0.0.0")
    at_least("api.maximum_page_limit", config.api.maximum_page_limit, 1)
    for origin in config.api.allowed_origins:
        if not _is_origin(origin):
            raise ConfigError(
                f"{where('api.allowed_origins')} holds {origin!r}, which is not a web origin: "
                "write scheme://host[:port] with no path, e.g. 'https://ui.example.com:8443'"
            )
    at_least("api.access_token_ttl", config.api.access_token_ttl, 1)
    at_least("api.auth_failures_allowed", config.api.auth_failures_allowed, 1)
    at_least("api.auth_failure_window", config.api.auth_failure_window, 1)
    if config.api.secret_key_env is not None and not config.api.secret_key_env.strip():
        raise ConfigError(f"{where('api.secret_key_env')} must not be empty: leave it out to generate a key")
    at_least("daemon.shutdown_grace", config.daemon.shutdown_grace, 0)
    at_least("daemon.takeover_after", config.daemon.takeover_after, 1)
    executor_names = [f.name for f in dataclasses.fields(ExecutorsConfig) if f.name != "default"]
    if config.executors.default not in executor_names:
        raise ConfigError(
            f"{where('executors.default')} is {config.executors.default!r}, which is not an executor; "
            f"use one of {', '.join(executor_names)}"
        )
    if config.daemon.daemon_id is not None and not config.daemon.daemon_id.strip():
        raise ConfigError(f"{where('daemon.daemon_id')} must not be empty: leave it out for <hostname>-<pid>")
    advertised = config.daemon.advertise_url
    if advertised is not None and not advertised.startswith(("http://", "https://")):
        raise ConfigError(
            f"{where('daemon.advertise_url')} must be an http:// or https:// URL other replicas can reach, "
            f"got {advertised!r}: leave it out to use the address the API listens on"
        )
    at_least("database.pool_min_size", config.database.pool_min_size, 1)
    at_least("database.pool_max_size", config.database.pool_max_size, 1)
    if config.database.pool_min_size > config.database.pool_max_size:
        raise ConfigError(
            f"{where('database.pool_min_size')} ({config.database.pool_min_size}) must not exceed "
            f"{where('database.pool_max_size')} ({config.database.pool_max_size})"
        )
    if config.daemon.log_level.upper() not in LOG_LEVELS:
        raise ConfigError(
            f"{where('daemon.log_level')} is {config.daemon.log_level!r}, which is not a log level; "
            f"use one of {', '.join(LOG_LEVELS)}"
        )
    at_least("database.connect_timeout", config.database.connect_timeout, 0.1)
    at_least("templates.max_output_bytes", config.templates.max_output_bytes, 1024)
    at_least("templates.render_timeout", config.templates.render_timeout, 0.01)
    at_least("xcom.max_bytes", config.xcom.max_bytes, 1024)
    local = config.executors.local
    at_least("executors.local.slots", local.slots, 1)
    at_least("executors.local.python_workers", local.python_workers, 1)
    at_least("executors.local.kill_grace", local.kill_grace, 0)
    at_least("logs.max_bytes_per_try", config.logs.max_bytes_per_try, MIN_LOG_BYTES_PER_TRY)
    if not config.webhook_log.retention_days > 0:
        raise ConfigError(
            f"{where('webhook_log.retention_days')} must be a number of days above 0, "
            f"got {config.webhook_log.retention_days:g}"
        )
    _check_dags(config.dags, where)


#: below this a parse cannot even start Python with the orchestrator imported
MIN_PARSE_MEMORY_MB = 128


def _check_dags(dags: DagsConfig, where: Callable[[str], str]) -> None:
    try:
        zoneinfo.ZoneInfo(dags.default_timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{where('dags.default_timezone')} is {dags.default_timezone!r}, which is not an IANA time "
            "zone: use a name such as 'UTC' or 'Europe/Berlin'"
        ) from None
    if dags.parser_processes < 1:
        raise ConfigError(f"{where('dags.parser_processes')} must be at least 1, got {dags.parser_processes}")
    if not math.isfinite(dags.parse_timeout) or dags.parse_timeout <= 0:
        raise ConfigError(
            f"{where('dags.parse_timeout')} must be a number of seconds above 0, got {dags.parse_timeout:g}"
        )
    if dags.parse_memory_mb != 0 and dags.parse_memory_mb < MIN_PARSE_MEMORY_MB:
        raise ConfigError(
            f"{where('dags.parse_memory_mb')} must be at least {MIN_PARSE_MEMORY_MB} (MB), "
            f"or 0 for no limit, got {dags.parse_memory_mb}"
        )


def _is_origin(text: str) -> bool:
    """An origin as browsers send it in the Origin header: http(s)://host[:port], nothing more."""
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and parts.path in ("", "/")
        and not parts.query
        and not parts.fragment
        and "@" not in parts.netloc
    )


# --- webhooks -------------------------------------------------------------------------

#: the keys of a [webhooks.<name>] table and what each must be (README, Webhooks)
WEBHOOK_KEYS: Mapping[str, str] = {
    "dag_id": "a string",
    "asset_uri": "a string",
    "auth": "a string",
    "secret_env": "a string or a list of strings",
    "header": "a string",
    "prefix": "a string",
    "algorithm": "a string",
    "delivery_id_header": "a string",
    "dedup_window": "a number",
    "conf": "a table of strings (run-conf key = dotted path)",
    "filter": "a table of lists (dotted path = [accepted values])",
    "max_body_bytes": "an integer",
    "allow_unauthenticated": "a boolean (true or false)",
}
_HMAC_ONLY = ("header", "prefix", "algorithm")


#: the key api.tokens is kept under among the file's values (a list of tables, not a leaf)
API_TOKENS_KEY = "api.tokens"
_TOKEN_KEYS = ("name", "role", "token_env", "token_sha256")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _parse_api_tokens(entries: Any, path: Path) -> tuple[ApiToken, ...]:
    """`api.tokens`: a list of tables {name, role, token_env | token_sha256}."""
    example = '[[api.tokens]] with name = "ci", role = "operator", token_env = "CI_API_TOKEN"'
    if not isinstance(entries, list):
        raise ConfigError(f"api.tokens in {path} must be a list of tables ({example}), got {_show(entries)}")
    tokens: list[ApiToken] = []
    for index, entry in enumerate(entries):
        where = f"api.tokens[{index}] in {path}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a table ({example}), got {_show(entry)}")
        unknown = sorted(set(entry) - set(_TOKEN_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}; a token has {', '.join(_TOKEN_KEYS)}")
        for key in _TOKEN_KEYS:
            if key in entry and (not isinstance(entry[key], str) or not entry[key].strip()):
                raise ConfigError(f"{where}: {key} must be a non-empty string, got {_show(entry[key])}")
        if "name" not in entry:
            raise ConfigError(f"{where} has no name: give every token a name (it shows in logs and audit)")
        where = f"api.tokens {entry['name']!r} in {path}"
        if entry.get("role") not in API_ROLES:
            roles = ", ".join(API_ROLES)
            raise ConfigError(f"{where}: role must be one of {roles}, got {entry.get('role')!r}")
        if ("token_env" in entry) == ("token_sha256" in entry):
            raise ConfigError(
                f"{where}: give exactly one of token_env (the environment variable holding the token) "
                'and token_sha256 (its SHA-256 hex digest: `printf %s "$TOKEN" | sha256sum`)'
            )
        digest = entry.get("token_sha256")
        if digest is not None and not _SHA256_HEX.fullmatch(digest.lower()):
            raise ConfigError(f"{where}: token_sha256 must be 64 hexadecimal digits (a SHA-256 digest)")
        if any(token.name == entry["name"] for token in tokens):
            raise ConfigError(f"{where}: another token has this name; names must be unique")
        tokens.append(
            ApiToken(
                name=entry["name"],
                role=entry["role"],
                token_env=entry.get("token_env"),
                token_sha256=digest.lower() if digest is not None else None,
            )
        )
    return tuple(tokens)


#: the shortest API token accepted from the environment
MIN_TOKEN_LENGTH = 16


def api_token_digests(tokens: tuple[ApiToken, ...], environ: Mapping[str, str]) -> dict[str, bytes]:
    """The SHA-256 digest of every configured token, by name: read from `environ` (token_env) or
    from the file (token_sha256) when the daemon starts. A variable that is unset, empty or too
    short is a ConfigError naming it (never a value)."""
    digests: dict[str, bytes] = {}
    for token in tokens:
        if token.token_sha256 is not None:
            digests[token.name] = bytes.fromhex(token.token_sha256)
            continue
        assert token.token_env is not None
        value = environ.get(token.token_env, "")
        if not value:
            raise ConfigError(
                f"api.tokens {token.name!r}: the environment variable {token.token_env} is unset or "
                "empty: set it to the token, or give the token as token_sha256"
            )
        if len(value) < MIN_TOKEN_LENGTH:
            raise ConfigError(
                f"api.tokens {token.name!r}: the token in {token.token_env} is shorter than "
                f"{MIN_TOKEN_LENGTH} characters: use a long random one (`openssl rand -hex 32`)"
            )
        digests[token.name] = hashlib.sha256(value.encode()).digest()
    return digests


def _parse_webhooks(tables: Any, path: Path) -> dict[str, WebhookConfig]:
    if not isinstance(tables, dict):
        raise ConfigError(
            f"webhooks in {path} must be tables, one per endpoint ([webhooks.github-push]), "
            f"got {_show(tables)}"
        )
    webhooks: dict[str, WebhookConfig] = {}
    for name, table in tables.items():
        where = f"webhooks.{name}"
        if not WEBHOOK_NAME_PATTERN.fullmatch(name):
            raise ConfigError(
                f"[{where}] in {path}: a webhook's name is part of its URL and its runs' ids: "
                "use 1 to 64 letters, digits, '-' and '_'"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{where} in {path} must be a table ([{where}]), got {_show(table)}")
        webhooks[name] = _parse_webhook(name, table, f"in {path}")
    return webhooks


def _webhook_value(key: str, value: Any, where: str) -> Any:
    """`value` checked against the type of the webhook key `key`."""
    expected = WEBHOOK_KEYS[key]
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if key == "secret_env":
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
            return tuple(value)
    elif key == "conf":
        if isinstance(value, dict) and all(isinstance(item, str) for item in value.values()):
            return dict(value)
    elif key == "filter":
        if isinstance(value, dict) and all(isinstance(item, list) and item for item in value.values()):
            return {field_path: tuple(accepted) for field_path, accepted in value.items()}
    elif key == "dedup_window":
        if number and math.isfinite(value):
            return float(value)
    elif key == "max_body_bytes":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif key == "allow_unauthenticated":
        if isinstance(value, bool):
            return value
    elif isinstance(value, str):
        return value
    raise ConfigError(f"{where} must be {expected}, got {_show(value)}")


def _parse_webhook(name: str, table: Mapping[str, Any], source: str) -> WebhookConfig:
    prefix = f"webhooks.{name}"
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in WEBHOOK_KEYS:
            close = difflib.get_close_matches(key, list(WEBHOOK_KEYS), n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else f"valid keys are {', '.join(WEBHOOK_KEYS)}"
            raise ConfigError(f"unknown key {f'{prefix}.{key}'!r} {source}: {hint}")
        values[key] = _webhook_value(key, value, f"{prefix}.{key} {source}")

    def where(key: str) -> str:
        return f"{prefix}.{key} {source}"

    auth = values.get("auth")
    if auth is None:
        raise ConfigError(
            f"[{prefix}] {source} needs auth: one of {', '.join(WEBHOOK_AUTHS)} "
            '(e.g. auth = "github" with secret_env = "GITHUB_WEBHOOK_SECRET")'
        )
    if auth not in WEBHOOK_AUTHS:
        raise ConfigError(f"{where('auth')} is {auth!r}: use one of {', '.join(WEBHOOK_AUTHS)}")
    if ("dag_id" in values) == ("asset_uri" in values):
        raise ConfigError(
            f"[{prefix}] {source} must set exactly one of dag_id (a delivery triggers a run of that DAG) "
            "and asset_uri (a delivery records an event of that asset)"
        )
    if auth == "none":
        if not values.get("allow_unauthenticated", False):
            raise ConfigError(
                f'{where("auth")} is "none": anyone who can reach the API could trigger it; '
                "set allow_unauthenticated = true if that is what you want"
            )
        if "secret_env" in values:
            raise ConfigError(f'{where("secret_env")} is set but auth is "none": remove one of them')
    elif "secret_env" not in values:
        raise ConfigError(
            f"[{prefix}] {source} needs secret_env: the environment variable holding the secret "
            '(a list, e.g. ["NEW_SECRET", "OLD_SECRET"], accepts each of them while you rotate)'
        )
    if auth != "hmac":
        for key in _HMAC_ONLY:
            if key in values:
                raise ConfigError(f'{where(key)} applies to auth = "hmac" only (auth is {auth!r}): remove it')
    if values.get("algorithm", "sha256") not in WEBHOOK_ALGORITHMS:
        raise ConfigError(
            f"{where('algorithm')} is {values['algorithm']!r}: use one of {', '.join(WEBHOOK_ALGORITHMS)}"
        )
    if values.get("dedup_window", 1.0) <= 0:
        raise ConfigError(f"{where('dedup_window')} must be a number of seconds above 0")
    if values.get("max_body_bytes", 1) < 1:
        raise ConfigError(f"{where('max_body_bytes')} must be at least 1")
    for key in ("header", "delivery_id_header", "dag_id", "asset_uri"):
        if key in values and not values[key].strip():
            raise ConfigError(f"{where(key)} must not be empty")
    for field_path in [*(values.get("conf") or {}).values(), *values.get("filter", {})]:
        if not field_path or any(not part for part in field_path.split(".")):
            raise ConfigError(
                f"[{prefix}] {source}: {field_path!r} is not a dotted path: write e.g. "
                '"repository.full_name" or "headers.X-GitHub-Event"'
            )
    return WebhookConfig(name=name, **values)


def webhook_secrets(
    webhooks: Mapping[str, WebhookConfig], environ: Mapping[str, str]
) -> dict[str, tuple[bytes, ...]]:
    """The accepted secrets of every webhook, by name, read from `environ` when the daemon starts.
    A variable that is unset or empty is a ConfigError naming the key (never a value)."""
    secrets: dict[str, tuple[bytes, ...]] = {}
    for name, webhook in webhooks.items():
        values: list[bytes] = []
        for variable in webhook.secret_env:
            value = environ.get(variable, "")
            if not value:
                raise ConfigError(
                    f"webhooks.{name}.secret_env names {variable}, which is "
                    f"{'empty' if variable in environ else 'not set'} in the daemon's environment: "
                    "set it to the webhook's secret (or remove it from the list once rotated out)"
                )
            values.append(value.encode())
        secrets[name] = tuple(values)
    return secrets
