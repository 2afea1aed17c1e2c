"""The [api] keys that bound and guard the REST API: maximum_page_limit and allowed_origins."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import load_config
from orchestrator.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_defaults(tmp_path: Path) -> None:
    config = load_config(None, {}, cwd=tmp_path)
    assert config.api.maximum_page_limit == 1000
    assert config.api.allowed_origins == ()


def test_the_file_sets_both(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[api]\nmaximum_page_limit = 50\nallowed_origins = ["https://ui.example.com", "http://localhost:3000"]\n',
    )
    config = load_config(path, {})
    assert config.api.maximum_page_limit == 50
    assert config.api.allowed_origins == ("https://ui.example.com", "http://localhost:3000")


def test_the_environment_takes_origins_comma_separated(tmp_path: Path) -> None:
    environ = {
        "ORCHESTRATOR_API__ALLOWED_ORIGINS": " https://a.example , https://b.example:8443,",
        "ORCHESTRATOR_API__MAXIMUM_PAGE_LIMIT": "10",
    }
    config = load_config(None, environ, cwd=tmp_path)
    assert config.api.allowed_origins == ("https://a.example", "https://b.example:8443")
    assert config.api.maximum_page_limit == 10


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[api]\nmaximum_page_limit = 0\n", "api.maximum_page_limit in .* must be at least 1, got 0"),
        ('[api]\nallowed_origins = "https://a.example"\n', "allowed_origins in .* must be a list of strings"),
        ("[api]\nallowed_origins = [1]\n", "allowed_origins in .* must be a list of strings"),
        (
            '[api]\nallowed_origins = ["https://a.example/ui"]\n',
            "'https://a.example/ui', which is not a web origin",
        ),
        ('[api]\nallowed_origins = ["a.example"]\n', "'a.example', which is not a web origin"),
        ('[api]\nallowed_origins = ["*"]\n', "'\\*', which is not a web origin"),
        ('[api]\nallowed_origins = ["https://a.example:99999"]\n', "which is not a web origin"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), {})


def test_a_bad_origin_in_the_environment_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ORCHESTRATOR_API__ALLOWED_ORIGINS holds 'ftp://x'"):
        load_config(None, {"ORCHESTRATOR_API__ALLOWED_ORIGINS": "ftp://x"}, cwd=tmp_path)
