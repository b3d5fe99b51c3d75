"""One way to look names up: every registry fails alike, with the choices and a hint."""

from __future__ import annotations

import pytest

from rayfp.core.distance import METRICS, get_metric
from rayfp.errors import ConfigError, UnknownNameError
from rayfp.registry import Registry, look_up
from rayfp.store.store import Store


def test_unknown_names_list_the_choices_and_suggest_the_closest(tmp_path):
    with pytest.raises(UnknownNameError, match=r"unknown metric 'bkld_small'; expected one of "
                                               r"\[.*\]\. Did you mean 'bkld-small'\?"):
        get_metric("bkld_small")
    with pytest.raises(UnknownNameError, match="unknown table 'task'.*Did you mean 'tasks'"):
        Store(tmp_path).read_table("task")
    with pytest.raises(ConfigError):  # every bad choice is a ConfigError ...
        look_up("compression", "gzip", ("none", "zlib"))
    with pytest.raises(KeyError):  # ... and a failed lookup
        look_up("compression", "gzip", ("none", "zlib"))


def test_registry_keeps_order_and_refuses_a_second_registration():
    registry: Registry[int] = Registry("thing")
    registry.register("b", 2)

    @registry.register("a")
    def a() -> int:
        return 1

    assert registry.names() == ["b", "a"] and "a" in registry and len(registry) == 2
    assert registry.get("a") is a
    with pytest.raises(ConfigError, match="already registered"):
        registry.register("b", 3)
    assert METRICS.names()[:2] == ["bkld-small", "bkld-large"]
