"""The [api] keys that bound the REST API: maximum_page_limit."""

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


def test_the_file_and_the_environment_set_it(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "[api]\nmaximum_page_limit = 50\n"), {}).api.maximum_page_limit == 50
    environ = {"ORCHESTRATOR_API__MAXIMUM_PAGE_LIMIT": "10"}
    assert load_config(None, environ, cwd=tmp_path).api.maximum_page_limit == 10


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[api]\nmaximum_page_limit = 0\n", "api.maximum_page_limit in .* must be at least 1, got 0"),
        ('[api]\nmaximum_page_limit = "many"\n', "api.maximum_page_limit in .* must be an integer"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), {})
