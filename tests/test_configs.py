"""Every config file shipped in configs/ is valid."""

from pathlib import Path

import pytest

from tadlora import config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads(path):
    assert isinstance(config.load(path), config.Config)
