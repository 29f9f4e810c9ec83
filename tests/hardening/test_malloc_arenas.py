"""The serving process caps glibc's malloc arenas and trims after queries (issue 14: a worker's
heap must not stay at its largest query's peak, docs/scaling.md)."""

from __future__ import annotations

import platform
import subprocess
import sys
from typing import Any

import pytest

from privacy_api.app import factory
from privacy_api.http import memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt and malloc_trim are glibc's")
def test_arena_cap_and_trim_take_effect_on_glibc() -> None:
    # in a fresh interpreter: the cap must be set before threads allocate
    code = ("from privacy_api.http.memory import limit_malloc_arenas, release_freed_memory;"
            "print(limit_malloc_arenas(), release_freed_memory())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert out == ["True", "True"]


def test_every_app_caps_its_arenas(monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:
    from tests.conftest import make_app

    calls: list[Any] = []
    monkeypatch.setattr(factory, "limit_malloc_arenas", lambda: calls.append(1) or True)
    make_app(db_url)
    assert calls == [1]
    assert memory.MALLOC_ARENAS == 2
