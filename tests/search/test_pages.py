"""Index builds run without numpy's huge-page advice, and give numpy its setting back: after
nested builds, builds in other threads, and a build that fails."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import make_space, random_fingerprint

from rayfp.errors import ConfigError
from rayfp.search import pages
from rayfp.search.index import ScreenedIndex
from rayfp.search.kernels import Int8Columns

advice = np._core.multiarray._get_madvise_hugepage


def test_a_build_allocates_without_the_advice_and_restores_it(monkeypatch):
    rng = np.random.default_rng(4)
    space = make_space(dim=6, bins=10)
    fps = [random_fingerprint(rng, space, f"s{i}", n=300) for i in range(30)]
    seen = []
    real = Int8Columns.build.__func__
    monkeypatch.setattr(Int8Columns, "build", classmethod(
        lambda cls, *a, **k: seen.append(advice()) or real(cls, *a, **k)))
    assert advice()  # numpy's default
    index = ScreenedIndex(fps[:20], kernel="int8-columns")
    index = index.with_changes(fps[20:], ["s0"])
    assert seen and not any(seen) and advice()
    with pytest.raises(ConfigError):  # a failed build gives the setting back too
        index.with_changes([], [f"s{i}" for i in range(30)])
    assert advice()


def test_nested_and_concurrent_builds_restore_numpys_setting_when_the_last_ends():
    inside, release = threading.Event(), threading.Event()

    def other():
        with pages.without_hugepage_advice():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    inside.wait(10)
    assert not advice()
    with pages.without_hugepage_advice():
        with pages.without_hugepage_advice():
            assert not advice()
        assert not advice()
    assert not advice()  # the other thread's build still runs
    release.set()
    thread.join(10)
    assert advice()
    np._core.multiarray._set_madvise_hugepage(False)  # a user who turned it off keeps it off
    try:
        with pages.without_hugepage_advice():
            pass
        assert not advice()
    finally:
        np._core.multiarray._set_madvise_hugepage(True)


def test_without_numpys_switch_it_is_a_no_op(monkeypatch):
    monkeypatch.setattr(pages, "_switch", lambda: None)
    with pages.without_hugepage_advice():
        assert advice()
