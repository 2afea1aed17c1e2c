"""The API's credentials as the daemon starts: configured tokens, or a generated admin token.

- With `api.tokens` configured, their secrets are read now (the environment variables are then
  removed from the daemon's environment, so no task or DAG file inherits them).
- With none, the API may listen on loopback only (the daemon refuses to start otherwise), and
  an admin token is generated into `<state_dir>/api-token` (mode 0600) once; the CLI on this
  machine reads it from there, so `scripts/run` needs no set-up.
- The key that signs access tokens comes from `api.secret_key_env`, else from
  `<state_dir>/api-secret`, generated once (so access tokens outlive a restart).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import secrets
from collections.abc import MutableMapping
from pathlib import Path

from orchestrator.api.auth import Authenticator, Credential
from orchestrator.api.roles import Role
from orchestrator.config import Config, api_token_digests
from orchestrator.errors import ConfigError

log = logging.getLogger("orchestrator.daemon")

#: under the state directory: the generated admin token (no api.tokens) and the signing key
ADMIN_TOKEN_FILE = "api-token"
SECRET_KEY_FILE = "api-secret"
#: the name the generated admin token has in logs and the audit trail
GENERATED_TOKEN_NAME = "local-admin"
MIN_SECRET_KEY_LENGTH = 32


def is_loopback(host: str) -> bool:
    """Whether `host` (api.host) is reachable from this machine only."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_or_create(path: Path, make: str) -> str:
    """The content of `path`, created with `make` (mode 0600) if it does not exist yet."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        text = path.read_text().strip()
        if text:
            return text
        raise ConfigError(f"{path} is empty: delete it and restart the daemon to make a new one") from None
    with os.fdopen(fd, "w") as out:
        out.write(make + "\n")
    return make


def _secret_key(config: Config, state_dir: Path, environ: MutableMapping[str, str]) -> bytes:
    variable = config.api.secret_key_env
    if variable is None:
        return _read_or_create(state_dir / SECRET_KEY_FILE, secrets.token_hex(32)).encode()
    value = environ.pop(variable, "")
    if len(value) < MIN_SECRET_KEY_LENGTH:
        raise ConfigError(
            f"api.secret_key_env names {variable}, which is unset or shorter than "
            f"{MIN_SECRET_KEY_LENGTH} characters: set it to a long random value (`openssl rand -hex 32`)"
        )
    return value.encode()


def build_authenticator(config: Config, state_dir: Path, environ: MutableMapping[str, str]) -> Authenticator:
    """The API's authenticator; ConfigError if the configuration would leave it open or broken."""
    tokens = config.api.tokens
    state_dir.mkdir(parents=True, exist_ok=True)
    if tokens:
        digests = api_token_digests(tokens, environ)
        for token in tokens:
            if token.token_env is not None:
                environ.pop(token.token_env, None)
        credentials = [Credential(t.name, Role.parse(t.role), digests[t.name]) for t in tokens]
    else:
        if not is_loopback(config.api.host):
            raise ConfigError(
                f"api.host is {config.api.host!r} but no api.tokens are configured: anyone who can reach "
                "this machine could trigger runs and read every log. Configure api.tokens (see README, "
                "Authentication) or listen on 127.0.0.1"
            )
        path = state_dir / ADMIN_TOKEN_FILE
        generated = _read_or_create(path, secrets.token_urlsafe(32))
        log.info(
            "no api.tokens configured: the API takes the admin token in %s (the CLI on this machine "
            "uses it; configure api.tokens before listening beyond loopback)",
            path,
        )
        digest = hashlib.sha256(generated.encode()).digest()
        credentials = [Credential(GENERATED_TOKEN_NAME, Role.ADMIN, digest)]
    return Authenticator.configured(credentials, _secret_key(config, state_dir, environ), config.api)
